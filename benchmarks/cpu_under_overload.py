"""Where the CPU goes under overload: the harness's MLP overload, with each process's share.

    python -m benchmarks.cpu_under_overload [--rate N] [--duration 5]

Serves the MLP workload as the harness does (batch size 8, 5 ms delay, adaptive, one worker,
one front end, one torch thread), sends open-loop arrivals with a 100 ms deadline at --rate
per second (default: twice the model's batched ceiling, as the harness's overload), and
prints the harness's overload figures, each process's CPU over the run (user + system from
/proc, libzmq I/O threads included; the load generator is this process) and the time its
threads were runnable but waited for a CPU (schedstat, summed over threads, so it can pass
100%), and how many of the refusals the broker made itself (`describe`'s refusedLate; the
rest were made by the front end's client from the broker's refusal hints). The figures
docs/architecture.md quotes for the overload come from this.
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import free_port, zerobatch_server
from benchmarks.cpu_per_request import cpu_seconds, cpu_wait_seconds, processes_of
from benchmarks.harness import (
    CASES,
    DEADLINE_MS,
    OVERLOAD_CLIENT_TIMEOUT_S,
    OVERLOAD_FACTOR,
    SERVER_ENV,
    WORK_DIR,
    overload_figures,
)
from benchmarks.loadgen import HttpTarget
from benchmarks.loadgen_http import run_http

MAX_REQUESTS = 200_000


def main(argv: list[str] | None = None) -> int:
    from benchmarks.workloads import batched_ceiling, build
    from zerobatch.api.client import Client

    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_under_overload")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="arrivals per second (default: twice the batched ceiling)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of arrivals")
    args = parser.parse_args(argv)
    os.environ.update(SERVER_ENV)  # one torch thread in the worker, as in the harness
    case = CASES["mlp"]
    settings = case.settings
    workload = build(case.workload, WORK_DIR)
    rate = args.rate
    if rate <= 0:
        ceiling = batched_ceiling(workload, batch_sizes=(settings.batch_size,))
        rate = OVERLOAD_FACTOR * ceiling["ceiling_rps"][str(settings.batch_size)]
    port = free_port()
    flags = ["--http-port", str(port), "--frontends", "1", "--workers", str(settings.workers),
             "--batch-size", str(settings.batch_size),
             "--max-batch-delay", str(settings.max_batch_delay_ms),
             "--max-queue", str(settings.max_queue),
             "--batch-policy", settings.policy or "adaptive"]
    target = HttpTarget("127.0.0.1", port, f"/predictions/{workload.name}", workload.payload,
                        {"Content-Type": workload.content_type,
                         "x-zerobatch-timeout-ms": str(DEADLINE_MS)})
    with zerobatch_server({workload.name: workload.archive}, *flags) as server:
        roles = processes_of(server["run_dir"])
        run_http(target, concurrency=8, duration_s=2, max_requests=MAX_REQUESTS)  # warm-up
        with Client(server["control_address"], timeout_ms=5000) as client:
            refused_before = client.control("describe")["models"][0]["refusedLate"]
        before = {pid: cpu_seconds(pid) for pid in roles}
        waited_before = {pid: cpu_wait_seconds(pid) for pid in roles}
        own_before = time.process_time()
        own_waited_before = cpu_wait_seconds(os.getpid())
        started = time.monotonic()
        result = run_http(target, rate=rate, duration_s=args.duration,
                          max_requests=MAX_REQUESTS, timeout_s=OVERLOAD_CLIENT_TIMEOUT_S,
                          deadline_ms=DEADLINE_MS)
        wall_s = time.monotonic() - started
        after = {pid: cpu_seconds(pid) for pid in roles}
        waited = {pid: cpu_wait_seconds(pid) - waited_before[pid] for pid in roles}
        own_s = time.process_time() - own_before
        own_waited_s = cpu_wait_seconds(os.getpid()) - own_waited_before
        with Client(server["control_address"], timeout_ms=5000) as client:
            refused_by_broker = client.control("describe")["models"][0]["refusedLate"]
    figures = overload_figures(result)
    refusal_p99 = figures["refusal_p99_ms"]
    print(f"{rate:,.0f} arrivals/s for {args.duration:g} s, deadline {DEADLINE_MS} ms: "
          f"accepted {figures['accepted']:.1%}, within deadline "
          f"{figures['within_deadline_of_accepted']:.2%} of those, refusal p99 "
          + (f"{refusal_p99:.2f} ms" if refusal_p99 is not None else "n/a"))
    refused = figures["refused"]
    by_broker = refused_by_broker - refused_before
    if refused:
        print(f"refusals: {refused:,}, {by_broker:,} by the broker, "
              f"{refused - by_broker:,} by the front end from the broker's hints")
    for pid, role in sorted(roles.items(), key=lambda item: item[1]):
        print(f"  {role:14s} {100 * (after[pid] - before[pid]) / wall_s:5.1f}% CPU, "
              f"waited for one {100 * waited[pid] / wall_s:5.1f}%")
    print(f"  {'load generator':14s} {100 * own_s / wall_s:5.1f}% CPU, "
          f"waited for one {100 * own_waited_s / wall_s:5.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
