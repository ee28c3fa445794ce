"""benchmarks.bench_open_inference: tritonclient over HTTP and gRPC against one real server."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")

from benchmarks import bench_open_inference  # noqa: E402


def test_it_measures_both_protocols_and_writes_its_record(tmp_path, capsys):
    out = tmp_path / "oip.json"
    assert bench_open_inference.main(["--rounds", "1", "--duration", "0.5", "--concurrency",
                                      "2", "--elements", "8", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    assert figures["median"]["http"]["rps"] > 0 and figures["median"]["grpc"]["rps"] > 0
    assert "grpc/http throughput" in capsys.readouterr().out
