"""The fuzzing driver: run each atheris target in turn, each in its own process.

    python -m tests.fuzz [--seconds S] [--runs N] [--seed N] [--dir DIR] [target ...]

Each target fuzzes for S seconds (or N inputs), from its corpus `DIR/<target>/corpus` (made
from the target's seeds the first time, and grown by every run), writing any crash,
timeout or out-of-memory input to `DIR/<target>/crashes/`. DIR is `.fuzz` by default. The
exit status is 1 when a target failed; the summary names its crash files. A crash file is
replayed with `python -m tests.fuzz.<target> DIR/<target>/crashes/crash-...`.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

from tests.fuzz import TARGETS
from tests.fuzz._harness import FUZZ_DIR

#: libFuzzer's options for every target: an input that runs this long is a hang
COMMON_OPTIONS = ("-timeout=20", "-print_final_stats=1")
#: and per target: archives may be larger than libFuzzer's default 4 KiB
TARGET_OPTIONS = {"archives": ("-max_len=32768",)}


def command(target: str, directory: str, seconds: int | None, runs: int | None,
            seed: int | None) -> list[str]:
    """The command line that fuzzes one target."""
    options = [*COMMON_OPTIONS, *TARGET_OPTIONS.get(target, ())]
    if seconds is not None:
        options.append(f"-max_total_time={seconds}")
    if runs is not None:
        options.append(f"-runs={runs}")
    if seed is not None:
        options.append(f"-seed={seed}")
    crashes = os.path.join(directory, target, "crashes")
    os.makedirs(crashes, exist_ok=True)
    options.append(f"-artifact_prefix={crashes}{os.sep}")
    return [sys.executable, "-m", f"tests.fuzz.{target}", *options,
            os.path.join(directory, target, "corpus")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="target",
                        help=f"targets to run (default: all of {', '.join(TARGETS)})")
    parser.add_argument("--seconds", type=int, default=None,
                        help="how long each target fuzzes (default: 60 without --runs)")
    parser.add_argument("--runs", type=int, default=None, help="inputs each target runs")
    parser.add_argument("--seed", type=int, default=None, help="libFuzzer's random seed")
    parser.add_argument("--dir", default=FUZZ_DIR, help="corpus and crash directory")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    seconds = args.seconds if args.seconds is not None or args.runs is not None else 60
    failed = []
    for target in args.targets or TARGETS:
        before = set(glob.glob(os.path.join(args.dir, target, "crashes", "*")))
        started = time.monotonic()
        print(f"== {target}", flush=True)
        status = subprocess.call(command(target, args.dir, seconds, args.runs, args.seed))
        found = sorted(set(glob.glob(os.path.join(args.dir, target, "crashes", "*"))) - before)
        print(f"== {target}: exit status {status} after {time.monotonic() - started:.0f} s"
              + "".join(f"\n   crash file: {path}" for path in found), flush=True)
        if status:
            failed.append(target)
    if failed:
        print(f"failed: {', '.join(failed)} (replay a crash file with "
              "python -m tests.fuzz.<target> <file>)")
        return 1
    print("no target failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
