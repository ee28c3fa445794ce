"""broker/sequences.py: pinning, order, one request in flight, batching across sequences,
bounds, expiry (the clock passed in), the end header, lost workers; TorchServe's rules by
default, and zerobatch's stricter ones (`strict`, --zerobatch-answers)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerobatch.broker.sequences import (
    ENDED,
    EXPIRED,
    LOST,
    QUEUE_FULL,
    TOO_MANY,
    SequenceRefused,
    Sequences,
    refusal_error,
)
from zerobatch.errors import BadRequest, QueueFull, WorkerLost

MS = 1_000_000
FAR = 10**15  # a deadline that never passes in these tests


def book(**overrides) -> Sequences:
    counter = itertools.count(1)
    settings = dict(batch_size=4, max_sequences=8, max_queued=10, max_idle_ns=100 * MS,
                    new_id=lambda: f"made-{next(counter)}")
    settings.update(overrides)
    return Sequences(**settings)


def admit(seqs: Sequences, sequence_id, request_id, now_ns=0, *, ends=False,
          deadline_ns=FAR):
    return seqs.admit(sequence_id, request_id, deadline_ns, ends, now_ns)


def refused_reason(seqs: Sequences, sequence_id, request_id, now_ns=0, **kw) -> str:
    with pytest.raises(SequenceRefused) as caught:
        admit(seqs, sequence_id, request_id, now_ns, **kw)
    return caught.value.reason


def test_a_request_without_an_id_starts_a_sequence_the_broker_names():
    seqs = book()
    assert admit(seqs, None, 1) == ("made-1", True)
    assert admit(seqs, "made-1", 2) == ("made-1", False)
    assert admit(seqs, "client-chose-this", 3) == ("client-chose-this", False)
    assert seqs.open_count == 2 and len(seqs) == 3


def test_one_request_of_a_sequence_in_flight_and_in_arrival_order():
    seqs = book()
    for request_id in (1, 2, 3):
        admit(seqs, "a", request_id)
    assert seqs.next_batch("w1", 1) == [1]
    assert seqs.next_batch("w1", 1) == []  # busy
    assert seqs.answered("w1", 5 * MS) == ["a"]
    assert seqs.next_batch("w1", 1) == [2]
    seqs.answered("w1", 6 * MS)
    assert seqs.next_batch("w1", 1) == [3]


def test_a_sequence_stays_on_the_worker_that_ran_its_first_request():
    seqs = book()
    admit(seqs, "a", 1)
    assert seqs.next_batch("w1", 2) == [1]
    admit(seqs, "a", 2)
    assert seqs.next_batch("w2", 2) == []  # w2 is free, but a's state is in w1
    assert seqs.answered("w1", 0) == ["a"]
    assert seqs.next_batch("w2", 2) == []
    assert seqs.next_batch("w1", 2) == [2]


def test_a_batch_holds_one_request_per_sequence_up_to_batch_size():
    seqs = book(batch_size=4)
    request_ids = itertools.count(1)
    for sequence_id in "abcde":
        admit(seqs, sequence_id, next(request_ids))
        admit(seqs, sequence_id, next(request_ids))
    # a=1,2 b=3,4 c=5,6 d=7,8 e=9,10: the first of four sequences, oldest first
    assert seqs.next_batch("w1", 1) == [1, 3, 5, 7]
    assert seqs.running_ids("w1") == ["a", "b", "c", "d"]
    seqs.answered("w1", 0)
    assert seqs.next_batch("w1", 1) == [2, 4, 6, 8]
    seqs.answered("w1", 0)
    assert seqs.next_batch("w1", 1) == [9]
    seqs.answered("w1", 0)
    assert seqs.next_batch("w1", 1) == [10]


def test_new_sequences_spread_over_the_workers():
    seqs = book(batch_size=4)
    for request_id, sequence_id in enumerate("abcd", 1):
        admit(seqs, sequence_id, request_id)
    assert seqs.next_batch("w1", 2) == [1, 2]
    assert seqs.next_batch("w2", 2) == [3, 4]


def test_a_sequence_holds_one_running_and_max_queued_waiting():
    seqs = book(max_queued=2)
    for request_id in (1, 2, 3):
        admit(seqs, "a", request_id)
    assert refused_reason(seqs, "a", 4) == "queue_full"
    seqs.next_batch("w1", 1)
    assert refused_reason(seqs, "a", 4) == "queue_full"  # 1 running, 2 waiting
    seqs.answered("w1", 0)
    admit(seqs, "a", 4)


def test_at_most_max_sequences_are_open():
    seqs = book(max_sequences=2)
    admit(seqs, "a", 1)
    admit(seqs, None, 2)
    assert refused_reason(seqs, "c", 3) == "too_many"
    assert refused_reason(seqs, None, 4) == "too_many"
    admit(seqs, "a", 5)  # an open one still takes requests


def test_an_idle_sequence_expires_after_max_idle_and_is_refused_when_strict():
    seqs = book(max_idle_ns=100 * MS, strict=True)
    admit(seqs, "a", 1, 0)
    seqs.next_batch("w1", 1)
    seqs.answered("w1", 10 * MS)
    assert seqs.next_wakeup_ns() == 110 * MS
    assert seqs.expire(109 * MS) == []
    admit(seqs, "a", 2, 109 * MS)  # still open: it is not idle while a request waits
    seqs.next_batch("w1", 1)
    seqs.answered("w1", 120 * MS)
    assert seqs.expire(219 * MS) == [] and seqs.open_count == 1
    seqs.expire(220 * MS)
    assert seqs.open_count == 0 and seqs.next_wakeup_ns() == -1
    assert refused_reason(seqs, "a", 3, 221 * MS) == EXPIRED


def test_expiry_is_seen_at_arrival_without_a_tick():
    seqs = book(max_idle_ns=100 * MS, strict=True)
    admit(seqs, "a", 1, 0)
    seqs.next_batch("w1", 1)
    seqs.answered("w1", 0)
    assert refused_reason(seqs, "a", 2, 100 * MS) == EXPIRED


def test_an_expired_id_starts_a_new_sequence_by_default():
    seqs = book(max_idle_ns=100 * MS)
    admit(seqs, "a", 1, 0)
    assert seqs.next_batch("w1", 2) == [1]
    seqs.answered("w1", 0)
    assert admit(seqs, "a", 2, 100 * MS) == ("a", False)  # expired at arrival: a new one
    assert seqs.open_count == 1
    assert seqs.next_batch("w2", 2) == [2]  # not pinned to w1 any more


def test_a_sequence_times_out_after_sequence_timeout_but_finishes_what_it_took():
    seqs = book(max_idle_ns=1000 * MS, timeout_ns=100 * MS, strict=True)
    admit(seqs, "a", 1, 0)
    admit(seqs, "a", 2, 50 * MS)
    assert seqs.next_wakeup_ns() == 100 * MS
    assert seqs.next_batch("w1", 1) == [1]
    seqs.expire(100 * MS)
    assert refused_reason(seqs, "a", 3, 100 * MS) == EXPIRED
    seqs.answered("w1", 110 * MS)
    assert seqs.next_batch("w1", 1) == [2]
    seqs.answered("w1", 120 * MS)
    assert seqs.open_count == 0
    assert refused_reason(seqs, "a", 4, 130 * MS) == EXPIRED


def test_by_default_a_timed_out_sequence_takes_requests_until_it_has_none_then_starts_over():
    seqs = book(max_idle_ns=1000 * MS, timeout_ns=100 * MS)
    admit(seqs, "a", 1, 0)
    assert seqs.next_batch("w1", 2) == [1]
    seqs.expire(100 * MS)
    admit(seqs, "a", 2, 100 * MS)  # TorchServe's JobGroup still takes jobs
    seqs.answered("w1", 110 * MS)
    assert seqs.next_batch("w1", 2) == [2]
    seqs.answered("w1", 120 * MS)
    assert seqs.open_count == 0  # nothing left: it closed
    assert admit(seqs, "a", 3, 130 * MS) == ("a", False)
    assert seqs.open_count == 1 and seqs.next_wakeup_ns() == 230 * MS  # a new start


def test_the_end_header_closes_the_sequence_after_that_request_when_strict():
    seqs = book(strict=True)
    admit(seqs, "a", 1)
    admit(seqs, "a", 2, ends=True)
    assert refused_reason(seqs, "a", 3) == ENDED
    seqs.next_batch("w1", 1)
    seqs.answered("w1", 0)
    assert seqs.next_batch("w1", 1) == [2]
    assert seqs.open_count == 1
    seqs.answered("w1", 0)
    assert seqs.open_count == 0
    assert refused_reason(seqs, "a", 4) == ENDED
    assert admit(seqs, None, 5) == ("made-1", True)  # a new one may start


def test_the_end_header_is_ignored_by_default():
    seqs = book()
    admit(seqs, "a", 1, ends=True)
    admit(seqs, "a", 2)
    assert seqs.next_batch("w1", 1) == [1]
    seqs.answered("w1", 0)
    assert seqs.next_batch("w1", 1) == [2]
    seqs.answered("w1", 0)
    assert seqs.open_count == 1
    assert admit(seqs, "a", 3) == ("a", False)


def test_a_lost_worker_takes_its_sequences_with_it_when_strict():
    seqs = book(strict=True)
    for request_id, sequence_id in enumerate("abcd", 1):
        admit(seqs, sequence_id, request_id)
    assert seqs.next_batch("w1", 2) == [1, 2]  # a, b
    assert seqs.next_batch("w2", 2) == [3, 4]  # c, d
    admit(seqs, "a", 5)
    admit(seqs, "c", 6)
    assert seqs.worker_lost("w1", 0) == [5]
    assert refused_reason(seqs, "a", 7) == LOST
    assert refused_reason(seqs, "b", 8) == LOST
    assert seqs.answered("w2", 0) == ["c", "d"]
    assert seqs.next_batch("w2", 1) == [6]


def test_by_default_a_lost_workers_sequences_go_on_on_another_worker():
    seqs = book()
    for request_id, sequence_id in enumerate("abcd", 1):
        admit(seqs, sequence_id, request_id)
    assert seqs.next_batch("w1", 2) == [1, 2]  # a, b
    assert seqs.next_batch("w2", 2) == [3, 4]  # c, d
    admit(seqs, "a", 5)
    assert seqs.worker_lost("w1", 0) == []  # 1 and 2 are the caller's to answer
    assert seqs.open_count == 4 and len(seqs) == 1
    admit(seqs, "b", 6)
    seqs.answered("w2", 0)
    assert sorted(seqs.next_batch("w3", 2)) == [5, 6]  # a and b, on the new worker
    assert seqs.running_ids("w3") == ["a", "b"]


def test_a_waiting_request_past_its_deadline_is_taken_out_and_the_sequence_goes_on():
    seqs = book()
    admit(seqs, "a", 1)
    admit(seqs, "a", 2, deadline_ns=50 * MS)
    admit(seqs, "a", 3, deadline_ns=FAR)
    seqs.next_batch("w1", 1)
    assert seqs.next_wakeup_ns() == 50 * MS
    assert seqs.expire(50 * MS) == [2]
    seqs.answered("w1", 60 * MS)
    assert seqs.next_batch("w1", 1) == [3]


def test_gone_ids_are_forgotten_after_a_while():
    seqs = book(max_idle_ns=MS, strict=True)
    admit(seqs, "a", 1)
    seqs.next_batch("w1", 1)
    seqs.answered("w1", 0)
    seqs.expire(MS)
    assert refused_reason(seqs, "a", 2, 2 * MS) == EXPIRED
    later = 2 * MS + 300 * 1_000_000_000
    assert admit(seqs, "a", 3, later) == ("a", False)


def test_drain_takes_every_waiting_request():
    seqs = book()
    admit(seqs, "a", 1)
    admit(seqs, "a", 2)
    admit(seqs, "b", 3)
    seqs.next_batch("w1", 1)
    assert sorted(seqs.drain()) == [2]  # 1 and 3 run
    assert len(seqs) == 0


def test_a_long_id_is_a_bad_request():
    with pytest.raises(BadRequest):
        admit(book(), "x" * 257, 1)


def test_refusals_say_what_happened():
    full = refusal_error(SequenceRefused(QUEUE_FULL, "a"), "stateful")
    assert isinstance(full, QueueFull) and full.http_status == 503
    assert "maxSequenceJobQueueSize" in full.message
    assert "maxNumSequence" in refusal_error(SequenceRefused(TOO_MANY, "a"), "m").message
    assert isinstance(refusal_error(SequenceRefused(LOST, "a"), "m"), WorkerLost)
    assert "expired" in refusal_error(SequenceRefused(EXPIRED, "a"), "m").message
    assert "ended" in refusal_error(SequenceRefused(ENDED, "a"), "m").message


OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("admit"), st.sampled_from([None, "a", "b", "c", "d", "e"]),
              st.booleans(), st.integers(0, 30)),
    st.tuples(st.just("batch"), st.sampled_from(["w1", "w2", "w3"])),
    st.tuples(st.just("answer"), st.sampled_from(["w1", "w2", "w3"])),
    st.tuples(st.just("lose"), st.sampled_from(["w1", "w2", "w3"])),
    st.tuples(st.just("tick"), st.integers(0, 40)),
), max_size=80)


@pytest.mark.parametrize("strict", [False, True])
@settings(max_examples=300, deadline=None)
@given(operations=OPERATIONS)
def test_random_operations_keep_the_promises(operations, strict):
    """Whatever happens: a batch has at most one request per sequence and at most
    batch_size; a sequence's requests run in arrival order, one at a time, on one worker (on
    another only after that one was lost, by default); and every request taken in comes out
    exactly once (run, expired, failed with its worker)."""
    seqs = book(batch_size=3, max_sequences=4, max_queued=2, max_idle_ns=20 * MS,
                timeout_ns=60 * MS, strict=strict)
    now_ns = 0
    request_ids = itertools.count(1)
    sequence_of: dict[int, str] = {}
    worker_of: dict[str, str] = {}
    last_run: dict[str, int] = {}
    running: dict[str, list[int]] = {}
    out: list[int] = []
    for operation in operations:
        kind = operation[0]
        if kind == "admit":
            _kind, named, ends, deadline_ms = operation
            request_id = next(request_ids)
            try:
                sequence_id, _made = seqs.admit(named, request_id, now_ns + deadline_ms * MS,
                                                ends, now_ns)
            except SequenceRefused:
                continue
            sequence_of[request_id] = sequence_id
        elif kind == "batch":
            worker = operation[1]
            batch = seqs.next_batch(worker, 3)
            if not batch:
                continue
            assert worker not in running and len(batch) <= 3
            names = [sequence_of[request_id] for request_id in batch]
            assert len(set(names)) == len(names)
            for request_id, name in zip(batch, names, strict=True):
                assert worker_of.setdefault(name, worker) == worker
                assert request_id > last_run.get(name, 0)
                last_run[name] = request_id
            running[worker] = batch
            out += batch
        elif kind == "answer":
            worker = operation[1]
            batch = running.pop(worker, [])
            assert seqs.answered(worker, now_ns) == [sequence_of[r] for r in batch]
        elif kind == "lose":
            running.pop(operation[1], None)
            out += seqs.worker_lost(operation[1], now_ns)
            if not strict:
                worker_of = {name: worker for name, worker in worker_of.items()
                             if worker != operation[1]}
        else:
            now_ns += operation[1] * MS
            out += seqs.expire(now_ns)
        if not strict:  # an id whose sequence closed may start a new one, anywhere
            worker_of = {name: worker for name, worker in worker_of.items() if name in seqs}
        in_flight = [request_id for batch in running.values() for request_id in batch]
        flying = [sequence_of[request_id] for request_id in in_flight]
        assert len(set(flying)) == len(flying)  # one request of a sequence in flight
    out += seqs.drain()
    assert sorted(out) == sorted(set(out)) == sorted(sequence_of)
