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
import re
import shutil
import statistics
import subprocess
import tempfile

from benchmarks.common import (
    BENCH_MODELS,
    ROOT,
    free_port,
    processes,
    run_record,
    wait_http,
    write_json,
    zerobatch_server,
)

PAYLOAD = b"x" * 100
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, threads: int, duration_s: int, script: str) -> dict:
    result = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration_s}s",
         "--latency", "-s", script, url],
        capture_output=True, text=True, timeout=duration_s + 60)
    out = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps,
            "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)],
            "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
            "errors": int(non_2xx.group(1)) if non_2xx else 0}


def measure(url: str, script: str, duration_s: int) -> dict:
    wrk(url, 64, 2, 2, script)  # warm up
    throughput = wrk(url, 64, 2, duration_s, script)
    latency = wrk(url, 1, 1, duration_s, script)
    return {"rps_64": throughput["rps"], "p99_ms_64": throughput["p99_ms"],
            "p50_ms_1": latency["p50_ms"], "p99_ms_1": latency["p99_ms"],
            "errors": throughput["errors"] + latency["errors"]}


def run_bare(script: str, duration_s: int) -> dict:
    port = free_port()
    argv = ["-m", "uvicorn", "benchmarks.bare_falcon:app", "--host", "127.0.0.1", "--port",
            str(port), "--workers", "2", "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning"]
    with processes(argv):
        wait_http(f"http://127.0.0.1:{port}/ping")
        return measure(f"http://127.0.0.1:{port}/predictions/echo", script, duration_s)


def run_ours(script: str, duration_s: int) -> dict:
    port = free_port()
    flags = ["--http-port", str(port), "--frontends", "2", "--batch-size", "8",
             "--max-batch-delay", "5", "--max-queue", "1000"]
    with zerobatch_server({"echo": os.path.join(BENCH_MODELS, "echo")}, *flags):
        return measure(f"http://127.0.0.1:{port}/predictions/echo", script, duration_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_http")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install wrk")

    with tempfile.TemporaryDirectory(prefix="zbh") as tmp:
        script = os.path.join(tmp, "post.lua")
        with open(script, "w") as handle:
            handle.write('wrk.method = "POST"\n'
                         f'wrk.body = "{PAYLOAD.decode()}"\n'
                         'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        runs: dict[str, list[dict]] = {"bare": [], "ours": []}
        for round_index in range(args.rounds):
            for kind in ("bare", "ours"):
                figures = (run_bare if kind == "bare" else run_ours)(script, args.duration)
                runs[kind].append(figures)
                print(f"round {round_index + 1} {kind}: {figures['rps_64']:,.0f} req/s @64, "
                      f"p50 {figures['p50_ms_1']:.3f} ms @1, errors {figures['errors']}",
                      flush=True)
    median = {kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
              for kind, rows in runs.items()}
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
