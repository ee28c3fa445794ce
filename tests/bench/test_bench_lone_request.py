"""`python -m benchmarks.bench_lone_request` splits real round trips at the handler's stamps."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_lone_request
from benchmarks.bench_lone_request import END_HEADER, START_HEADER, split

pytestmark = pytest.mark.integration


def test_it_splits_lone_echo_requests_over_both_transports(tmp_path, capsys):
    out = tmp_path / "lone.json"
    assert bench_lone_request.main(["--workloads", "echo", "--requests", "5",
                                    "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]["echo"]
    for transport in ("zmq", "http"):
        legs = figures[transport]
        assert legs["n"] == 5
        assert legs["to_ms"] > 0 and legs["back_ms"] > 0 and legs["handler_ms"] >= 0
        assert legs["total_ms"] >= max(legs["to_ms"], legs["back_ms"])
    printed = capsys.readouterr().out
    assert "echo  zmq  to " in printed and "echo  http to " in printed


def test_stamps_out_of_order_are_an_error():
    assert split(10, {START_HEADER: "12", END_HEADER: "15"}, 20) == (2, 3, 5)
    with pytest.raises(RuntimeError, match="out of order"):
        split(10, {START_HEADER: "9", END_HEADER: "15"}, 20)  # a handler before the send


def test_bad_counts_are_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        bench_lone_request.main(["--requests", "0"])
    assert exit_info.value.code == 2
