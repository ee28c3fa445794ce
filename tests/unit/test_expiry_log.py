"""Requests that expire in a model's queue (answered deadline_exceeded) are counted and logged
at INFO as a summary line per model per interval, never a line each (issue 18)."""

from __future__ import annotations

import logging

from tests.support.broker_core import MS, add, errors, request, take_front
from zerobatch.broker.batching_policy import REFUSAL_LOG_INTERVAL_NS, Refusals
from zerobatch.errors import QueueFull

S = 1_000_000_000


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "zerobatch.broker"]


def test_expirations_are_summarized_once_per_interval(caplog):
    refusals = Refusals("m/1.0", interval_ns=10 * S)
    with caplog.at_level(logging.INFO, logger="zerobatch.broker"):
        refusals.add_expired(3, 1 * S)  # the first ones are logged at once
        assert messages(caplog) == [
            "model m/1.0: 3 requests expired in the queue in 0.0 s: deadline_exceeded (their "
            "deadline passed before they reached a worker)"]
        assert caplog.records[0].levelno == logging.INFO
        assert refusals.next_line_ns() == -1
        caplog.clear()
        refusals.add_expired(1, 2 * S)
        refusals.add_expired(4, 5 * S)
        refusals.log_due(10 * S)
        assert messages(caplog) == []  # at most one line in 10 s
        assert refusals.next_line_ns() == 11 * S
        refusals.log_due(11 * S)
        assert messages(caplog) == [
            "model m/1.0: 5 requests expired in the queue in 9.0 s: deadline_exceeded (their "
            "deadline passed before they reached a worker)"]
        caplog.clear()
        refusals.log_due(40 * S)
        assert messages(caplog) == []  # nothing new: no line
    assert refusals.expired == 8


def test_expirations_and_refusals_share_the_interval_in_lines_of_their_own(caplog):
    refusals = Refusals("m/1.0", interval_ns=10 * S)
    with caplog.at_level(logging.INFO, logger="zerobatch.broker"):
        refusals.add_expired(1, 0)
        refusals.add(QueueFull.code, 1 * S)
        refusals.add_expired(1, 2 * S)
        assert len(messages(caplog)) == 1
        refusals.log_due(10 * S)
        assert messages(caplog)[1:] == [
            "model m/1.0: 1 request expired in the queue in 8.0 s: deadline_exceeded (their "
            "deadline passed before they reached a worker)",
            "model m/1.0 refused 1 request in 9.0 s: 1 queue_full (max_queue requests waited)"]


def test_the_broker_logs_expired_requests_as_a_summary(core, caplog):
    add(core, max_queue=100)
    with caplog.at_level(logging.INFO, logger="zerobatch.broker"):
        for i in range(3):
            request(core, b"a%d" % i, 0, timeout_ms=10)
        core.on_tick(10 * MS)
        assert errors(take_front(core)) == [(b"a%d" % i, "deadline_exceeded")
                                            for i in range(3)]
        assert [m for m in messages(caplog) if "expired" in m] == [
            "model echo/1.0: 3 requests expired in the queue in 0.0 s: deadline_exceeded "
            "(their deadline passed before they reached a worker)"]
        caplog.clear()
        # a stream of expirations within the interval: answered each, logged not at all ...
        for i in range(40):
            now_ns = 1 * S + i * 100 * MS
            request(core, b"b%d" % i, now_ns, timeout_ms=10)
            core.on_tick(now_ns + 10 * MS)
        assert len(errors(take_front(core))) == 40
        assert messages(caplog) == []
        # ... until the interval has passed: the summary due sets the model's next wakeup
        due_ns = 10 * MS + REFUSAL_LOG_INTERVAL_NS
        assert core.find_model("echo", None).policy.next_wakeup_ns(5 * S, 0) == due_ns
        core.on_tick(due_ns - 1)
        assert messages(caplog) == []
        core.on_tick(due_ns)
    assert [m for m in messages(caplog) if "expired" in m] == [
        "model echo/1.0: 40 requests expired in the queue in 9.0 s: deadline_exceeded "
        "(their deadline passed before they reached a worker)"]
