"""The batched ceiling: how fast the model itself runs, outside any server.

`batched_ceiling` starts a fresh Python process with the thread count fixed (OMP_NUM_THREADS
and torch.set_num_threads), imports the workload's handler from its model directory, runs
its init, and times one handle() call per batch size on real payload rows: the median over
`repeats` calls after a warm-up, bounded by max_s in all. batch_size / forward time is the
most any server can answer with that batch size; the harness reports its throughput against
it. The sleep workload is measured the same way (its cost is real sleeping)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.workloads.handler_host import MinimalContext, load_handler
from benchmarks.workloads.spec import Workload

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: time allowed on top of max_s for the child to import torch and load the model
STARTUP_ALLOWANCE_S = 120
WARMUP_CALLS = 10


def batched_ceiling(workload: Workload, batch_sizes=(1, 8), threads: int = 1,
                    repeats: int = 200, max_s: float = 10) -> dict:
    """{"forward_ms": {"1": ..}, "ceiling_rps": {"1": ..}, "threads": threads}."""
    sizes = [int(size) for size in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if threads < 1 or repeats < 1 or max_s <= 0:
        raise ValueError("threads and repeats must be >= 1 and max_s > 0")
    request = {"model_dir": workload.model_dir, "handler": workload.handler,
               "batch_sizes": sizes, "threads": threads, "repeats": repeats, "max_s": max_s}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.workloads.ceiling", json.dumps(request)],
        input=workload.payload, capture_output=True, cwd=ROOT, env=env,
        timeout=max_s + STARTUP_ALLOWANCE_S)
    if result.returncode != 0:
        raise RuntimeError(f"measuring {workload.name} failed ({result.returncode}):\n"
                           f"{result.stderr.decode(errors='replace')}")
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def measure(model_dir: str, handler: str, body: bytes, batch_sizes: list[int], threads: int,
            repeats: int, max_s: float) -> dict:
    """Runs in the child: the median time of one handle() call per batch size."""
    module = load_handler(model_dir, handler)
    context = MinimalContext(model_dir, batch_size=max(batch_sizes))
    module.handle(None, context)
    torch = sys.modules.get("torch")  # only a handler that uses torch has imported it
    if torch is not None:
        torch.set_num_threads(threads)
    budget_s = max_s / len(batch_sizes)
    forward_ms, ceiling_rps = {}, {}
    for size in batch_sizes:
        rows = [{"body": bytearray(body)} for _ in range(size)]  # what the servers hand over
        deadline = time.monotonic() + budget_s
        for _ in range(WARMUP_CALLS):
            if time.monotonic() >= deadline:
                break
            module.handle(rows, context)
        samples_s: list[float] = []
        while len(samples_s) < repeats and (not samples_s or time.monotonic() < deadline):
            start = time.perf_counter()
            answers = module.handle(rows, context)
            samples_s.append(time.perf_counter() - start)
            if len(answers) != size:
                raise RuntimeError(f"handle() gave {len(answers)} answers for {size} rows")
        median_s = statistics.median(samples_s)
        forward_ms[str(size)] = median_s * 1000
        ceiling_rps[str(size)] = size / median_s
    return {"forward_ms": forward_ms, "ceiling_rps": ceiling_rps, "threads": threads}


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    print(json.dumps(measure(args["model_dir"], args["handler"], sys.stdin.buffer.read(),
                             args["batch_sizes"], args["threads"], args["repeats"],
                             args["max_s"])))
