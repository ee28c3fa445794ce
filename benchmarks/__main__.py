"""`python -m benchmarks` (`make bench`): the benchmark harness's command line.

    python -m benchmarks run [--servers zerobatch,torchserve,litserve]
                             [--workloads echo,echo-b8,mlp,sleep] [--duration 5] [--quick]
                             [--out results/DIR] [--docs]
    python -m benchmarks report RESULTS_DIR [--docs]
    python -m benchmarks install [--servers torchserve,litserve]

`run` measures every scenario (see benchmarks/harness.py), writes RESULTS_DIR/run.json, then
the report (report.md and PNG plots); with --docs it also puts the table and a plot in
docs/benchmarks.md's latest-run section. `install` prepares the peers' virtual environments
(.bench/venvs) ahead of a run.
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks.common import ROOT


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def build_parser() -> argparse.ArgumentParser:
    from benchmarks import harness

    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="zerobatch side by side with its peers")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the scenarios and write the report")
    run.add_argument("--servers", type=_names, default=harness.SERVERS,
                     help=f"comma-separated (default: {','.join(harness.SERVERS)})")
    run.add_argument("--workloads", type=_names, default=harness.WORKLOADS,
                     help=f"comma-separated (default: {','.join(harness.WORKLOADS)})")
    run.add_argument("--concurrency", type=lambda t: tuple(int(c) for c in _names(t)),
                     default=harness.CONCURRENCIES, help="closed-loop levels (default: "
                     f"{','.join(map(str, harness.CONCURRENCIES))})")
    run.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    run.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    run.add_argument("--driver", choices=("auto", "wrk", "http"), default="auto",
                     help="closed loop above concurrency 1: wrk, our generator, or wrk when "
                          "installed (auto)")
    run.add_argument("--no-floor", action="store_true", help="skip the floor runs")
    run.add_argument("--no-overload", action="store_true", help="skip the overload runs")
    run.add_argument("--quick", action="store_true",
                     help="a smoke run: 1 s loads, concurrency 1 and 8, no floor")
    run.add_argument("--out", default=None, help="results directory (default: results/<time>)")
    run.add_argument("--docs", action="store_true",
                     help="also update docs/benchmarks.md's latest-run table")
    report = commands.add_parser("report", help="write report.md and plots of a run")
    report.add_argument("results_dir")
    report.add_argument("--docs", action="store_true",
                        help="also update docs/benchmarks.md's latest-run table")
    install = commands.add_parser("install", help="install the peers' environments")
    install.add_argument("--servers", type=_names, default=("torchserve", "litserve"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_names(parser, args)
    if args.command == "install":
        return _install(args.servers)
    if args.command == "report":
        return _report(args.results_dir, args.docs)
    return _run(args, argv if argv is not None else sys.argv[1:])


def _check_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Unknown server or workload names are a usage error, not a traceback mid-run."""
    from benchmarks import harness
    from benchmarks.peers import PEERS

    for option, given, known in (("--servers", getattr(args, "servers", ()), PEERS),
                                 ("--workloads", getattr(args, "workloads", ()),
                                  harness.CASES)):
        unknown = [name for name in given if name not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))}")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from benchmarks import harness

    plan = harness.Plan(servers=args.servers, workloads=args.workloads,
                        concurrencies=args.concurrency, duration_s=args.duration,
                        warmup_s=args.warmup, driver=args.driver,
                        floor=not args.no_floor, overload=not args.no_overload)
    if args.quick:
        plan.duration_s, plan.warmup_s = 1.0, 0.3
        plan.concurrencies, plan.floor = (1, 8), False
    out_dir = os.path.abspath(args.out or harness.default_out_dir())
    harness.run(plan, out_dir, command=["python", "-m", "benchmarks", *argv],
                say=lambda line: print(line, flush=True))
    return _report(out_dir, args.docs)


def _report(results_dir: str, docs: bool) -> int:
    from benchmarks import report

    for path in report.write_report(results_dir):
        print(f"wrote {path}")
    if docs:
        report.update_readme(results_dir, os.path.join(ROOT, "docs", "benchmarks.md"),
                             plot_dir=os.path.join(ROOT, "docs", "bench"))
        print("updated docs/benchmarks.md")
    return 0


def _install(servers: tuple[str, ...]) -> int:
    from benchmarks.peers import get_peer

    for name in servers:
        peer = get_peer(name)
        why = peer.missing()
        if why:
            print(f"{name}: cannot run here: {why}", file=sys.stderr)
            return 1
        peer.install()
        print(f"{name} {peer.version()} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
