"""A short run of each atheris target (tests/fuzz), as `make test` runs it: each fuzzes for a
few seconds from its seeds, in its own process, and must find nothing. `make fuzz` is the
long run (docs/fuzzing.md). Skipped when atheris is not installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import TARGETS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                       reason="atheris is not installed (`pip install atheris`, see "
                              "docs/fuzzing.md)"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: how long each target fuzzes here
FUZZ_SECONDS = 3
#: how long its process may take, start-up and instrumentation included
LIMIT_S = 90


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=LIMIT_S)


@pytest.mark.parametrize("target", TARGETS)
def test_a_short_run_finds_nothing(tmp_path, target):
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    result = run([f"tests.fuzz.{target}", f"-max_total_time={FUZZ_SECONDS}", "-seed=1",
                  "-timeout=20", f"-artifact_prefix={crashes}{os.sep}", str(tmp_path / "corpus")])
    found = sorted(os.listdir(crashes))
    assert result.returncode == 0 and not found, (
        f"tests.fuzz.{target} failed (exit status {result.returncode}, crash files {found} in "
        f"{crashes}; the input is the Base64 line below, replay it with "
        f"`python -m tests.fuzz.{target} <file>`):\n{result.stderr[-6000:]}")
    assert "\nDone " in result.stderr, result.stderr[-2000:]  # libFuzzer's last line: it ran


def test_the_driver_runs_every_target(tmp_path):
    result = run(["tests.fuzz", "--runs", "20", "--seed", "1", "--dir", str(tmp_path)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no target failed" in result.stdout
    for target in TARGETS:
        assert os.listdir(tmp_path / target / "corpus"), f"{target} wrote no corpus"
