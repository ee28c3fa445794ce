"""The benchmark harness end to end, briefly: `python -m benchmarks run --quick` against a real
zerobatch (workloads built by the real archiver), then the report; and the ZeroMQ floor
(relay and C proxy in front of the protocol echo) driven by our own client. Figures are not
checked here (benchmarks measure, tests check behaviour): only that every scenario ran, was
recorded, reported, and left no process behind."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks import harness
from benchmarks.common import ROOT
from tests.support.servers import processes_mentioning

RUN_TIMEOUT_S = 300


def test_quick_run_records_every_scenario_and_writes_the_report(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--servers", "zerobatch",
         "--workloads", "echo,sleep", "--quick", "--driver", "http", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads((out / "run.json").read_text())
    seen = {(r["scenario"], r["workload"], r.get("transport"), r.get("concurrency"))
            for r in run["records"]}
    for workload in ("echo", "sleep"):
        assert ("startup", workload, None, None) in seen
        assert ("latency", workload, "http", 1) in seen
        assert ("throughput", workload, "http", 8) in seen
        assert ("latency", workload, "zmq", 1) in seen
        assert ("throughput", workload, "zmq", 64) in seen
    assert ("ceiling", "sleep", None, None) in seen
    [ceiling] = [r for r in run["records"] if r["scenario"] == "ceiling"]
    assert len(ceiling["measurements"]) == 2  # before and after the server ran the workload
    assert set(ceiling["by_server"]) == {"zerobatch"}
    assert ("overload", "sleep", "http", None) in seen
    loads = [r for r in run["records"] if r["scenario"] in ("latency", "throughput")]
    assert all(r["result"]["ok"] > 0 and r["result"]["sent"] >= r["result"]["ok"]
               for r in loads)
    assert all(r["batch_sizes"] for r in loads)  # zerobatch reports what it formed
    assert run["targets"] and run["commit"] and run["command"][:3] == ["python", "-m",
                                                                       "benchmarks"]
    assert (out / "report.md").read_text().count("zerobatch") > 3
    assert (out / "throughput_vs_concurrency_echo.png").read_bytes()[:4] == b"\x89PNG"
    assert processes_mentioning("zb-bench-") == []


def test_floor_answers_our_clients():
    plan = harness.Plan(duration_s=0.5, warmup_s=0.2, max_requests=20_000)
    records = harness._floor(plan, say=lambda line: None)
    by_server = {(r["server"], r["concurrency"]): r["result"] for r in records}
    for server in ("zmq-relay", "zmq-proxy", "bare-falcon"):
        for concurrency in (1, 64):
            result = by_server[(server, concurrency)]
            assert result["ok"] > 0 and not result["errors"], (server, concurrency, result)
    assert processes_mentioning("benchmarks.floor") == []
    assert processes_mentioning("benchmarks.bare_falcon") == []
