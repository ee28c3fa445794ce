"""Aggregator twins side by side: the cost of push + poll per request, and the speed-up.

Workload, identical for both twins: N requests arrive ARRIVAL_GAP_NS apart with rising ids and
deadlines (each DEADLINE_NS after its arrival); after every push the broker polls with a free
worker, so every BATCH_SIZE-th poll dispatches a full batch (rule 1). The aggregators run the
full_delay policy (adaptive=False): with the adaptive one a free worker would take every
request alone, and the workload would measure batches of one. The figure is the wall
time of the whole loop divided by N: one push, one poll and the loop itself, per request.
Each twin runs REPEAT times, interleaved with the other; the best run counts.

    python -m benchmarks.bench_aggregator [--requests N] [--repeat R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from zerobatch.broker import aggregator
from zerobatch.errors import ConfigError

BATCH_SIZE = 8
MAX_BATCH_DELAY_NS = 5_000_000  # 5 ms: longer than the whole burst of eight arrivals
MAX_QUEUE = 1024
ARRIVAL_GAP_NS = 1_000  # 1 us between arrivals
DEADLINE_NS = 1_000_000_000  # 1 s after arrival: nothing expires
START_NS = 1_000_000_000
DEFAULT_REQUESTS = 200_000
DEFAULT_REPEAT = 5


def _config() -> dict:
    return {"batch_size": BATCH_SIZE, "max_batch_delay_ns": MAX_BATCH_DELAY_NS,
            "max_queue": MAX_QUEUE, "adaptive": False}


def run_workload(cls: type, requests: int) -> int:
    """Nanoseconds that `requests` pushes and polls take on one fresh aggregator."""
    agg = cls(**_config())
    push, poll = agg.push, agg.poll
    stop_ns = START_NS + requests * ARRIVAL_GAP_NS
    deadline_ns = DEADLINE_NS
    start = time.perf_counter_ns()
    for now_ns in range(START_NS, stop_ns, ARRIVAL_GAP_NS):
        push(now_ns, now_ns, now_ns + deadline_ns)  # the arrival time doubles as a rising id
        poll(now_ns, True)
    return time.perf_counter_ns() - start


def check_workload(cls: type, requests: int) -> list[list[int]]:
    """The batches the workload dispatches (untimed): every request once, in full batches."""
    agg = cls(**_config())
    batches = []
    for now_ns in range(START_NS, START_NS + requests * ARRIVAL_GAP_NS, ARRIVAL_GAP_NS):
        agg.push(now_ns, now_ns, now_ns + DEADLINE_NS)
        expired, batch = agg.poll(now_ns, True)
        assert not expired, "the workload must not expire requests"
        if batch:
            batches.append(batch)
    assert all(len(batch) == BATCH_SIZE for batch in batches)
    assert len(batches) * BATCH_SIZE + len(agg) == requests
    return batches


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _figures(runs_ns: list[int], requests: int) -> dict:
    best_ns = min(runs_ns)
    return {
        "runs_ns": runs_ns,
        "best_ns_per_request": best_ns / requests,
        "median_ns_per_request": statistics.median(runs_ns) / requests,
        "requests_per_s": requests * 1e9 / best_ns,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                        help=f"requests per run (default {DEFAULT_REQUESTS})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"runs per twin; the best counts (default {DEFAULT_REPEAT})")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.requests < BATCH_SIZE or args.repeat < 1:
        parser.error(f"--requests must be >= {BATCH_SIZE} and --repeat >= 1")

    twins = {"python": aggregator.load("python")}
    try:
        twins["compiled"] = aggregator.load("compiled")
    except ConfigError as exc:
        print(f"compiled twin unavailable, timing the Python twin alone: {exc}", file=sys.stderr)

    batches = {name: check_workload(cls, min(args.requests, 10_000))
               for name, cls in twins.items()}
    assert all(b == batches["python"] for b in batches.values()), "the twins disagree"

    runs: dict[str, list[int]] = {name: [] for name in twins}
    for cls in twins.values():  # warm-up
        run_workload(cls, min(args.requests, 10_000))
    for _ in range(args.repeat):
        for name, cls in twins.items():
            runs[name].append(run_workload(cls, args.requests))

    figures = {name: _figures(runs_ns, args.requests) for name, runs_ns in runs.items()}
    speedup = None
    if "compiled" in figures:
        speedup = (figures["python"]["best_ns_per_request"]
                   / figures["compiled"]["best_ns_per_request"])

    print(f"aggregator push + poll, {args.requests} requests, batch_size {BATCH_SIZE}, "
          f"best of {args.repeat}")
    for name, fig in figures.items():
        print(f"  {name:9s} {fig['best_ns_per_request']:8.1f} ns/request "
              f"(median {fig['median_ns_per_request']:.1f})  "
              f"{fig['requests_per_s']:14,.0f} requests/s")
    if speedup is not None:
        print(f"  speed-up  compiled / python = {speedup:.1f}x")

    result = {
        "benchmark": "aggregator_push_poll",
        "commit": _git_commit(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "twins": {name: aggregator.implementation_name(cls) for name, cls in twins.items()},
        "config": {**_config(), "requests": args.requests, "repeat": args.repeat,
                   "arrival_gap_ns": ARRIVAL_GAP_NS, "deadline_ns": DEADLINE_NS},
        "figures": figures,
        "speedup": speedup,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"  wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
