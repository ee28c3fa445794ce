"""The aggregator twins: every rule with exact numbers, on both twins, and the dispatcher.

Each example runs on the pure-Python twin (the specification) and on the compiled one; a
seeded random walk then drives both with the same operations and demands equal answers.
test_aggregator_hypothesis.py adds property-based sequences and invariants.
"""

from __future__ import annotations

import ast
import os
import random
import sys
from pathlib import Path

import pytest

from zerobatch.broker import _aggregator_py, aggregator
from zerobatch.errors import ConfigError

MAX_TIME_NS = _aggregator_py.MAX_TIME_NS
FAR_NS = 10**12  # a deadline no example reaches


def _compiled_class():
    try:
        return aggregator.load("compiled")
    except ConfigError as exc:
        pytest.skip(f"compiled aggregator not built: {exc}")


@pytest.fixture(params=["python", "compiled"])
def make(request):
    """The Aggregator class of one twin."""
    if request.param == "compiled":
        return _compiled_class()
    return aggregator.load("python")


def test_compiled_twin_loaded():
    """Fails when ZEROBATCH_REQUIRE_COMPILED=1 and the compiled twin silently did not build."""
    required = os.environ.get("ZEROBATCH_REQUIRE_COMPILED") == "1"
    try:
        compiled = aggregator.load("compiled")
    except ConfigError as exc:
        if required:
            pytest.fail(f"ZEROBATCH_REQUIRE_COMPILED=1 but {exc}")
        pytest.skip("compiled aggregator not built; set ZEROBATCH_REQUIRE_COMPILED=1 to make "
                    "this a failure")
    assert aggregator.load("auto") is compiled
    assert aggregator.implementation_name(compiled) == "compiled"
    assert aggregator.IMPLEMENTATION == "compiled"


# ---------------------------------------------------------------------- construction


@pytest.mark.parametrize("args, words", [
    ((0, 100, 10), "batch_size must be >= 1"),
    ((4, -1, 10), "max_batch_delay_ns must be within"),
    ((4, MAX_TIME_NS + 1, 10), "max_batch_delay_ns must be within"),
    ((4, 100, 3), "raise max_queue"),
    ((4, 100, _aggregator_py.MAX_QUEUE_LIMIT + 1), "lower max_queue"),
])
def test_constructor_rejects_bad_settings(make, args, words):
    with pytest.raises(ValueError, match=words):
        make(*args)


def test_settings_are_read_only_attributes(make):
    agg = make(batch_size=4, max_batch_delay_ns=100, max_queue=10, adaptive=False)
    assert (agg.batch_size, agg.max_batch_delay_ns, agg.max_queue, agg.adaptive) == (
        4, 100, 10, False)
    assert make(4, 100, 10).adaptive is True
    for name in ("batch_size", "max_batch_delay_ns", "max_queue", "adaptive"):
        with pytest.raises(AttributeError):
            setattr(agg, name, 1)
    assert repr(agg) == ("Aggregator(batch_size=4, max_batch_delay_ns=100, max_queue=10, "
                         "adaptive=False, waiting=0)")


def test_constants_agree_between_twins():
    compiled = sys.modules[_compiled_class().__module__]
    assert compiled.MAX_TIME_NS == _aggregator_py.MAX_TIME_NS == aggregator.MAX_TIME_NS
    assert compiled.MAX_QUEUE_LIMIT == _aggregator_py.MAX_QUEUE_LIMIT


# ---------------------------------------------------------------------- push


def test_queue_full_refuses_and_stores_nothing(make):
    agg = make(2, 1000, 2)
    assert agg.push(1, 0, FAR_NS) is True
    assert agg.push(2, 0, FAR_NS) is True
    assert agg.push(3, 0, FAR_NS) is False
    assert len(agg) == 2
    assert agg.drain() == [1, 2]
    with pytest.raises(ValueError, match="greater than the last pushed id 3"):
        agg.push(3, 0, FAR_NS)  # a refused push still counts for id order
    assert agg.push(4, 0, FAR_NS) is True
    assert agg.drain() == [4]


def test_request_ids_must_rise(make):
    agg = make(4, 100, 10)
    agg.push(5, 0, FAR_NS)
    for request_id in (5, 4, -1):
        with pytest.raises(ValueError, match="must be greater than the last pushed id 5"):
            agg.push(request_id, 0, FAR_NS)
    assert agg.push(6, 0, FAR_NS)
    assert len(agg) == 2


def test_request_ids_span_int64(make):
    agg = make(2, 100, 10)
    assert agg.push(-(2**63), 0, FAR_NS)
    assert agg.push(2**63 - 1, 0, FAR_NS)
    assert agg.poll(0, True) == ([], [-(2**63), 2**63 - 1])


@pytest.mark.parametrize("args, error", [
    ((1, -1, 10), ValueError),
    ((1, 0, -1), ValueError),
    ((1, MAX_TIME_NS + 1, 10), ValueError),
    ((1, 0, MAX_TIME_NS + 1), ValueError),
    ((1, 0.5, 10), TypeError),
    (("1", 0, 10), TypeError),
    ((2**63, 0, 10), OverflowError),
    ((1, 2**64, 10), OverflowError),
])
def test_push_rejects_bad_arguments(make, args, error):
    agg = make(4, 100, 10)
    with pytest.raises(error):
        agg.push(*args)
    assert len(agg) == 0
    assert agg.push(1, 0, 10)  # nothing was recorded, not even the id


@pytest.mark.parametrize("call", [
    lambda make: make(2.0, 0, 10),
    lambda make: make(2, 0.5, 10),
    lambda make: make(2, 0, 10.0),
    lambda make: make(2, 0, 10).poll(1.5, True),
    lambda make: make(2, 0, 10).next_wakeup_ns(1.0, False),
    lambda make: make(2, 0, 10).observe(1.0, 5),
    lambda make: make(2, 0, 10).observe(1, 5.0),
    lambda make: make(2, 0, 10).expected_run_ns(2.0),
], ids=["batch_size", "delay", "max_queue", "poll", "wakeup", "batch_len", "run_ns", "n"])
def test_floats_are_not_integers(make, call):
    with pytest.raises(TypeError):
        call(make)


def test_time_arguments_are_checked(make):
    agg = make(4, 100, 10)
    for call in (lambda: agg.poll(-1, True), lambda: agg.next_wakeup_ns(MAX_TIME_NS + 1, True)):
        with pytest.raises(ValueError, match="now_ns must be within"):
            call()
    with pytest.raises(OverflowError):
        agg.poll(2**63, True)
    assert agg.poll(MAX_TIME_NS, True) == ([], [])


# ---------------------------------------------------------------------- the dispatch rules


def test_rule1_full_batch_takes_earliest_deadlines_ties_by_push_order(make):
    agg = make(4, 1000, 10, adaptive=False)
    for request_id, deadline_ns in [(1, 500), (2, 300), (3, 400), (4, 300), (5, 200)]:
        agg.push(request_id, 0, deadline_ns)
    assert agg.next_wakeup_ns(0, True) == 0
    assert agg.poll(0, True) == ([], [5, 2, 4, 3])
    assert len(agg) == 1
    assert agg.next_wakeup_ns(0, True) == 500  # expiry: 0 + 1000 comes later
    assert agg.poll(0, True) == ([], [])


def test_no_batch_without_a_free_worker(make):
    agg = make(2, 100, 10)
    agg.push(1, 0, FAR_NS)
    agg.push(2, 0, FAR_NS)
    assert agg.poll(500, False) == ([], [])
    assert agg.next_wakeup_ns(500, False) == FAR_NS
    assert agg.poll(500, True) == ([], [1, 2])


def test_rule2_max_batch_delay_counts_from_the_oldest_push(make):
    agg = make(4, 100, 10, adaptive=False)
    agg.push(1, 10, FAR_NS)
    agg.push(2, 50, FAR_NS)
    assert agg.next_wakeup_ns(50, True) == 110
    assert agg.poll(109, True) == ([], [])
    assert agg.poll(110, False) == ([], [])
    assert agg.poll(110, True) == ([], [1, 2])


def test_rule2_oldest_is_the_earliest_push_time_not_the_first_push(make):
    agg = make(4, 1000, 10, adaptive=False)
    agg.push(1, 100, FAR_NS)
    agg.push(2, 50, FAR_NS)  # a push time earlier than the last
    assert agg.next_wakeup_ns(100, True) == 1050
    assert agg.poll(1049, True) == ([], [])
    assert agg.poll(1050, True) == ([], [1, 2])


def test_rule2_zero_delay_dispatches_at_once(make):
    agg = make(8, 0, 10, adaptive=False)
    agg.push(1, 7, FAR_NS)
    assert agg.next_wakeup_ns(7, True) == 7
    assert agg.poll(7, True) == ([], [1])


def test_rule3_dispatches_when_waiting_would_miss_the_earliest_deadline(make):
    agg = make(4, 1000, 10, adaptive=False)
    agg.observe(2, 80)
    agg.push(1, 0, 600)
    agg.push(2, 0, 500)
    assert agg.next_wakeup_ns(0, True) == 420
    assert agg.poll(419, True) == ([], [])
    assert agg.poll(420, True) == ([], [2, 1])


def test_rule4_adaptive_free_worker_takes_what_waits_at_once(make):
    agg = make(8, 1000, 100, adaptive=True)
    agg.push(1, 0, FAR_NS)
    assert agg.next_wakeup_ns(0, True) == 0
    assert agg.next_wakeup_ns(0, False) == FAR_NS  # busy workers: only expiry wakes
    assert agg.poll(0, False) == ([], [])
    agg.push(2, 10, FAR_NS)
    agg.push(3, 20, 500)
    assert agg.poll(20, True) == ([], [3, 1, 2])  # earliest deadline first
    assert agg.next_wakeup_ns(20, True) == -1


def test_rule4_adaptive_still_caps_batches_at_batch_size(make):
    agg = make(2, 1000, 100, adaptive=True)
    for request_id in range(1, 6):
        agg.push(request_id, 0, FAR_NS)
    assert [agg.poll(1, True)[1] for _ in range(4)] == [[1, 2], [3, 4], [5], []]


def test_rule4_is_off_without_adaptive(make):
    agg = make(8, 1000, 100, adaptive=False)
    agg.push(1, 0, FAR_NS)
    agg.push(2, 10, FAR_NS)
    assert agg.next_wakeup_ns(10, True) == 1000
    assert agg.poll(999, True) == ([], [])
    assert agg.poll(1000, True) == ([], [1, 2])


# ---------------------------------------------------------------------- expiry


def test_expiry_removes_and_orders_by_deadline_then_push_order(make):
    agg = make(8, 1000, 10)
    for request_id, deadline_ns in [(1, 100), (2, 50), (3, 100), (4, 200)]:
        agg.push(request_id, 0, deadline_ns)
    assert agg.next_wakeup_ns(0, False) == 50
    assert agg.poll(100, False) == ([2, 1, 3], [])
    assert len(agg) == 1
    assert agg.next_wakeup_ns(150, False) == 200
    assert agg.next_wakeup_ns(250, False) == 250  # overdue: poll now


def test_expired_requests_never_join_a_batch(make):
    agg = make(2, 1000, 10, adaptive=False)
    for request_id, deadline_ns in [(1, 10), (2, 20), (3, 30)]:
        agg.push(request_id, 0, deadline_ns)
    assert agg.poll(20, True) == ([1, 2], [])
    assert agg.poll(30, True) == ([3], [])
    assert agg.next_wakeup_ns(30, True) == -1


def test_a_push_already_past_its_deadline_expires_at_the_next_poll(make):
    agg = make(1, 1000, 10)
    agg.push(1, 100, 40)
    assert agg.next_wakeup_ns(100, True) == 100
    assert agg.poll(100, True) == ([1], [])


# ---------------------------------------------------------------------- run-time estimates


def test_observe_keeps_an_ewma_per_size_and_clamps_negative_runs(make):
    agg = make(8, 1000, 10)
    agg.observe(3, 300)
    assert agg.expected_run_ns(3) == 300
    agg.observe(3, 380)
    assert agg.expected_run_ns(3) == (7 * 300 + 380) >> 3 == 310
    agg.observe(3, -50)
    assert agg.expected_run_ns(3) == (7 * 310) >> 3 == 271
    agg.observe(5, -1)
    assert agg.expected_run_ns(5) == 0


def test_expected_run_ns_falls_back_to_larger_then_smaller_sizes(make):
    agg = make(8, 1000, 10)
    assert [agg.expected_run_ns(n) for n in (1, 4, 8, 100)] == [0, 0, 0, 0]
    agg.observe(3, 300)
    agg.observe(6, 600)
    assert [agg.expected_run_ns(n) for n in range(1, 10)] == [
        300, 300, 300, 600, 600, 600, 600, 600, 600]
    assert agg.expected_run_ns(10**9) == 600
    agg.observe(8, 800)
    assert [agg.expected_run_ns(n) for n in (7, 8, 9)] == [800, 800, 800]
    agg.observe(1, 100)
    assert [agg.expected_run_ns(n) for n in (1, 2, 4)] == [100, 300, 600]


@pytest.mark.parametrize("batch_len", [0, -1, 9])
def test_observe_rejects_sizes_outside_the_batch(make, batch_len):
    agg = make(8, 1000, 10)
    with pytest.raises(ValueError, match="batch_len must be within 1..8"):
        agg.observe(batch_len, 100)


def test_expected_run_ns_rejects_empty_batches(make):
    with pytest.raises(ValueError, match="n must be >= 1"):
        make(8, 1000, 10).expected_run_ns(0)


# ---------------------------------------------------------------------- wake-ups and drain


def test_next_wakeup_is_minus_one_when_nothing_waits(make):
    agg = make(4, 100, 10, adaptive=False)
    assert agg.next_wakeup_ns(0, True) == -1
    agg.push(1, 0, 50)
    assert agg.next_wakeup_ns(0, True) == 50
    assert agg.drain() == [1]
    assert agg.next_wakeup_ns(0, True) == -1


def test_next_wakeup_takes_the_minimum_trigger(make):
    agg = make(4, 100, 10, adaptive=False)
    agg.observe(1, 30)
    agg.push(1, 0, 120)
    assert agg.next_wakeup_ns(0, False) == 120  # busy worker: only expiry
    assert agg.next_wakeup_ns(0, True) == 90  # rule 3: 120 - 30
    agg.observe(1, 0)  # estimate (7*30 + 0) >> 3 = 26
    assert agg.next_wakeup_ns(0, True) == 94
    assert agg.next_wakeup_ns(95, True) == 95  # overdue: poll now


def test_drain_returns_everything_in_deadline_order(make):
    agg = make(4, 100, 10)
    for request_id, deadline_ns in [(1, 30), (2, 10), (3, 30), (4, 20)]:
        agg.push(request_id, 0, deadline_ns)
    assert agg.drain() == [2, 4, 1, 3]
    assert len(agg) == 0
    assert agg.drain() == []
    assert agg.poll(100, True) == ([], [])


def test_queue_reuses_its_room_after_batches(make):
    agg = make(3, 0, 3)
    request_id = 0
    for round_number in range(50):
        now_ns = round_number * 10
        for _ in range(3):
            request_id += 1
            assert agg.push(request_id, now_ns, now_ns + 5)
        assert not agg.push(request_id + 1, now_ns, now_ns + 5)
        request_id += 1
        assert agg.poll(now_ns, True) == ([], [request_id - 3, request_id - 2, request_id - 1])


# ---------------------------------------------------------------------- differential


def _random_walk(cls, seed: int, steps: int) -> list:
    """Drive one twin with a seeded random operation sequence; return every answer."""
    rng = random.Random(seed)
    batch_size = rng.randint(1, 8)
    agg = cls(batch_size, rng.choice([0, 5, 50, 500, 3000]), batch_size + rng.randint(0, 12),
              rng.random() < 0.7)
    now_ns, request_id, answers = 1000, 0, []
    for _ in range(steps):
        now_ns += rng.choice([0, 0, 1, 3, 10, 40, 200])
        op = rng.random()
        try:
            if op < 0.45:
                request_id += rng.choice([1, 1, 1, 2, 0])
                push_ns = max(0, now_ns - rng.choice([0, 0, 0, 5, 50]))
                deadline_ns = max(0, now_ns + rng.choice([rng.randint(-20, 600), 100, 10_000]))
                answers.append(agg.push(request_id, push_ns, deadline_ns))
            elif op < 0.8:
                answers.append(agg.poll(now_ns, rng.random() < 0.6))
            elif op < 0.9:
                answers.append(agg.next_wakeup_ns(now_ns, rng.random() < 0.6))
            elif op < 0.97:
                answers.append(agg.observe(rng.randint(0, batch_size + 1),
                                           rng.randint(-10, 400)))
                answers.append(agg.expected_run_ns(rng.randint(1, batch_size + 2)))
            else:
                answers.append(agg.drain())
        except ValueError as exc:
            answers.append(("ValueError", str(exc)))
        answers.append(len(agg))
    answers.append(agg.drain())
    return answers


@pytest.mark.parametrize("seed", range(40))
def test_twins_agree_on_seeded_random_walks(seed):
    compiled = _compiled_class()
    assert _random_walk(compiled, seed, 400) == _random_walk(aggregator.load("python"), seed, 400)


# ---------------------------------------------------------------------- the dispatcher


def test_load_python_and_names():
    cls = aggregator.load("python")
    assert cls is _aggregator_py.Aggregator
    assert aggregator.implementation_name(cls) == "python"
    assert aggregator.implementation_name(cls(1, 0, 1)) == "python"
    with pytest.raises(TypeError):
        aggregator.implementation_name(dict)


def test_load_rejects_unknown_preferences():
    with pytest.raises(ConfigError, match="must be one of auto, compiled, python"):
        aggregator.load("fast")


def test_load_without_the_compiled_twin(monkeypatch):
    monkeypatch.setitem(sys.modules, "zerobatch.broker._aggregator", None)  # import now fails
    assert aggregator.load("auto") is _aggregator_py.Aggregator
    with pytest.raises(ConfigError, match="Cython and a C compiler"):
        aggregator.load("compiled")


def test_dispatcher_reads_no_environment():
    tree = ast.parse(Path(aggregator.__file__).read_text())
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not names & {"environ", "getenv", "environb"}
