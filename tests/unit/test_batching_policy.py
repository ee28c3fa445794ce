"""The broker-side batching policy, rule by rule: each test sets up a queue state (an
aggregator with requests waiting, run times learned, workers busy or idle) and asserts the
policy's decision at given now_ns values. Both aggregator twins run every test."""

from __future__ import annotations

import itertools
import logging

import pytest

from zerobatch.broker import aggregator
from zerobatch.broker.batching_policy import (
    ADMISSION_SLACK_DIVISOR,
    GROUP_RUN_BUDGET_NS,
    MAX_GROUP_BATCHES,
    BatchingPolicy,
    Refusals,
)
from zerobatch.errors import DeadlineUnreachable, QueueFull

US = 1_000
MS = 1_000_000
S = 1_000_000_000
LATE = DeadlineUnreachable.code
FULL = QueueFull.code


@pytest.fixture(params=["python", "compiled"])
def twin(request) -> type:
    try:
        return aggregator.load(request.param)
    except Exception as exc:  # the compiled twin may be absent in a bare checkout
        pytest.skip(f"{request.param} aggregator unavailable: {exc}")


@pytest.fixture
def make(twin):
    def make(batch_size=4, max_batch_delay_ms=5, adaptive=True, refuses_late=True,
             max_queue=64) -> BatchingPolicy:
        queue = twin(batch_size, max_batch_delay_ms * MS, max_queue, adaptive)
        return BatchingPolicy(queue, "m/1.0", refuses_late=refuses_late)
    return make


_request_ids = itertools.count(1)


def wait(policy: BatchingPolicy, count: int, now_ns: int = 0, deadline_ns: int = S) -> None:
    """Queue `count` more requests, arrived at now_ns, due at deadline_ns."""
    for _ in range(count):
        assert policy.aggregator.push(next(_request_ids), now_ns, deadline_ns)
        policy.arrived()


def learn(policy: BatchingPolicy, size: int, *runs_ns: int) -> None:
    """Answer batches of `size`, one per run time, with no callers expected back."""
    for run_ns in runs_ns:
        policy.answered([size], run_ns, 0)
    policy.returning = 0


# ---------------------------------------------------------------------- hold for returns

def test_a_free_worker_waits_for_returning_callers_until_the_window_ends(make):
    policy = make(batch_size=4, max_batch_delay_ms=5)
    wait(policy, 2)
    policy.answered([1], 1 * MS, 2 * MS)  # one caller expected back until 7 ms
    assert policy.holds(2 * MS) and policy.holds(6 * MS + 999_999)
    assert not policy.worker_free(1, 3 * MS)
    assert policy.next_wakeup_ns(3 * MS, idle_workers=1) == 7 * MS
    assert not policy.holds(7 * MS)
    assert policy.worker_free(1, 7 * MS)
    assert policy.next_wakeup_ns(7 * MS, idle_workers=1) == 7 * MS  # adaptive: poll now


def test_each_arrival_counts_one_returning_caller_back(make):
    policy = make(batch_size=8)
    wait(policy, 2)
    policy.answered([2], 1 * MS, 1 * MS)
    wait(policy, 1, 1 * MS)
    assert policy.holds(1 * MS)  # one caller still on its way
    wait(policy, 1, 1 * MS)
    assert not policy.holds(1 * MS)  # all back: the batch goes as it is


def test_an_answer_after_the_window_forgets_the_callers_that_never_came(make):
    policy = make(batch_size=8, max_batch_delay_ms=5)
    wait(policy, 1)
    policy.answered([3], 1 * MS, 0)
    policy.answered([1], 1 * MS, 10 * MS)  # the window of the first answer has closed
    assert policy.returning == 1


@pytest.mark.parametrize("case", ["nothing waits", "a full batch waits", "full_delay",
                                  "no batch delay", "no time before the deadline"])
def test_a_free_worker_is_never_held(make, case):
    policy = make(batch_size=4, max_batch_delay_ms=0 if case == "no batch delay" else 5,
                  adaptive=case != "full_delay")
    if case == "a full batch waits":
        wait(policy, 4)
    elif case == "no time before the deadline":
        learn(policy, 1, 2 * MS)
        wait(policy, 1, deadline_ns=8 * MS)  # 8 ms - 2 ms of run is not after the 6 ms hold
    elif case != "nothing waits":
        wait(policy, 1)
    policy.answered([1], 2 * MS, 1 * MS)  # a caller expected back until 6 ms
    assert not policy.holds(1 * MS)
    assert policy.worker_free(1, 1 * MS)


def test_no_worker_is_free_without_an_idle_one(make):
    policy = make()
    wait(policy, 1)
    assert not policy.worker_free(0, 0)


# ---------------------------------------------------------------------- send ahead

def test_a_full_batch_goes_ahead_while_the_earliest_deadline_is_two_runs_away(make):
    policy = make(batch_size=2)
    learn(policy, 2, 10 * MS)
    wait(policy, 1, deadline_ns=100 * MS)
    assert not policy.may_send_ahead(0)  # only full batches go ahead
    wait(policy, 1, deadline_ns=100 * MS)
    assert policy.may_send_ahead(0)
    assert policy.may_send_ahead(80 * MS - 1)
    assert not policy.may_send_ahead(80 * MS)  # 20 ms left: two runs


# ---------------------------------------------------------------------- grouping

def test_full_batches_join_a_message_within_the_run_budget(make):
    policy = make(batch_size=2)
    learn(policy, 2, 300 * US)  # three batches fit in 1 ms
    wait(policy, 8)
    assert GROUP_RUN_BUDGET_NS // (300 * US) == 3
    assert policy.may_grow_group(0, 2, 1)
    assert policy.may_grow_group(0, 2, 2)
    assert not policy.may_grow_group(0, 2, 3)
    assert not policy.may_grow_group(0, 1, 1)  # after a partial first batch: alone


def test_no_group_before_a_run_time_is_known_or_without_a_full_batch_waiting(make):
    policy = make(batch_size=2)
    wait(policy, 4)
    assert not policy.may_grow_group(0, 2, 1)
    learn(policy, 2, 100 * US)
    assert policy.may_grow_group(0, 2, 1)
    policy.aggregator.poll(0, True)
    policy.aggregator.poll(0, True)
    wait(policy, 1)
    assert not policy.may_grow_group(0, 2, 1)  # one request waits: no full batch to join


def test_a_group_never_holds_more_than_max_group_batches(make):
    policy = make(batch_size=1)
    learn(policy, 1, 1 * US)
    wait(policy, 40)
    assert policy.may_grow_group(0, 1, MAX_GROUP_BATCHES - 1)
    assert not policy.may_grow_group(0, 1, MAX_GROUP_BATCHES)


def test_a_group_stops_before_it_could_make_a_waiting_deadline_pass(make):
    policy = make(batch_size=2)
    learn(policy, 2, 100 * US)
    wait(policy, 6, deadline_ns=1 * MS)
    # a group of k + 1 batches must leave the earliest deadline 2 (k + 1) runs away
    assert policy.may_grow_group(0, 2, 1)  # 1 ms > 0.4 ms
    assert policy.may_grow_group(500 * US, 2, 1)  # 0.5 ms > 0.4 ms
    assert not policy.may_grow_group(600 * US, 2, 1)  # 0.4 ms: no more
    assert not policy.may_grow_group(500 * US, 2, 2)  # 0.5 ms < 0.6 ms


# ---------------------------------------------------------------------- admission

@pytest.mark.parametrize("learned_runs_ns", [(), (1_800 * US,), (10 * S,), (10 * S, 3 * MS)],
                         ids=["cold", "warm", "huge", "huge then warm"])
@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "full_delay"])
def test_nothing_waiting_and_an_idle_worker_is_always_admitted(make, learned_runs_ns,
                                                                adaptive):
    policy = make(batch_size=4, max_batch_delay_ms=100, adaptive=adaptive)
    learn(policy, 1, *learned_runs_ns)
    for now_ns in (0, 1 * S, 10 * S):
        assert policy.lateness_ns(now_ns, now_ns + 1 * MS, workers=1, idle_workers=1,
                                  sent_ahead=False) == 0
        assert policy.lateness_ns(now_ns, now_ns + 1 * MS, workers=2, idle_workers=1,
                                  sent_ahead=True) == 0


def test_nothing_is_refused_before_a_run_time_is_known_or_without_workers(make):
    policy = make(batch_size=2)
    wait(policy, 50)
    assert policy.lateness_ns(0, 1, workers=1, idle_workers=0, sent_ahead=True) == 0
    learn(policy, 2, 10 * MS)
    assert policy.lateness_ns(0, 1, workers=0, idle_workers=0, sent_ahead=False) == 0


def test_admission_queue_never_refuses(make):
    policy = make(batch_size=2, refuses_late=False)
    learn(policy, 2, 10 * MS)
    wait(policy, 50)
    assert policy.lateness_ns(0, 1, workers=1, idle_workers=0, sent_ahead=True) == 0


def test_an_overloaded_queue_refuses_a_short_deadline(make):
    policy = make(batch_size=2)
    learn(policy, 2, 10 * MS)
    wait(policy, 10)
    # the running batch, then 10 waiting in 5 rounds, then its own: 70 ms, 35 ms of slack
    wait_ns = (1 + 10 // 2) * 10 * MS + 10 * MS
    assert ADMISSION_SLACK_DIVISOR == 2
    assert policy.lateness_ns(0, 30 * MS, workers=1, idle_workers=0,
                              sent_ahead=False) == wait_ns * 3 // 2 - 30 * MS
    assert policy.lateness_ns(5 * MS, 35 * MS, workers=1, idle_workers=0,
                              sent_ahead=False) == 75 * MS  # the same at any now_ns
    assert policy.lateness_ns(0, 105 * MS, workers=1, idle_workers=0, sent_ahead=False) == 0
    # two workers: the waiting take 2 rounds (4 a round), then the running one and its own;
    # a batch sent ahead adds a round
    assert policy.lateness_ns(0, 30 * MS, workers=2, idle_workers=0,
                              sent_ahead=False) == (2 + 1 + 1) * 10 * MS * 3 // 2 - 30 * MS
    assert policy.lateness_ns(0, 30 * MS, workers=2, idle_workers=0,
                              sent_ahead=True) == (2 + 1 + 1 + 1) * 10 * MS * 3 // 2 - 30 * MS


def test_a_busy_worker_counts_one_round_even_with_nothing_waiting(make):
    policy = make(batch_size=1)
    learn(policy, 1, 100 * MS)
    assert policy.lateness_ns(0, 300 * MS, workers=1, idle_workers=0, sent_ahead=False) == 0
    assert policy.lateness_ns(0, 299 * MS, workers=1, idle_workers=0,
                              sent_ahead=False) == 1 * MS


def test_requests_waiting_for_a_batch_to_fill_are_counted_on_an_idle_worker(make):
    """full_delay: an idle worker while a partial batch fills. The batch delay is not
    counted (rule 3 sends the batch in time for its deadline); the batches ahead are."""
    policy = make(batch_size=2, max_batch_delay_ms=100, adaptive=False)
    learn(policy, 2, 10 * MS)
    wait(policy, 1)
    assert policy.lateness_ns(0, 15 * MS, workers=1, idle_workers=1, sent_ahead=False) == 0
    wait(policy, 3)
    assert policy.lateness_ns(0, 15 * MS, workers=1, idle_workers=1,
                              sent_ahead=False) == 30 * MS * 3 // 2 - 15 * MS


def test_a_faster_last_run_replaces_a_cold_estimate_and_a_slower_one_does_not(make):
    policy = make(batch_size=1)
    learn(policy, 1, 400 * MS, 2 * MS)  # a cold first batch, then a warm one
    assert policy.aggregator.expected_run_ns(1) > 300 * MS  # the estimate still remembers
    assert policy.lateness_ns(0, 500 * MS, workers=1, idle_workers=0, sent_ahead=True) == 0
    policy = make(batch_size=1)
    learn(policy, 1, 10 * MS, 10 * MS, 100 * MS)  # a stall: the estimate's smoothing counts
    estimate_ns = policy.aggregator.expected_run_ns(1)
    assert estimate_ns < 100 * MS
    assert policy.lateness_ns(0, 0, workers=1, idle_workers=0,
                              sent_ahead=False) == 2 * estimate_ns * 3 // 2


# ---------------------------------------------------------------------- refusals

def test_refusals_are_counted_by_reason(make):
    policy = make()
    for now_ns in (0, 1 * MS, 2 * MS):
        policy.refusals.add(LATE, now_ns)
    policy.refusals.add(FULL, 3 * MS)
    assert policy.refusals.counts == {LATE: 3, FULL: 1}


def test_refusals_are_logged_as_one_summary_line_per_interval(caplog):
    refusals = Refusals("m/1.0", interval_ns=10 * S)
    with caplog.at_level(logging.INFO, logger="zerobatch.broker"):
        refusals.add(LATE, 1 * S)  # the first refusal is logged at once
        assert [r.getMessage() for r in caplog.records] == [
            "model m/1.0 refused 1 request in 0.0 s: 1 deadline_unreachable (the queue "
            "ahead would answer them after their deadline)"]
        assert refusals.next_line_ns() == -1
        caplog.clear()
        for now_ns in (2 * S, 3 * S, 4 * S):
            refusals.add(LATE, now_ns)
        refusals.add(FULL, 5 * S)
        refusals.log_due(10 * S)
        assert caplog.records == []  # at most one line in 10 s
        assert refusals.next_line_ns() == 11 * S
        refusals.log_due(11 * S)
        (record,) = caplog.records
        assert record.levelno == logging.INFO
        assert record.getMessage() == (
            "model m/1.0 refused 4 requests in 9.0 s: 3 deadline_unreachable (the queue ahead "
            "would answer them after their deadline); 1 queue_full (max_queue requests "
            "waited)")
        caplog.clear()
        refusals.log_due(30 * S)
        assert caplog.records == []  # nothing new: no line
        assert refusals.counts == {LATE: 4, FULL: 1}


def test_a_due_refusal_summary_wakes_the_broker(make):
    policy = make()
    policy.refusals.add(FULL, 0)
    assert policy.next_wakeup_ns(1 * S, idle_workers=1) == -1  # logged at once: nothing due
    policy.refusals.add(FULL, 2 * S)
    assert policy.next_wakeup_ns(3 * S, idle_workers=1) == policy.refusals.interval_ns
