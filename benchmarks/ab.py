"""Two versions of the code side by side: one micro-benchmark, run on each in alternating rounds.

    python -m benchmarks.ab BASE [--bench zmq|http] [--rounds 4] [--json results/ab.json]
                            [-- extra arguments for the benchmark]

This project's machine moves by 10-30% between runs and more between hours, so a change of a
few per cent only shows when both versions run in one invocation, round by round. BASE (a
commit, branch or tag) is checked out into a temporary git worktree and its compiled batching
core built there with this interpreter. Then every round runs the benchmark once in this
working tree and once in BASE's, each in a process of its own (the order swaps every round),
and the end prints each round, the median of each side and their ratio (this tree over BASE).

  zmq   python -m benchmarks.bench_zmq --rounds 1: our p50 with one request in flight and our
        requests/s with 64 in flight, and both against that round's bare relay
  http  python -m benchmarks.bench_http --rounds 1: our requests/s at concurrency 64 (and
        against that round's bare Falcon app) and our p50 at concurrency 1; needs wrk

The floor each round measures is the same code on both sides, so its ratios also show how
much the machine moved between a round's two halves. The worktree is removed at the end,
whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Callable

from benchmarks.common import ROOT, at_least, bench_parser, run_record, write_json
from benchmarks.wrk import wrk_available

BUILD_TIMEOUT_S = 600
BENCH_TIMEOUT_S = 900


def _zmq_figures(figures: dict) -> dict[str, float]:
    ours, ratios = figures["median"]["ours"], figures["ratios"]
    return {"p50_ms": ours["p50_ms"], "rps_64": ours["rps_64"],
            "p50_over_relay": ratios["p50_ours_over_relay"],
            "rps64_over_relay": ratios["rps64_ours_over_relay"]}


def _http_figures(figures: dict) -> dict[str, float]:
    ours = figures["median"]["ours"]
    return {"rps_64": ours["rps_64"], "p50_ms_1": ours["p50_ms_1"],
            "rps64_over_bare": figures["ratio_rps64"]}


#: benchmark -> (its module, the figures to compare from its JSON record)
BENCHES: dict[str, tuple[str, Callable[[dict], dict[str, float]]]] = {
    "zmq": ("benchmarks.bench_zmq", _zmq_figures),
    "http": ("benchmarks.bench_http", _http_figures),
}


def _git(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s)


def checkout(base: str, parent: str) -> str:
    """BASE's tree in a new worktree under parent, its compiled core built; ValueError if
    BASE names no commit."""
    resolved = _git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
    if resolved.returncode != 0:
        raise ValueError(f"{base!r} is not a commit of the repository at {ROOT}")
    tree = os.path.join(parent, "base")
    added = _git("worktree", "add", "--detach", tree, resolved.stdout.strip())
    if added.returncode != 0:
        raise RuntimeError(f"git worktree add failed:\n{added.stderr}")
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=tree, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if built.returncode != 0:
        remove(tree)
        raise RuntimeError(f"building {base}'s compiled core failed:\n{built.stderr}")
    _link_mapped_packages(tree)
    return tree


#: setup.py's package_dir: repository folders installed as zerobatch.<name>
_MAPPED_PACKAGES = ("api", "broker", "worker")


def _link_mapped_packages(tree: str) -> None:
    """Make a tree of the one-package layout importable as itself from PYTHONPATH=tree: the
    folders setup.py maps into `zerobatch` (api/, broker/, worker/) linked inside
    tree/zerobatch/. Without the links, `zerobatch.api` and the others would resolve to this
    checkout's editable install, and the base would run this tree's code."""
    package = os.path.join(tree, "zerobatch")
    if not os.path.isfile(os.path.join(package, "__init__.py")):
        return  # an older layout: its modules are top-level and found from the cwd
    for name in _MAPPED_PACKAGES:
        link = os.path.join(package, name)
        if os.path.isdir(os.path.join(tree, name)) and not os.path.lexists(link):
            os.symlink(os.path.join("..", name), link)


def remove(tree: str) -> None:
    _git("worktree", "remove", "--force", tree)
    shutil.rmtree(tree, ignore_errors=True)
    _git("worktree", "prune")


def run_once(bench: str, tree: str, extra: list[str], out_path: str) -> dict[str, float]:
    """One run of the benchmark with one round, in tree; the figures it is compared on."""
    module, figures_of = BENCHES[bench]
    # PYTHONPATH reaches the children too, which start with -P (zerobatch.launch)
    env = {**os.environ, "PYTHONPATH": tree}
    result = subprocess.run([sys.executable, "-m", module, "--rounds", "1", *extra,
                             "--json", out_path], cwd=tree, env=env, capture_output=True,
                            text=True, timeout=BENCH_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed in {tree} ({result.returncode}):\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    with open(out_path) as handle:
        return figures_of(json.load(handle)["figures"])


def compare(base: str, bench: str, rounds: int, extra: list[str],
            say: Callable[[str], None] = print) -> dict:
    """{"this": [figures per round], "base": [...], "median": {side: ...}, "ratio": {...}}."""
    runs: dict[str, list[dict[str, float]]] = {"this": [], "base": []}
    with tempfile.TemporaryDirectory(prefix="zb-ab-") as parent:
        tree = checkout(base, parent)
        try:
            trees = {"this": ROOT, "base": tree}
            for round_index in range(rounds):
                order = ("this", "base") if round_index % 2 == 0 else ("base", "this")
                for side in order:
                    out_path = os.path.join(parent, f"{side}-{round_index}.json")
                    figures = run_once(bench, trees[side], extra, out_path)
                    runs[side].append(figures)
                    say(f"round {round_index + 1} {side:4s}: " + _line(figures))
        finally:
            remove(tree)
    median = {side: {key: statistics.median(run[key] for run in values)
                     for key in values[0]} for side, values in runs.items()}
    ratio = {key: median["this"][key] / median["base"][key] for key in median["this"]
             if median["base"][key]}
    return {**runs, "median": median, "ratio": ratio}


def _line(figures: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:,.3f}" if value < 100 else f"{key} {value:,.0f}"
                     for key, value in figures.items())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = bench_parser("benchmarks.ab")
    parser.add_argument("base", help="the commit, branch or tag to compare this tree with")
    parser.add_argument("--bench", choices=sorted(BENCHES), default="zmq")
    parser.add_argument("--rounds", type=at_least(1), default=4,
                        help="rounds; each runs the benchmark once on each side")
    args = parser.parse_args(argv)
    if args.bench == "http" and not wrk_available():
        parser.error("--bench http needs wrk (Debian: apt-get install wrk)")
    try:
        result = compare(args.base, args.bench, args.rounds, extra)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"\nmedians over {args.rounds} rounds, this tree against {args.base}")
    for side in ("this", "base"):
        print(f"  {side:4s}: {_line(result['median'][side])}")
    print("  this/base: " + ", ".join(f"{key} x{value:.3f}"
                                      for key, value in result["ratio"].items()))
    write_json(args.json, run_record("ab", {"base": args.base, "bench": args.bench,
                                            "rounds": args.rounds, "extra": extra}, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
