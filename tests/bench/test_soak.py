"""benchmarks.soak's arithmetic and report, on made-up samples (no server, no sockets)."""

from __future__ import annotations

import pytest

from benchmarks import soak


def test_rss_is_read_from_a_proc_status_text():
    text = "Name:\tpython\nVmPeak:\t  99999 kB\nVmRSS:\t   30712 kB\nRssAnon:\t 1 kB\n"
    assert soak.parse_rss_kb(text) == 30712
    assert soak.parse_rss_kb("Name:\tkthreadd\nState:\tS (sleeping)\n") is None


def test_growth_is_measured_from_the_end_of_the_warm_up():
    samples = [soak.Sample(0.0, {1: 10 * 1024, 2: 50 * 1024}),
               soak.Sample(5.0, {1: 20 * 1024, 2: 50 * 1024, 3: 8 * 1024}),
               soak.Sample(10.0, {1: 22 * 1024, 2: 60 * 1024}),
               soak.Sample(15.0, {1: 24 * 1024, 2: 60 * 1024})]
    labels = {1: "worker echo@1.0#0.1", 2: "broker", 3: "frontend"}
    rows = {row["pid"]: row for row in soak.growth(samples, labels, warmup_s=5.0)}
    assert [row["process"] for row in soak.growth(samples, labels, 5.0)] == [
        "broker", "worker echo@1.0#0.1", "frontend"]
    worker = rows[1]  # 20 MB when the warm-up ended, 24 MB at the end
    assert (worker["rss_warm_mb"], worker["rss_end_mb"]) == (20.0, 24.0)
    assert (worker["growth_mb"], worker["growth_pct"]) == (4.0, 20.0)
    assert worker["slope_mb_per_h"] == pytest.approx(0.4 * 3600)  # 4 MB in 10 s
    assert worker["rss_max_mb"] == 24.0 and worker["whole_run"]
    assert not worker["suspect"]  # 20%, but not more than SUSPECT_GROWTH_MB
    broker = rows[2]
    assert (broker["growth_mb"], broker["growth_pct"]) == (10.0, 20.0) and broker["suspect"]
    gone = rows[3]  # sampled once, then it exited
    assert gone["whole_run"] is False and gone["growth_mb"] == 0.0
    assert gone["slope_mb_per_h"] is None


def test_outcomes_are_split_into_served_and_unexpected():
    counts = {"http echo_json": {"ok": 90, "503": 2},
              "http not_found": {"404": 10},
              "zmq burst": {"ok": 5, "QueueFull": 7},
              "zmq echo": {"ok": 50, "WorkerLost": 1}}
    summary = soak.summarize_outcomes(counts)
    assert summary["sent"] == {"http": 102, "zmq": 63}
    assert summary["served"] == {"http": 90, "zmq": 55}
    assert summary["unexpected"] == {"http echo_json": {"503": 2}, "zmq echo": {"WorkerLost": 1}}
    rows = soak.growth([soak.Sample(0.0, {7: 1024}), soak.Sample(2.0, {7: 2048})],
                       {7: "broker"}, 1.0)
    report = soak.format_report(rows, summary, duration_s=2.0, warmup_s=1.0)
    assert "UNEXPECTED outcomes: http echo_json: 503 2; zmq echo: WorkerLost 1" in report
    assert "165 sent, 145 served" in report


def test_the_warm_up_and_the_sampling_follow_the_duration():
    parser = soak.build_parser()
    assert soak.plan(parser.parse_args([])) == (60.0, 5.0)  # 600 s: 10%, samples every 5 s
    assert soak.plan(parser.parse_args(["--duration", "30"])) == (3.0, 1.5)
    assert soak.plan(parser.parse_args(["--duration", "30", "--warmup", "10",
                                        "--sample-every", "2"])) == (10.0, 2.0)
    with pytest.raises(ValueError, match="shorter than the run"):
        soak.plan(parser.parse_args(["--duration", "30", "--warmup", "30"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--duration", "0"])
