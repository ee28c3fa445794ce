"""BrokerCore without sockets: routing, batching, expiry, liveness, control, bad frames."""

from __future__ import annotations

import functools
import logging
import time

import pytest

from tests.support.broker_core import (
    BAD_ROUTE,
    CLIENT,
    MS,
    WORKER,
    add,
    errors,
    flat,
    ready,
    reply_batch,
    request,
    rids,
    take_back,
    take_control,
    take_front,
)
from zerobatch import protocol as p
from zerobatch import token_keys
from zerobatch.broker.core import BrokerCore


def test_unknown_model_answers_model_not_found(core):
    add(core)
    request(core, b"r1", 0, model="nope")
    assert errors(take_front(core)) == [(b"r1", "model_not_found")]


def test_full_batch_goes_to_ready_worker_and_replies_route_back(core):
    add(core)
    ready(core, 0)
    for i in range(4):
        request(core, b"r%d" % i, i * MS, body=b"body%d" % i)
    (batch,) = take_back(core)
    assert batch[0] == WORKER and batch[2] == p.W_BATCH
    assert batch[5::2] == [b"body0", b"body1", b"body2", b"body3"]
    reply_batch(core, batch, 10 * MS)
    replies = take_front(core)
    assert [(i, c, r, b) for i, c, r, _a, b in flat(replies)] == [
        (CLIENT, p.REPLY, b"r%d" % i, b"body%d" % i) for i in range(4)]
    assert core.describe()["models"][0]["batchSizes"] == {"4": 1}


def test_partial_batch_waits_for_max_batch_delay(core):
    add(core)
    ready(core, 0)
    request(core, b"r1", 0)
    core.on_tick(0)  # sends the first heartbeats; the next is due in 1 s
    assert [m[0] for m in take_back(core)] == [WORKER + p.HEARTBEAT_SUFFIX]
    assert core.next_wakeup_ns(0) == 50 * MS
    core.on_tick(49 * MS)
    assert take_back(core) == []
    core.on_tick(50 * MS)
    (batch,) = take_back(core)
    assert len(batch) == 6


def test_expired_request_is_answered_and_never_dispatched(core):
    add(core)
    request(core, b"short", 0, timeout_ms=10)
    core.on_tick(10 * MS)
    assert errors(take_front(core)) == [(b"short", "deadline_exceeded")]
    ready(core, 11 * MS)
    core.on_tick(200 * MS)
    assert take_back(core) == []


def test_full_queue_refuses_at_once(core, caplog):
    add(core, max_queue=4)
    with caplog.at_level(logging.INFO, logger="zerobatch.broker"):
        for i in range(5):
            request(core, b"r%d" % i, 0)
    assert errors(take_front(core)) == [(b"r4", "queue_full")]
    assert core.describe()["models"][0]["refusedQueueFull"] == 1
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == [
        "model echo/1.0 refused 1 request in 0.0 s: 1 queue_full (max_queue requests waited)"]


def test_body_over_limit_is_refused(core):
    add(core)
    request(core, b"big", 0, body=b"x" * 1001)
    assert errors(take_front(core)) == [(b"big", "request_too_large")]


def test_silent_worker_is_lost_and_its_batch_answered(core):
    add(core, batch_size=1)
    ready(core, 0)
    request(core, b"r1", 0)
    assert len(take_back(core)) == 1
    core.on_tick(2999 * MS)
    assert errors(take_front(core)) == []
    core.on_tick(3000 * MS)
    assert errors(take_front(core)) == [(b"r1", "worker_lost")]
    assert core.lost_worker_ids == [WORKER.decode()]
    assert core.describe()["models"][0]["workers"] == []


def test_heartbeat_from_hb_identity_keeps_worker_alive(core):
    add(core, batch_size=1)
    ready(core, 0)
    core.on_back([WORKER + p.HEARTBEAT_SUFFIX] + p.HEARTBEAT_FRAMES, 2500 * MS)
    core.on_tick(3500 * MS)
    assert core.lost_worker_ids == []
    hb = [m for m in take_back(core) if m[0] == WORKER + p.HEARTBEAT_SUFFIX]
    assert hb and hb[0][1:] == p.HEARTBEAT_FRAMES


def test_process_exit_fails_in_flight_requests(core):
    add(core, batch_size=2)
    ready(core, 0)
    request(core, b"a", 0)
    request(core, b"b", 0)
    take_back(core)
    core.worker_lost(WORKER.decode(), 5 * MS, "its process exited")
    assert sorted(errors(take_front(core))) == [(b"a", "worker_lost"), (b"b", "worker_lost")]


def test_batch_running_past_response_timeout_loses_worker(core):
    add(core, batch_size=1, response_timeout_s=1)
    ready(core, 0)
    request(core, b"r1", 0)
    take_back(core)
    core.on_back([WORKER + p.HEARTBEAT_SUFFIX] + p.HEARTBEAT_FRAMES, 900 * MS)
    core.on_tick(1001 * MS)
    assert errors(take_front(core)) == [(b"r1", "worker_lost")]


def test_reply_for_unknown_batch_is_dropped(core):
    add(core)
    ready(core, 0)
    core.on_back([WORKER, p.VERSION, p.W_REPLY, p.encode_batch_id(99)], 0)
    assert take_front(core) == []


@pytest.mark.parametrize("frames", [
    [b"junk"],
    [b"XX9", p.REQUEST, b"\x01r", b""],
    [p.VERSION, b"\x7f", b"r", b""],
    [p.VERSION, p.REQUEST, b"\x01r\x01\x00\xc1", b""],
    [p.VERSION, p.REQUEST, b"\x01r" + p.encode_route("m", None, 0)[:2], b""],
    [p.VERSION, p.REQUEST, b"\x01r" + bytes((len(BAD_ROUTE), 0)) + BAD_ROUTE, b""],
    [p.VERSION, p.REQUEST, b"\x64" + b"r" * 100 + p.encode_route("echo", None, 0), b""],
    [p.VERSION, p.REQUEST, b"", b""],
    [p.VERSION, p.CONTROL, b"r", p.packb({"op": "explode"})],
    [p.VERSION, p.CONTROL, b"r" * 100, p.packb({"op": "ping"})],
])
def test_garbage_from_clients_never_raises(core, frames):
    add(core)
    core.on_front([CLIENT] + frames, 0)
    for _identity, command, _rid, _a, _b in flat(take_front(core)):
        assert command == p.ERROR


@pytest.mark.parametrize("frames", [
    [b"junk"],
    [p.VERSION, p.W_READY, b"\xc1"],
    [p.VERSION, p.W_READY, p.packb({"model": 1})],
    [p.VERSION, p.W_REPLY, b"short"],
    [p.VERSION, b"\x99"],
])
def test_garbage_from_workers_never_raises(core, frames):
    add(core)
    core.on_back([WORKER] + frames, 0)
    assert core.workers == {}


def test_control_socket_runs_ping_describe_stop(core, caplog):
    add(core)
    ready(core, 0)  # its one worker: "Healthy" (tests/unit/test_health.py has the others)
    core.on_control([CLIENT] + p.encode_control(b"c1", "ping"), 0)
    core.on_control([CLIENT] + p.encode_control(b"c2", "describe"), 0)
    replies = flat(take_control(core))
    assert [rid for _i, _c, rid, _a, _b in replies] == [b"c1", b"c2"]
    assert p.unpack_header(replies[0][4]) == {"status": "Healthy"}
    assert p.unpack_header(replies[1][4])["models"][0]["modelName"] == "echo"
    with caplog.at_level(logging.INFO, logger="zerobatch.broker"):
        core.on_control([CLIENT] + p.encode_control(b"c3", "stop"), 0)
    assert core.stop_requested
    assert "control stop accepted from the local control socket" in caplog.text
    assert core.out_front == []


def test_client_endpoint_answers_ping_and_refuses_other_control_from_anonymous(core, caplog):
    add(core)
    ready(core, 0)
    core.peer_of = lambda frames: ("203.0.113.9", None)
    core.on_front([CLIENT] + p.encode_control(b"c1", "ping"), 0)
    with caplog.at_level(logging.WARNING, logger="zerobatch.broker"):
        core.on_front([CLIENT] + p.encode_control(b"c2", "stop"), 0)
        core.on_front([CLIENT] + p.encode_control(b"c3", "describe"), 0)
    assert not core.stop_requested
    replies = take_front(core)
    assert p.unpack_header(flat(replies[:1])[0][4]) == {"status": "Healthy"}
    assert errors(replies[1:]) == [(b"c2", "forbidden"), (b"c3", "forbidden")]
    assert "control stop refused: client at 203.0.113.9" in caplog.text
    assert "control describe refused: client at 203.0.113.9" in caplog.text


def test_client_endpoint_accepts_control_from_a_curve_client(core, caplog):
    add(core)
    core.peer_of = lambda frames: ("127.0.0.1", "KEY-OF-ALICE")
    with caplog.at_level(logging.INFO, logger="zerobatch.broker"):
        core.on_front([CLIENT] + p.encode_control(b"c1", "stop"), 0)
    assert core.stop_requested
    assert "control stop accepted from CURVE client KEY-OF-ALICE at 127.0.0.1" in caplog.text


def test_client_endpoint_accepts_control_with_the_management_key(core, caplog, tmp_path):
    """Token authorization covers the ZeroMQ control calls: the management key (the one the
    management API asks for), sent as the call's "token", authorizes it; a wrong, expired or
    missing one is refused, as is any key when token authorization is off."""
    add(core)
    key_file = str(tmp_path / "key_file.json")
    keys = token_keys.create_key_file(key_file, 60)
    core.peer_of = lambda frames: ("198.51.100.7", None)
    for token in (None, "wrong", keys.inference, keys.api):
        args = {} if token is None else {"token": token}
        core.on_front([CLIENT] + p.encode_control(b"s", "scale", model="echo", workers=2,
                                                  **args), 0)
        assert errors(take_front(core)) == [(b"s", "forbidden")]  # no check configured
    core.management_key_check = functools.partial(token_keys.key_is_valid, key_file,
                                                  "management")
    for token in (None, "wrong", keys.inference, keys.api):
        args = {} if token is None else {"token": token}
        core.on_front([CLIENT] + p.encode_control(b"s", "scale", model="echo", workers=2,
                                                  **args), 0)
        assert errors(take_front(core)) == [(b"s", "forbidden")], token
    with caplog.at_level(logging.INFO, logger="zerobatch.broker"):
        core.on_front([CLIENT] + p.encode_control(b"s", "scale", model="echo", workers=2,
                                                  token=keys.management), 0)
    [reply] = take_front(core)
    assert p.unpack_header(reply[-1])["status"].startswith("Processing worker updates")
    assert "control scale accepted from client (management key) at 198.51.100.7" in caplog.text
    assert not token_keys.key_is_valid(key_file, "management", keys.management,
                                       now_s=time.time() + 3601)  # it expires


def test_refused_control_calls_are_counted_not_each_logged_in_a_flood(core, caplog):
    add(core)
    with caplog.at_level(logging.WARNING, logger="zerobatch.broker"):
        for index in range(100):
            core.on_front([CLIENT] + p.encode_control(b"c%d" % index, "stop"), 1)
        core.on_front([CLIENT] + p.encode_control(b"late", "stop"), 11_000 * MS)
    assert len(errors(take_front(core))) == 101
    lines = [r.getMessage() for r in caplog.records]
    assert sum("refused: client at" in line for line in lines) == 21
    assert any(line.startswith("80 more control calls refused") for line in lines)


def test_control_socket_takes_control_messages_only(core):
    add(core)
    core.on_control([CLIENT, p.VERSION, p.REQUEST, b"r", b"body"], 0)
    assert errors(take_control(core)) == [(b"r", "protocol_error")]


def test_shutdown_answers_waiting_and_refuses_new(core):
    add(core)
    request(core, b"waiting", 0)
    core.begin_shutdown(1 * MS)
    request(core, b"late", 2 * MS)
    assert errors(take_front(core)) == [(b"waiting", "shutting_down"), (b"late", "shutting_down")]


def test_versions_route_to_their_own_queue(core):
    add(core)
    add(core, version="2.0")
    request(core, b"v2", 0)  # default version: the first registered
    frames = [CLIENT] + p.encode_request(b"v2b", p.encode_route("echo", "2.0", 0),
                                         p.encode_meta("text/plain"), b"x")
    core.on_front(frames, 0)
    frames = [CLIENT] + p.encode_request(b"v3", p.encode_route("echo", "3.0", 0),
                                         p.encode_meta("text/plain"), b"x")
    core.on_front(frames, 0)
    assert errors(take_front(core)) == [(b"v3", "model_version_not_found")]
    assert [m["queued"] for m in core.describe()["models"]] == [1, 1]


def partial(core: BrokerCore, batch_id: int, index: int, body: bytes, now_ns: int,
            identity: bytes = WORKER, status: int = 200) -> None:
    core.on_back([identity] + p.encode_worker_partial(
        batch_id, index, p.encode_reply_meta(status, "text/plain"), body), now_ns)


def test_worker_partial_is_forwarded_and_the_request_stays_in_flight(core):
    add(core)
    ready(core, 0)
    other = b"client-2"
    for i, client in enumerate((CLIENT, other, CLIENT, other)):
        core.on_front([client] + p.encode_request(
            b"r%d" % i, p.encode_route("echo", None, 0), p.encode_meta("text/plain"),
            b"b%d" % i), i * MS)
    (batch,) = take_back(core)
    batch_id = p.parse_batch_id(batch[3])
    partial(core, batch_id, 1, b"chunk-a", 5 * MS)
    partial(core, batch_id, 1, b"chunk-b", 6 * MS, status=206)
    partial(core, batch_id, 2, b"chunk-c", 6 * MS)
    forwarded = flat(take_front(core))
    assert [(i, c, r, b) for i, c, r, _a, b in forwarded] == [
        (other, p.PARTIAL, b"r1", b"chunk-a"),
        (other, p.PARTIAL, b"r1", b"chunk-b"),
        (CLIENT, p.PARTIAL, b"r2", b"chunk-c")]
    assert p.parse_reply_meta(forwarded[1][3]) == (206, "text/plain", None)
    assert batch_id in core.batches
    assert core.describe()["models"][0]["workers"][0]["status"] == "BUSY"
    reply_batch(core, batch, 10 * MS)  # the final W_REPLY ends every request
    assert [(c, r) for _i, c, r, _a, _b in flat(take_front(core))] == [
        (p.REPLY, b"r%d" % i) for i in range(4)]
    assert batch_id not in core.batches


def test_bad_worker_partials_are_dropped(core):
    add(core)
    ready(core, 0)
    request(core, b"r0", 0)
    core.on_tick(100 * MS)
    (batch,) = [m for m in take_back(core) if m[2] == p.W_BATCH]
    batch_id = p.parse_batch_id(batch[3])
    partial(core, batch_id, 1, b"no such request", MS)
    partial(core, batch_id + 1, 0, b"no such batch", MS)
    partial(core, batch_id, 0, b"wrong worker", MS, identity=b"stranger")
    core.on_back([WORKER, p.VERSION, p.W_PARTIAL, p.encode_batch_id(batch_id), b"\0", b"m",
                  b"b"], MS)
    core.on_back([WORKER, p.VERSION, p.W_PARTIAL, p.encode_batch_id(batch_id)], MS)
    assert take_front(core) == []
    assert batch_id in core.batches


def test_load_failure_answers_waiting_and_new_requests_until_a_worker_is_ready(core):
    add(core)
    request(core, b"waiting", 0)
    core.on_back([WORKER] + p.encode_load_failed("echo", "1.0", "echo@1.0#0.1",
                                                 "ConfigError: no module named nope"), 1 * MS)
    request(core, b"new", 2 * MS)
    answered = errors(take_front(core))
    assert answered == [(b"waiting", "model_load_failed"), (b"new", "model_load_failed")]
    assert "no module named nope" in core.describe()["models"][0]["loadError"]
    ready(core, 3 * MS)
    assert core.describe()["models"][0]["loadError"] is None
    request(core, b"after", 4 * MS)
    assert errors(take_front(core)) == []


def test_load_failed_frames_round_trip_and_garbage_is_dropped(core):
    add(core)
    frames = p.encode_load_failed("echo", "1.0", "w", "boom")
    assert p.parse_load_failed(frames[2])["error"] == "boom"
    core.on_back([WORKER, p.VERSION, p.W_LOAD_FAILED, p.packb({"model": 1})], 0)
    assert core.describe()["models"][0]["loadError"] is None


def test_model_default_deadline_applies_and_caps_the_callers(core):
    add(core, default_timeout_ms=10)  # clientTimeoutInMills in a model-config.yaml
    request(core, b"default", 0)  # timeout 0: the model's default deadline
    request(core, b"longer", 0, timeout_ms=60_000)  # never later than the model's
    core.on_tick(9 * MS)
    assert errors(take_front(core)) == []
    core.on_tick(10 * MS)
    assert errors(take_front(core)) == [(b"default", "deadline_exceeded"),
                                        (b"longer", "deadline_exceeded")]


def test_request_that_would_miss_its_deadline_is_refused_at_once(core):
    """Once a batch is known to take 10 ms, a 30 ms deadline admits what can finish within
    two rounds (the batch in flight, then the next full batch) and refuses the rest at once."""
    add(core, batch_size=2, max_batch_delay_ms=0, max_queue=100, batch_policy="adaptive")
    ready(core, 0)
    request(core, b"warm-a", 0)
    request(core, b"warm-b", 0)
    (batch,) = take_back(core)  # adaptive: warm-a left alone at once
    reply_batch(core, batch, 10 * MS)
    (batch,) = take_back(core)  # then warm-b; both taught the estimate: 10 ms a batch
    reply_batch(core, batch, 20 * MS)
    take_front(core)
    request(core, b"a", 20 * MS)  # the worker is idle: a runs at once
    assert len(take_back(core)) == 1
    for name in (b"b", b"c", b"d", b"e"):
        request(core, name, 20 * MS, timeout_ms=30)
    answers = take_front(core)
    # a in flight (one round), then b and c as one full batch: 20 ms of wait, 30 ms with
    # the half of slack, within the 30 ms deadline. d and e need a third round (45 ms).
    assert errors(answers) == [(b"d", "deadline_unreachable"), (b"e", "deadline_unreachable")]
    code, message, status, retry_after_ms = p.parse_error_info(flat(answers)[0][3])
    assert status == 503 and "echo" in message and "30 ms" in message
    # d would finish at 45 ms, 15 past its deadline: requests like it are refused for at
    # least that long, which the client may do itself
    assert retry_after_ms == 15
    assert core.describe()["models"][0]["refusedLate"] == 2


def test_after_a_cold_first_batch_a_lone_request_and_then_a_burst_are_admitted(core):
    """The README's first request right after start: the worker's first batch runs cold
    (10 s here), which the learned estimate remembers for long after. A lone request on the
    idle worker is still admitted, and once it ran warm (2 ms) a burst of 32 with a 500 ms
    deadline is too."""
    add(core, batch_size=1, max_queue=100, batch_policy="adaptive")
    ready(core, 0)
    request(core, b"cold", 0, timeout_ms=60_000)
    reply_batch(core, take_back(core)[0], 10_000 * MS)
    request(core, b"lone", 10_000 * MS, timeout_ms=500)
    (batch,) = take_back(core)
    reply_batch(core, batch, 10_002 * MS)
    for i in range(32):
        request(core, b"burst%d" % i, 10_002 * MS, timeout_ms=500)
    assert errors(take_front(core)) == []
    assert core.describe()["models"][0]["refusedLate"] == 0


def test_admission_never_refuses_before_a_run_time_is_known(core):
    add(core, batch_size=2, max_queue=100)
    ready(core, 0)
    for i in range(20):
        request(core, b"r%d" % i, 0, timeout_ms=1)
    assert errors(take_front(core)) == []


def test_admission_queue_lets_a_late_request_wait_and_expire(core):
    """admission="queue" (TorchServe's behaviour): refused only when the queue is full."""
    add(core, batch_size=1, max_queue=100, batch_policy="adaptive", admission="queue")
    ready(core, 0)
    request(core, b"teach", 0)
    reply_batch(core, take_back(core)[0], 100 * MS)
    request(core, b"running", 100 * MS)
    request(core, b"late", 100 * MS, timeout_ms=50)
    assert errors(take_front(core)) == []
    core.on_tick(150 * MS)
    assert errors(take_front(core)) == [(b"late", "deadline_exceeded")]


def test_one_request_message_may_hold_several_requests(core):
    """Each group of a coalesced REQUEST is its own request: queued, batched and answered on
    its own; a bad group gets its own error and the others go on."""
    add(core, batch_size=3, max_queue=8)
    ready(core, 0)
    route = p.encode_route("echo", None, 0)
    meta = p.encode_meta("text/plain")
    frames = [CLIENT, p.VERSION, p.REQUEST,
              p.encode_request_head(b"r1", route, meta), b"one",
              p.encode_request_head(b"bad", p.encode_route("nope", None, 0), meta), b"x",
              b"", b"no rid: dropped",
              p.encode_request_head(b"r2", route, meta), b"two",
              p.encode_request_head(b"r3", route, meta), b"three"]
    core.on_front(frames, 0)
    assert errors(take_front(core)) == [(b"bad", "model_not_found")]
    (batch,) = take_back(core)
    assert batch[5::2] == [b"one", b"two", b"three"]
    reply_batch(core, batch, MS)
    assert rids(take_front(core)) == [b"r1", b"r2", b"r3"]


def test_request_message_with_an_incomplete_group_is_refused(core):
    add(core)
    route = p.encode_route("echo", None, 0)
    core.on_front([CLIENT, p.VERSION, p.REQUEST, p.encode_request_head(b"r1", route, b"meta"),
                   b"body", p.encode_request_head(b"r2", route, b"meta")], 0)
    assert errors(take_front(core)) == [(b"r1", "protocol_error")]


def test_a_full_batch_goes_ahead_to_the_busy_worker_and_starts_when_the_first_ends(core):
    add(core, batch_size=2, max_queue=100)
    ready(core, 0)
    for i in range(4):
        request(core, b"r%d" % i, 0)
    first, second = take_back(core)  # the second batch went ahead while the first runs
    assert len(first) == len(second) == 4 + 2 * 2
    assert core.describe()["models"][0]["workers"][0]["status"] == "BUSY"
    reply_batch(core, first, 10 * MS)
    assert take_back(core) == []  # nothing new to send: the worker already has batch two
    assert rids(take_front(core)) == [b"r0", b"r1"]
    reply_batch(core, second, 25 * MS)  # batch two ran from 10 ms to 25 ms
    assert rids(take_front(core)) == [b"r2", b"r3"]
    assert core.describe()["models"][0]["batchRunMs"] == {"2": pytest.approx(10 + (15 - 10) / 8)}
    request(core, b"r4", 30 * MS)
    request(core, b"r5", 30 * MS)
    assert len(take_back(core)) == 1  # the worker was idle again: a full batch runs at once


def test_lost_worker_fails_its_running_and_its_queued_batch(core):
    add(core, batch_size=1, max_queue=100, batch_policy="adaptive")
    ready(core, 0)
    for i in range(3):
        request(core, b"r%d" % i, 0)
    assert len(take_back(core)) == 2  # one running, one sent ahead; r2 waits in the queue
    core.worker_lost(WORKER.decode(), 5 * MS, "test")
    assert sorted(errors(take_front(core))) == [(b"r0", "worker_lost"), (b"r1", "worker_lost")]


def test_nothing_goes_ahead_when_its_deadline_could_pass_behind_the_running_batch(core):
    add(core, batch_size=1, max_queue=100, batch_policy="adaptive", admission="queue")
    ready(core, 0)
    request(core, b"teach", 0)
    reply_batch(core, take_back(core)[0], 100 * MS)  # a batch takes 100 ms
    request(core, b"running", 100 * MS)
    request(core, b"short", 100 * MS, timeout_ms=150)  # 150 ms < two runs: stays queued
    assert len(take_back(core)) == 1
    request(core, b"long", 100 * MS, timeout_ms=10_000)
    assert len(take_back(core)) == 0  # the earliest waiting deadline (short) is too near


def test_a_free_worker_waits_briefly_for_the_callers_of_the_batch_just_answered(core):
    """Callers that send again on their answer: after a0 is answered, the free worker waits
    for a0's caller instead of taking the three already waiting alone, so the batch fills."""
    add(core, batch_size=4, max_batch_delay_ms=5, max_queue=100, batch_policy="adaptive")
    ready(core, 0)
    core.on_tick(0)  # the first heartbeats go now, the next in a second
    take_back(core)
    for i in range(4):
        request(core, b"a%d" % i, 0)  # a0 runs alone at once (adaptive); a1-a3 wait
    (first,) = take_back(core)
    reply_batch(core, first, 2 * MS)  # a0 answered: its caller is expected back
    assert take_back(core) == []
    assert core.next_wakeup_ns(2 * MS) == 7 * MS  # the wait ends within max_batch_delay
    request(core, b"a4", 2 * MS + 200_000)  # a0's caller is back: a full batch
    (second,) = take_back(core)
    assert second[5::2] == [b"x"] * 4 and len(second) == 4 + 2 * 4


def test_the_wait_for_returning_callers_ends_with_its_window(core):
    add(core, batch_size=4, max_batch_delay_ms=5, max_queue=100, batch_policy="adaptive")
    ready(core, 0)
    core.on_tick(0)  # the first heartbeats go now, the next in a second
    take_back(core)
    request(core, b"a", 0)
    request(core, b"b", 0)
    reply_batch(core, take_back(core)[0], MS)  # a answered; its caller never comes back
    core.on_tick(5 * MS)
    assert take_back(core) == []
    core.on_tick(6 * MS)  # max_batch_delay has passed: b goes alone
    assert len(take_back(core)) == 1


def test_a_lone_caller_is_never_held(core):
    add(core, batch_size=8, max_batch_delay_ms=5, max_queue=100, batch_policy="adaptive")
    ready(core, 0)
    for i in range(5):
        request(core, b"r%d" % i, i * 3 * MS + 100_000)  # it sends again on each answer
        (batch,) = take_back(core)
        reply_batch(core, batch, i * 3 * MS + MS)


def test_no_wait_for_returning_callers_without_a_batch_delay(core):
    add(core, batch_size=4, max_batch_delay_ms=0, max_queue=100, batch_policy="adaptive")
    ready(core, 0)
    request(core, b"a", 0)
    request(core, b"b", 0)
    reply_batch(core, take_back(core)[0], MS)
    assert len(take_back(core)) == 1  # b at once: max_batch_delay 0 allows no waiting


# ---------------------------------------------------------------------- grouping

US = 1_000


def queue_behind_a_running_batch(core, timeout_ms=0):
    """batch size 2: a0,a1 run (sent alone: no run time known yet), b0,b1 go ahead (alone for
    the same reason), r0..r3 wait. Returns the two messages sent."""
    add(core, batch_size=2, max_queue=64)
    ready(core, 0)
    for i in range(2):
        request(core, b"a%d" % i, 0)
    (running,) = take_back(core)
    for i in range(2):
        request(core, b"b%d" % i, 10 * US)
    (ahead,) = take_back(core)
    for i in range(4):
        request(core, b"r%d" % i, 10 * US, body=b"body%d" % i, timeout_ms=timeout_ms)
    assert take_back(core) == []
    assert [running[2], ahead[2]] == [p.W_BATCH, p.W_BATCH]
    return running, ahead


def test_full_batches_share_one_message_while_their_runs_are_short(core):
    running, ahead = queue_behind_a_running_batch(core)
    reply_batch(core, running, 100 * US)  # 0.1 ms a batch: several fit in the budget
    (group,) = take_back(core)
    assert group[2] == p.W_BATCHES
    batch_id, pairs, sizes = p.parse_batch(group[1:])
    assert sizes == [2, 2]
    assert [body for _meta, body in pairs] == [b"body0", b"body1", b"body2", b"body3"]
    reply_batch(core, ahead, 200 * US)
    reply_batch(core, group, 300 * US)
    answered = [(c, r) for _i, c, r, _a, _b in flat(take_front(core))]
    assert answered == [(p.REPLY, rid) for rid in (b"a0", b"a1", b"b0", b"b1", b"r0", b"r1",
                                                    b"r2", b"r3")]
    model = core.describe()["models"][0]
    assert model["batchSizes"] == {"2": 4}  # what the handler saw: four batches of two
    assert model["batchMessages"] == 3
    assert not core.batches


def test_batches_that_take_long_go_one_per_message(core):
    running, _ahead = queue_behind_a_running_batch(core)
    reply_batch(core, running, 600 * US)  # two would take 1.2 ms: over the budget
    (alone,) = take_back(core)
    assert alone[2] == p.W_BATCH and p.parse_batch(alone[1:])[2] == [2]


def test_a_group_never_risks_a_waiting_deadline(core):
    # r0..r3 must answer by 2.01 ms; at 0.44 ms a batch, a group of two could end later than
    # half the time left, so one batch goes ahead alone and the rest may still expire in time
    running, _ahead = queue_behind_a_running_batch(core, timeout_ms=2)
    reply_batch(core, running, 450 * US)
    (alone,) = take_back(core)
    assert alone[2] == p.W_BATCH and len(p.parse_batch(alone[1:])[1]) == 2


def test_a_lost_worker_fails_every_request_of_its_group(core):
    running, ahead = queue_behind_a_running_batch(core)
    reply_batch(core, running, 100 * US)
    (group,) = take_back(core)
    take_front(core)
    core.worker_lost(WORKER.decode(), 200 * US, "test")
    assert sorted(errors(take_front(core))) == sorted(
        (rid, "worker_lost") for rid in (b"b0", b"b1", b"r0", b"r1", b"r2", b"r3"))
    assert not core.batches


def test_a_group_reply_with_too_few_answers_is_dropped(core):
    running, ahead = queue_behind_a_running_batch(core)
    reply_batch(core, running, 100 * US)
    reply_batch(core, ahead, 150 * US)
    (group,) = take_back(core)
    take_front(core)
    batch_id = p.parse_batch_id(group[3])
    short = [p.REPLY + p.encode_reply_meta(200, None), b"x"] * 3  # the group holds four
    core.on_back([WORKER, p.VERSION, p.W_REPLY, p.encode_batch_id(batch_id)] + short, 200 * US)
    assert take_front(core) == [] and batch_id in core.batches
