"""The HTTP path against a bare Falcon-on-uvicorn app, side by side in one run, driven by wrk.

    python -m benchmarks.bench_http [--rounds 3] [--duration 8] [--json results/http.json]

Needs Debian's `wrk` (apt-get install wrk). Both servers answer a POST of 100 bytes:
  bare   a Falcon ASGI app on uvicorn (uvloop, httptools) with 2 processes, answering from
         memory (benchmarks/bare_falcon.py)
  ours   zerobatch with 2 front-end processes, one echo worker, batch size 8, adaptive
For each: requests/s at concurrency 64 (2 wrk threads) and p50 latency at concurrency 1
(1 wrk thread, 1 connection). Medians over rounds; the ratio is ours against bare.
"""

from __future__ import annotations

import argparse
import os

from benchmarks.common import (
    BENCH_MODELS,
    ROOT,
    bare_falcon,
    free_port,
    medians,
    run_record,
    write_json,
    zerobatch_server,
)
from benchmarks.loadgen import HttpTarget, run_wrk, wrk_available

PAYLOAD = b"x" * 100


def measure(port: int, duration_s: int) -> dict:
    target = HttpTarget("127.0.0.1", port, "/predictions/echo", PAYLOAD,
                        {"Content-Type": "application/octet-stream"})
    run_wrk(target, connections=64, threads=2, duration_s=2)  # warm up
    throughput = run_wrk(target, connections=64, threads=2, duration_s=duration_s)
    latency = run_wrk(target, connections=1, threads=1, duration_s=duration_s)
    return {"rps_64": throughput.rps(), "p99_ms_64": throughput.latency.percentile(99) / 1000,
            "p50_ms_1": latency.latency.percentile(50) / 1000,
            "p99_ms_1": latency.latency.percentile(99) / 1000,
            "errors": sum(throughput.errors.values()) + sum(latency.errors.values())}


def run_bare(duration_s: int) -> dict:
    with bare_falcon(workers=2) as port:
        return measure(port, duration_s)


def run_ours(duration_s: int) -> dict:
    port = free_port()
    flags = ["--http-port", str(port), "--frontends", "2", "--batch-size", "8",
             "--max-batch-delay", "5", "--max-queue", "1000"]
    with zerobatch_server({"echo": os.path.join(BENCH_MODELS, "echo")}, *flags):
        return measure(port, duration_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_http")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not wrk_available():
        parser.error("wrk is not installed: apt-get install wrk")

    runs: dict[str, list[dict]] = {"bare": [], "ours": []}
    for round_index in range(args.rounds):
        for kind in ("bare", "ours"):
            figures = (run_bare if kind == "bare" else run_ours)(args.duration)
            runs[kind].append(figures)
            print(f"round {round_index + 1} {kind}: {figures['rps_64']:,.0f} req/s @64, "
                  f"p50 {figures['p50_ms_1']:.3f} ms @1, errors {figures['errors']}",
                  flush=True)
    median = medians(runs)
    ratio = median["ours"]["rps_64"] / median["bare"]["rps_64"]
    print("\nmedians over rounds")
    for kind, figures in median.items():
        print(f"  {kind}: {figures['rps_64']:,.0f} req/s @64 (p99 {figures['p99_ms_64']:.2f} ms), "
              f"p50 {figures['p50_ms_1']:.3f} ms @1")
    print(f"  ours/bare throughput x{ratio:.2f} (target >= 0.45); "
          f"ours p50 @1 {median['ours']['p50_ms_1']:.3f} ms (target < 0.5)")
    write_json(args.json, run_record("http", vars(args), {"median": median,
                                                          "ratio_rps64": ratio, "rounds": runs}))
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    raise SystemExit(main())
