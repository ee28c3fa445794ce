"""`python -m benchmarks.ab` runs a benchmark on this tree and on a commit's, round by round."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks import ab
from benchmarks.common import ROOT

pytestmark = pytest.mark.integration


def worktrees() -> str:
    return subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30).stdout


def test_it_compares_this_tree_with_a_commit_and_removes_the_worktree(tmp_path, capsys):
    before = worktrees()
    out = tmp_path / "ab.json"
    assert ab.main(["HEAD", "--bench", "zmq", "--rounds", "2", "--json", str(out), "--",
                    "--latency-requests", "100", "--throughput-requests", "1000"]) == 0
    figures = json.loads(out.read_text())["figures"]
    assert len(figures["this"]) == len(figures["base"]) == 2
    assert set(figures["ratio"]) == {"p50_ms", "rps_64", "p50_over_relay", "rps64_over_relay"}
    assert all(value > 0 for value in figures["median"]["base"].values())
    printed = capsys.readouterr().out
    assert "round 1 this:" in printed and "round 2 base:" in printed  # the order swaps
    assert printed.index("round 2 base:") < printed.index("round 2 this:")
    assert worktrees() == before


def test_a_base_that_is_no_commit_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ab.main(["no-such-commit-anywhere"])
    assert exit_info.value.code == 2
    assert "is not a commit" in capsys.readouterr().err
