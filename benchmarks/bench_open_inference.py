"""The Open Inference Protocol over HTTP and over gRPC, against one server, with tritonclient.

    python -m benchmarks.bench_open_inference [--rounds 3] [--duration 5] [--concurrency 16]
                                              [--elements 256] [--json results/oip.json]

One zerobatch server (one front end, the gRPC service, one worker of the v2_double model:
each FP32 input doubled, batch size 8, 5 ms) is called in alternating runs by
`tritonclient.http` (binary tensors) and `tritonclient.grpc` (raw contents), with the same
tensor of `--elements` FP32 values: requests/s with `--concurrency` threads, each with its
own client sending one request after another, the p50 of one thread alone, and the p50 of a
liveness call (no tensor, one broker ping: what the protocol's stack itself costs). The clients
run on the same cores as the server, so the figures include their cost; the ratio (gRPC over
HTTP, the median of the rounds) is the figure to compare.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import numpy as np

from benchmarks.common import (
    ROOT,
    at_least,
    bench_parser,
    free_port,
    run_record,
    write_json,
    zerobatch_server,
)

MODEL_DIR = os.path.join(ROOT, "benchmarks", "models", "v2_double")
MODEL = "v2_double"


def _client(kind: str, http_port: int, grpc_port: int):
    if kind == "http":
        import tritonclient.http as client
        return client, client.InferenceServerClient(f"127.0.0.1:{http_port}")
    import tritonclient.grpc as client
    return client, client.InferenceServerClient(f"127.0.0.1:{grpc_port}")


def _one_call(kind: str, http_port: int, grpc_port: int, elements: int):
    """A function that sends one infer request (and checks its answer)."""
    module, triton = _client(kind, http_port, grpc_port)
    x = np.arange(elements, dtype=np.float32)
    tensor = module.InferInput("x", [elements], "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [module.InferRequestedOutput("x_out")]

    def call() -> None:
        answer = triton.infer(MODEL, [tensor], outputs=outputs).as_numpy("x_out")
        if answer[1] != 2.0:
            raise RuntimeError(f"wrong answer {answer[:4]}")
    return call, triton


def wait_for_grpc(port: int, timeout_s: float = 30.0) -> None:
    """Until the gRPC process (started by the broker, maybe after `start` returned) is live."""
    import tritonclient.grpc as client
    from tritonclient.utils import InferenceServerException

    deadline = time.monotonic() + timeout_s
    with client.InferenceServerClient(f"127.0.0.1:{port}") as triton:
        while True:
            try:
                if triton.is_server_live(client_timeout=2):
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no gRPC service on port {port}")
            time.sleep(0.2)


def run(kind: str, http_port: int, grpc_port: int, args) -> dict:
    """requests/s with args.concurrency threads, and the p50 of one thread, in ms. Each
    thread makes its own client (tritonclient.http's is not to be shared across threads),
    warms it up, and all start together."""
    counts = [0] * args.concurrency
    ready = threading.Barrier(args.concurrency + 1)

    def loop(index: int) -> None:
        call, triton = _one_call(kind, http_port, grpc_port, args.elements)
        try:
            call()  # connect and warm up
            ready.wait()
            stop_at = time.monotonic() + args.duration
            while time.monotonic() < stop_at:
                call()
                counts[index] += 1
        finally:
            triton.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=60)
    started = time.monotonic()
    for thread in threads:
        thread.join()
    rps = sum(counts) / (time.monotonic() - started)
    call, triton = _one_call(kind, http_port, grpc_port, args.elements)
    call()
    latencies = []
    stop_at = time.monotonic() + args.duration
    while time.monotonic() < stop_at:
        sent = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - sent)
    live = []
    stop_at = time.monotonic() + args.duration / 2
    while time.monotonic() < stop_at:  # a call with no tensor: the protocol's own cost
        sent = time.perf_counter()
        triton.is_server_live()
        live.append(time.perf_counter() - sent)
    triton.close()
    return {"rps": rps, "p50_ms_1": statistics.median(latencies) * 1000,
            "live_p50_ms": statistics.median(live) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("benchmarks.bench_open_inference")
    parser.add_argument("--rounds", type=at_least(1), default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--concurrency", type=at_least(1), default=16)
    parser.add_argument("--elements", type=at_least(1), default=256)
    args = parser.parse_args(argv)
    http_port, grpc_port = free_port(), free_port()
    flags = ["--http-port", str(http_port), "--grpc-address",
             f"http://127.0.0.1:{grpc_port}", "--frontends", "1", "--batch-size", "8",
             "--max-batch-delay", "5", "--max-queue", "1000"]
    runs: dict[str, list[dict]] = {"http": [], "grpc": []}
    with zerobatch_server({MODEL: MODEL_DIR}, *flags):
        wait_for_grpc(grpc_port)
        for index in range(args.rounds):
            order = ("http", "grpc") if index % 2 == 0 else ("grpc", "http")
            for kind in order:
                figures = run(kind, http_port, grpc_port, args)
                runs[kind].append(figures)
                print(f"round {index + 1} {kind}: {figures['rps']:,.0f} req/s "
                      f"@{args.concurrency}, p50 {figures['p50_ms_1']:.3f} ms @1, live p50 "
                      f"{figures['live_p50_ms']:.3f} ms", flush=True)
    median = {kind: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
              for kind, rounds in runs.items()}
    ratio = median["grpc"]["rps"] / median["http"]["rps"]
    print("\nmedians over rounds")
    for kind, figures in median.items():
        print(f"  {kind}: {figures['rps']:,.0f} req/s @{args.concurrency}, "
              f"p50 {figures['p50_ms_1']:.3f} ms @1, live p50 {figures['live_p50_ms']:.3f} ms")
    print(f"  grpc/http throughput x{ratio:.2f}")
    write_json(args.json, run_record("open_inference", vars(args),
                                     {"median": median, "ratio_rps": ratio, "rounds": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
