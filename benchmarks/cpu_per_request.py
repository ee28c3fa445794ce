"""Where the CPU of an HTTP request goes: each zerobatch process's CPU time per request.

    python -m benchmarks.cpu_per_request [--batch-size 8] [--frontends 1] [--duration 6]
                                         [--metrics] [--access-log]

Serves the echo model, drives it with wrk (100-byte POSTs, concurrency 64, 2 threads) after a
2 s warm-up, and divides each process's CPU time (user + system, from /proc, its libzmq I/O
thread included) over the run by the requests answered, and gives the share of the run its
threads spent runnable but waiting for a CPU (schedstat, summed over threads). The figures
docs/architecture.md quotes come from this. With --metrics the metrics API runs (each
process records its figures; its own process is listed, not scraped) and --access-log adds
the access log: what observability costs each process. Needs Debian's wrk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

from benchmarks.common import BENCH_MODELS, command_lines, free_port, zerobatch_server
from benchmarks.loadgen import HttpTarget, run_wrk

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads, so far."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def cpu_wait_seconds(pid: int) -> float:
    """Time the threads of a process have spent runnable but waiting for a CPU, so far
    (the second field of each thread's /proc schedstat, in ns). On two cores shared by the
    worker, the front end, the broker and the load generator, this is where a process's
    latency goes that its own CPU time does not show."""
    total_ns = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                total_ns += int(handle.read().split()[1])
        except (OSError, IndexError, ValueError):  # the thread ended, or no schedstats
            continue
    return total_ns / 1e9


def processes_of(marker: str) -> dict[int, str]:
    """pid -> the zerobatch role (broker, worker, frontend) of processes whose command line
    holds marker (the server's run directory)."""
    found = {}
    for pid, argv in command_lines(marker).items():
        if b"-m" in argv:
            module = argv[argv.index(b"-m") + 1].decode()  # zerobatch.api.frontend, ...
            found[pid] = module.rsplit(".", 1)[-1]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_per_request")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frontends", type=int, default=1)
    parser.add_argument("--duration", type=int, default=6, help="seconds of measured load")
    parser.add_argument("--metrics", action="store_true",
                        help="run the metrics API: every process records its figures")
    parser.add_argument("--access-log", action="store_true", help="log a line per request")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install wrk")
    port = free_port()
    flags = ["--http-port", str(port), "--frontends", str(args.frontends),
             "--batch-size", str(args.batch_size), "--max-batch-delay", "5",
             "--max-queue", "1000"]
    if args.metrics:
        flags += ["--metrics-address", f"http://127.0.0.1:{free_port()}"]
    if args.access_log:
        flags.append("--access-log")
    target = HttpTarget("127.0.0.1", port, "/predictions/echo", b"x" * 100,
                        {"Content-Type": "application/octet-stream"})
    with zerobatch_server({"echo": os.path.join(BENCH_MODELS, "echo")}, *flags) as server:
        roles = processes_of(server["run_dir"])
        run_wrk(target, connections=64, threads=2, duration_s=2)  # warm-up
        before = {pid: cpu_seconds(pid) for pid in roles}
        waited_before = {pid: cpu_wait_seconds(pid) for pid in roles}
        started = time.monotonic()
        result = run_wrk(target, connections=64, threads=2, duration_s=args.duration)
        wall_s = time.monotonic() - started
        after = {pid: cpu_seconds(pid) for pid in roles}
        waited = {pid: cpu_wait_seconds(pid) - waited_before[pid] for pid in roles}
    answered = result.ok + sum(result.errors.values())
    print(f"{answered:,} requests, {result.rps():,.0f} req/s, batch size {args.batch_size}, "
          f"{args.frontends} front end(s), metrics {'on' if args.metrics else 'off'}, "
          f"access log {'on' if args.access_log else 'off'}")
    total = 0.0
    for pid, role in sorted(roles.items(), key=lambda item: item[1]):
        per_request_us = (after[pid] - before[pid]) / answered * 1e6
        total += per_request_us
        print(f"  {role:14s} {per_request_us:7.1f} µs/request, its threads waited for a CPU "
              f"{100 * waited[pid] / wall_s:5.1f}% of the run")
    print(f"  {'total':14s} {total:7.1f} µs/request (wrk's own CPU not counted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
