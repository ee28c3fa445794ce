"""The harness's arithmetic: overload figures from a load result, and the issue's targets
checked against a run's records (reached, missed, n/a when a server did not run)."""

from __future__ import annotations

import pytest

from benchmarks.harness import Plan, check_targets, overload_figures
from benchmarks.histogram import Histogram
from benchmarks.loadgen import LoadResult


def histogram(*values_us: int) -> Histogram:
    h = Histogram()
    for value in values_us:
        h.record(value)
    return h


def overload_result(ok: int, within: int, errors: dict[str, int],
                    by_key: dict[str, Histogram]) -> LoadResult:
    return LoadResult(driver="http", mode="open", concurrency=None, rate=100.0, duration_s=1.0,
                      sent=ok + sum(errors.values()), ok=ok, errors=errors,
                      latency=histogram(*[50_000] * ok), error_latency=Histogram(),
                      deadline_ms=100, within_deadline=within, error_latency_by_key=by_key)


def test_overload_figures_separate_refusals_from_late_answers():
    result = overload_result(
        ok=90, within=88, errors={"503": 100, "504": 10, "backlog": 5},
        by_key={"503": histogram(*[1_000] * 99, 3_000), "504": histogram(*[150_000] * 10)})
    figures = overload_figures(result)
    assert figures["offered"] == 200          # the 5 backlog arrivals never reached it
    assert figures["refused"] == 100
    assert figures["accepted"] == pytest.approx(100 / 200)
    assert figures["within_deadline_of_accepted"] == pytest.approx(88 / 100)
    # the 504s (150 ms) do not count as refusals
    assert figures["refusal_p99_ms"] == pytest.approx(1.0, rel=0.01)


def test_overload_figures_without_refusals():
    figures = overload_result(ok=10, within=10, errors={}, by_key={})
    assert overload_figures(figures)["refusal_p99_ms"] is None


def load(rps: float, p50_ms: float = 1.0) -> dict:
    return {"rps": rps, "latency": {"p50": p50_ms}}


def test_targets_are_checked_against_the_records():
    records = [
        {"scenario": "throughput", "workload": "echo", "server": "zerobatch", "transport": "http",
         "concurrency": 64, "result": load(10_000)},
        {"scenario": "throughput", "workload": "echo", "server": "torchserve",
         "transport": "http", "concurrency": 64, "result": load(1_800)},
        {"scenario": "ceiling", "workload": "mlp", "server": None,
         "forward_ms": {"1": 2.0, "8": 6.0}, "ceiling_rps": {"1": 500.0, "8": 1333.0}},
        {"scenario": "throughput", "workload": "mlp", "server": "zerobatch", "transport": "http",
         "concurrency": 32, "result": load(1_000)},
        {"scenario": "latency", "workload": "mlp", "server": "zerobatch", "transport": "http",
         "concurrency": 1, "result": load(300, p50_ms=2.5)},
        {"scenario": "startup", "workload": "echo", "server": "zerobatch", "startup_s": 0.5},
        {"scenario": "startup", "workload": "mlp", "server": "zerobatch", "startup_s": 2.5},
    ]
    targets = {t["figure"]: t for t in check_targets(records, Plan())}
    assert targets["echo, HTTP, concurrency 64: zerobatch vs torchserve req/s"]["reached"]
    litserve = targets["echo, HTTP, concurrency 64: zerobatch vs litserve req/s"]
    assert litserve["reached"] is None and litserve["measured"] == "n/a"  # it did not run
    share = targets["mlp, batch 8, 5 ms, concurrency 32: share of the batched ceiling"]
    assert share["reached"] is False and share["measured"].startswith("75.0%")
    assert targets["mlp, concurrency 1: p50 minus the batch-1 forward"]["reached"]
    assert targets["startup to the first prediction (echo)"]["reached"]
    assert not targets["startup to the first prediction (mlp)"]["reached"]


@pytest.mark.parametrize("option", ["--servers", "--workloads"])
def test_unknown_names_are_a_usage_error(option, capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["run", option, "nope"])
    assert exited.value.code == 2
    assert "unknown nope" in capsys.readouterr().err


def test_the_ceiling_is_the_mean_of_its_measurements_before_and_after():
    from benchmarks.harness import CASES, _ceiling_record

    before = {"forward_ms": {"1": 2.0, "8": 6.0}}
    after = {"forward_ms": {"1": 2.2, "8": 6.5}}
    record = _ceiling_record(CASES["mlp"], [before, after])
    assert record["forward_ms"] == pytest.approx({"1": 2.1, "8": 6.25})
    assert record["ceiling_rps"] == pytest.approx({"1": 1000 / 2.1, "8": 8000 / 6.25})
    assert record["measurements"] == [before["forward_ms"], after["forward_ms"]]
    assert _ceiling_record(CASES["mlp"], [before])["ceiling_rps"]["8"] == pytest.approx(8000 / 6)


def test_each_server_gets_the_ceiling_measured_around_its_own_run():
    """Measured before the first server and after each: a drift while a later server runs
    moves only that server's ceiling (and the mean of all)."""
    from benchmarks.harness import CASES, _ceiling_record

    measured = [{"forward_ms": {"1": 2.0, "8": 6.0}}, {"forward_ms": {"1": 2.0, "8": 6.0}},
                {"forward_ms": {"1": 3.0, "8": 10.0}}]
    record = _ceiling_record(CASES["mlp"], measured, ["zerobatch", "torchserve"])
    assert record["by_server"]["zerobatch"]["ceiling_rps"]["8"] == pytest.approx(8000 / 6)
    assert record["by_server"]["torchserve"]["forward_ms"] == pytest.approx({"1": 2.5, "8": 8.0})
    assert record["forward_ms"]["8"] == pytest.approx(22 / 3)
    assert "by_server" not in _ceiling_record(CASES["mlp"], measured[:1])


def test_the_targets_use_zerobatchs_own_ceiling_when_the_run_has_one():
    records = [
        {"scenario": "ceiling", "workload": "mlp", "server": None,
         "forward_ms": {"1": 3.0, "8": 8.0}, "ceiling_rps": {"1": 333.0, "8": 1000.0},
         "by_server": {"zerobatch": {"forward_ms": {"1": 2.0, "8": 6.0},
                                     "ceiling_rps": {"1": 500.0, "8": 1250.0}}}},
        {"scenario": "throughput", "workload": "mlp", "server": "zerobatch", "transport": "http",
         "concurrency": 32, "result": load(1_000)},
        {"scenario": "latency", "workload": "mlp", "server": "zerobatch", "transport": "http",
         "concurrency": 1, "result": load(300, p50_ms=3.5)},
    ]
    targets = {t["figure"]: t for t in check_targets(records, Plan())}
    share = targets["mlp, batch 8, 5 ms, concurrency 32: share of the batched ceiling"]
    assert share["measured"] == "80.0% (1,000 of 1,250 req/s)"  # not 100% of the mean's 1,000
    latency = targets["mlp, concurrency 1: p50 minus the batch-1 forward"]
    assert latency["reached"] is False and latency["measured"].startswith("1.50 ms")
