"""benchmarks.bench_client: the sync client timed with its socket replaced by an echo."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_client


def test_it_times_this_trees_client_and_writes_its_record(tmp_path, capsys):
    out = tmp_path / "client.json"
    assert bench_client.main(["--requests", "300", "--in-flight", "8", "--rounds", "2",
                              "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    assert len(figures["rounds_us"]) == 2 and 0 < figures["best_us"] <= figures["median_us"]
    assert "us/request best" in capsys.readouterr().out


def test_a_round_of_no_requests_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        bench_client.main(["--requests", "0"])
    assert exit_info.value.code == 2
