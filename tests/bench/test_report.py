"""The benchmark report: report.md, the PNG plots and the README section from a synthetic run,
with a peer missing, so a partial run still gives a complete, honest report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(rps: float, p50: float, errors: dict | None = None) -> dict:
    """The LoadResult.to_dict() keys the report reads (the contract in its docstring)."""
    latency_ms = {"p50": p50, "p90": p50 * 2, "p99": p50 * 4, "p999": p50 * 8,
                  "mean": p50 * 1.1, "max": p50 * 10, "count": int(rps * 10)}
    return {"rps": rps, "ok": int(rps * 10), "sent": int(rps * 10) + sum((errors or {}).values()),
            "errors": errors or {}, "latency": latency_ms}


def load(scenario, workload, server, concurrency, rps, p50, transport="http", batches=None,
         errors=None) -> dict:
    return {"scenario": scenario, "workload": workload, "server": server,
            "transport": transport, "concurrency": concurrency,
            "result": result(rps, p50, errors), "batch_sizes": batches}


def synthetic_run() -> dict:
    records = [
        load("latency", "echo", "zerobatch", 1, 2000.0, 0.4, batches={"1": 20000}),
        load("latency", "echo", "torchserve", 1, 500.0, 1.6),
        load("throughput", "echo", "zerobatch", 8, 8000.0, 0.9, batches={"1": 100, "8": 900}),
        load("throughput", "echo", "zerobatch", 64, 10000.0, 5.0,
             batches={"8": 1200, "4": 30}, errors={"503": 3}),
        load("throughput", "echo", "zerobatch", 64, 15000.0, 3.0, transport="zmq"),
        load("throughput", "echo", "torchserve", 8, 1600.0, 4.5),
        load("throughput", "echo", "torchserve", 64, 2000.0, 30.0),
        load("latency", "mlp", "zerobatch", 1, 400.0, 2.4, batches={"1": 4000}),
        load("throughput", "mlp", "zerobatch", 32, 980.0, 30.0, batches={"8": 1225}),
        load("throughput", "mlp", "torchserve", 32, 700.0, 44.0),
        {"scenario": "ceiling", "workload": "mlp", "server": None,
         "forward_ms": {"1": 2.3, "8": 8.0}, "ceiling_rps": {"1": 434.0, "8": 1000.0},
         "measurements": [{"1": 2.2, "8": 7.9}, {"1": 2.4, "8": 8.1}]},
        {"scenario": "overload", "workload": "mlp", "server": "zerobatch", "transport": "http",
         "rate": 2000.0, "deadline_ms": 100, "result": result(900.0, 40.0, {"503": 1100}),
         "accepted": 0.45, "within_deadline_of_accepted": 0.995, "refusal_p99_ms": 1.2},
        {"scenario": "overload", "workload": "mlp", "server": "torchserve", "transport": "http",
         "rate": 1400.0, "deadline_ms": 100, "result": result(690.0, 900.0, {"504": 700}),
         "accepted": 1.0, "within_deadline_of_accepted": 0.02, "refusal_p99_ms": None},
        {"scenario": "startup", "workload": "echo", "server": "zerobatch", "startup_s": 0.61},
        {"scenario": "startup", "workload": "echo", "server": "torchserve", "startup_s": 2.7},
        {"scenario": "floor", "workload": "echo", "server": "bare-falcon", "transport": "http",
         "concurrency": 64, "result": result(20000.0, 2.5)},
        {"scenario": "floor", "workload": "echo", "server": "zmq-relay", "transport": "zmq",
         "concurrency": 64, "result": result(30000.0, 1.5)},
    ]
    return {"time": "2025-01-01T00:00:00Z", "commit": "abc123",
            "machine": {"cpus": 2, "platform": "Linux-x86_64", "cpu_model": "Test CPU"},
            "versions": {"zerobatch": "0.1", "torchserve": "0.12.0"},
            "settings": {"batch_size": 8, "max_batch_delay_ms": 5},
            "command": ["python", "-m", "benchmarks", "run", "--quick"],
            "notes": {"torchserve": "raw bytes, application/octet-stream"},
            "missing": {"litserve": "pip could not install litserve"},
            "records": records,
            "targets": [{"figure": "echo http c64 vs torchserve", "target": ">= 5x",
                         "measured": "5.0x", "reached": True},
                        {"figure": "echo http c64 vs litserve", "target": ">= 7x",
                         "measured": None, "reached": None}]}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """One synthetic run, reported once for the module: the tests only read what it wrote."""
    directory = tmp_path_factory.mktemp("results")
    (directory / "run.json").write_text(json.dumps(synthetic_run()))
    return directory


@pytest.fixture(scope="module")
def written(results_dir):
    return report.write_report(str(results_dir))


def lines_with(text: str, *needles: str) -> list[str]:
    return [line for line in text.splitlines() if all(needle in line for needle in needles)]


def test_writes_report_and_valid_pngs(results_dir, written):
    names = sorted(os.path.basename(path) for path in written)
    assert names == sorted(["report.md"] + [
        f"{plot}_{workload}.png" for workload in ("echo", "mlp")
        for plot in ("latency_vs_concurrency", "throughput_vs_concurrency", "batch_sizes")])
    for path in written:
        assert os.path.dirname(path) == str(results_dir)
        if path.endswith(".png"):
            with open(path, "rb") as handle:
                data = handle.read()
            assert data.startswith(PNG_MAGIC)
            assert len(data) > 10_000


def test_header_carries_machine_commit_versions_and_command(results_dir, written):
    text = (results_dir / "report.md").read_text()
    assert "abc123" in text and "Test CPU" in text and "2 CPUs" in text
    assert "torchserve 0.12.0" in text
    assert "`python -m benchmarks run --quick`" in text
    assert '"max_batch_delay_ms": 5' in text


def test_load_tables_give_figures_and_ratios(results_dir, written):
    text = (results_dir / "report.md").read_text()
    assert "## throughput: echo" in text and "## latency: mlp" in text
    [torchserve] = lines_with(text, "| torchserve | http | 64 |")
    assert "| 2,000 | 30.0 | 60.0 | 120 | 240 | 0 |" in torchserve
    assert "| 5.00× | 6.00× |" in torchserve          # req/s 10000/2000, p50 30/5
    [zerobatch] = lines_with(text, "| zerobatch | http | 64 |")
    assert "503: 3" in zerobatch and "mean 7.9 (8×1,200, 4×30)" in zerobatch
    assert lines_with(text, "| zerobatch | zmq | 64 | 15,000 |")


def test_missing_peer_renders_na(results_dir, written):
    text = (results_dir / "report.md").read_text()
    [litserve] = lines_with(text, "| litserve | n/a | 64 |")
    assert litserve.count("n/a") >= 8
    [summary] = lines_with(text, "| echo | 64 |")
    assert "| 10,000 (5.00) | 2,000 (30.0) | n/a | 5.00× | n/a |" in summary
    assert "- litserve: pip could not install litserve" in text
    assert "| echo http c64 vs litserve | >= 7x | n/a | n/a |" in text


def test_ceiling_overload_startup_floor_and_targets(results_dir, written):
    text = (results_dir / "report.md").read_text()
    [ceiling] = lines_with(text, "| mlp | 2.30 | 8.00 | 1,000 | 32 |")
    assert "| 980 | 98.0% | 70.0% | n/a |" in ceiling
    assert ("- mlp: forward ms at batch 8 measured before and after the servers ran it: 7.90, "
            "8.10; the ceiling uses their mean.") in text
    [overload] = lines_with(text, "| mlp | zerobatch | 2,000 |")
    assert "| 45.0% | 99.5% | 1.20 |" in overload and "503: 1,100" in overload
    assert lines_with(text, "| mlp | torchserve |", "| 2.0% | n/a |")
    assert lines_with(text, "| mlp | litserve | n/a |")
    assert "| echo | 0.61 | 2.70 | n/a |" in text
    assert lines_with(text, "| echo | bare-falcon | http | 64 | 20,000 |", "| 10,000 | 50.0% |")
    assert lines_with(text, "| echo | zmq-relay | zmq | 64 | 30,000 |", "| 15,000 | 50.0% |")
    assert "| echo http c64 vs torchserve | >= 5x | 5.0x | yes |" in text
    assert "- torchserve: raw bytes, application/octet-stream" in text


def test_empty_run_still_reports(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"records": []}))
    written = report.write_report(str(tmp_path))
    assert [os.path.basename(path) for path in written] == ["report.md"]
    text = (tmp_path / "report.md").read_text()
    assert "n/a: no overload records" in text and "commit: `n/a`" in text


README = "# Title\n\nintro\n\n<!-- bench:start -->\nold table\n<!-- bench:end -->\n\nrest\n"


def test_update_readme_replaces_only_the_section(tmp_path, results_dir, written):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    report.update_readme(str(results_dir), str(readme))
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n<!-- bench:start -->\n")
    assert text.endswith("<!-- bench:end -->\n\nrest\n")
    assert "old table" not in text
    assert "commit `abc123`" in text and "`python -m benchmarks run --quick`" in text
    assert "![throughput against concurrency](docs/bench/throughput_vs_concurrency_echo.png)" \
        in text
    assert (tmp_path / "docs" / "bench" / "throughput_vs_concurrency_echo.png").exists()
    report.update_readme(str(results_dir), str(readme))
    assert readme.read_text() == text


def test_update_readme_without_markers_says_how_to_fix(tmp_path, results_dir, written):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    with pytest.raises(ValueError, match="bench:start"):
        report.update_readme(str(results_dir), str(readme))
    assert readme.read_text() == "# Title\n"


def test_command_line_writes_report_and_readme(tmp_path, results_dir, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    report.main([str(results_dir), "--readme", str(readme),
                 "--plot-dir", str(tmp_path / "plots")])
    assert "report.md" in capsys.readouterr().out
    assert "(plots/throughput_vs_concurrency_echo.png)" in readme.read_text()


def test_importing_the_report_does_not_import_matplotlib():
    code = "import sys, benchmarks.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "False"


def test_each_servers_share_is_against_its_own_ceiling(tmp_path):
    run = synthetic_run()
    [ceiling] = [r for r in run["records"] if r["scenario"] == "ceiling"]
    ceiling["measurements"].append({"1": 2.6, "8": 10.0})
    ceiling["by_server"] = {"zerobatch": {"forward_ms": {"1": 2.3, "8": 8.0},
                                          "ceiling_rps": {"1": 434.0, "8": 1000.0}},
                            "torchserve": {"forward_ms": {"1": 2.5, "8": 9.0},
                                           "ceiling_rps": {"1": 400.0, "8": 875.0}}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    report.write_report(str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    [row] = lines_with(text, "| mlp | 2.30 | 8.00 | 1,000 | 32 |")
    assert "| 980 | 98.0% | 80.0% | n/a |" in row  # torchserve: 700 of its own 875
    assert ("- mlp: forward ms at batch 8 measured before the first server ran it and after "
            "each one: 7.90, 8.10, 10.0; each server's share is against the mean of the two "
            "around its own run (ceiling req/s: zerobatch 1,000, torchserve 875)") in text
