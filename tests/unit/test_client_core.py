"""The sans-IO client core (api.client_core.ClientCore), without sockets: requests in, the
frames it hands out; frames fed back, the replies, typed errors, local deadlines and refusals
that come of them; the clock passed in."""

from __future__ import annotations

import json

import msgpack
import pytest

import zerobatch
import zerobatch.api.client_helpers as helpers
from zerobatch import errors, protocol
from zerobatch.api.client_core import DEADLINE_BUCKET_NS, ClientCore
from zerobatch.api.client_helpers import HeaderCache, RefusalHints, Reply

NOW_NS = 10**15
MS = 1_000_000


def sent(core: ClientCore) -> list[tuple[bytes, tuple, tuple, bytes]]:
    """(rid, route, meta, body) of every request in the core's outgoing messages."""
    requests = []
    for message in core.messages():
        assert message[:2] == [protocol.VERSION, protocol.REQUEST]
        for head, body in zip(message[2::2], message[3::2], strict=True):
            rid_part, route, meta = protocol.split_request_head(head)
            requests.append((rid_part[1:], protocol.parse_route(route),
                             protocol.parse_meta(meta), body))
    return requests


def replies(*items: tuple) -> list:
    """One REPLIES message of (rid, command, meta, body) items."""
    frames = [protocol.VERSION, protocol.REPLIES]
    for rid, command, meta, body in items:
        frames += [protocol.rid_head(rid) + command + meta, body]
    return frames


def answer(rid: bytes, body: bytes = b"", status: int = 200, content_type: str | None = None,
           headers: dict | None = None, command: bytes = protocol.REPLY) -> tuple:
    return rid, command, protocol.encode_reply_meta(status, content_type, headers), body


def failure(rid: bytes, code: str, message: str = "no", status: int = 500,
            retry_after_ms: int | None = None) -> tuple:
    info = protocol.encode_error_info(code, message, status, retry_after_ms)
    return rid, protocol.ERROR, info, b""


@pytest.fixture
def core() -> ClientCore:
    return ClientCore(timeout_ms=3000)


# ---------------------------------------------------------------- requests out

@pytest.mark.parametrize("body, wire, content_type", [
    (b"\x00\x01raw", b"\x00\x01raw", "application/octet-stream"),
    (bytearray(b"abc"), b"abc", "application/octet-stream"),
    (memoryview(b"view"), b"view", "application/octet-stream"),
    ("héllo", "héllo".encode(), "text/plain; charset=utf-8"),
    ({"x": [1, 2]}, b'{"x":[1,2]}', "application/json"),
    ([1, "a"], b'[1,"a"]', "application/json"),
])
def test_a_body_is_sent_with_the_content_type_of_its_kind(body, wire, content_type):
    core = ClientCore()
    call = core.request("digits", body, NOW_NS)
    ((rid, route, meta, payload),) = sent(core)
    assert rid == call.rid and bytes(payload) == wire
    assert route == ("digits", None, 0)
    assert meta == (content_type, None, None)


def test_route_and_meta_carry_version_timeout_headers_and_request_id():
    core = ClientCore(timeout_ms=700)
    core.request("m", b"1", NOW_NS)
    core.request("m", b"2", NOW_NS, version="2.0", timeout_ms=50, content_type="image/png",
                 headers={"x-a": "b"}, request_id="req-1")
    core.request("m", b"3", NOW_NS, timeout_ms=0)
    first, second, third = sent(core)
    assert first[1] == ("m", None, 700)
    assert second[1:3] == (("m", "2.0", 50), ("image/png", {"x-a": "b"}, "req-1"))
    assert third[1] == ("m", None, 0)
    assert len({first[0], second[0], third[0]}) == 3  # one rid each


def test_bad_arguments_fail_before_anything_is_queued(core):
    with pytest.raises(TypeError, match="cannot send a body"):
        core.request("m", object(), NOW_NS)
    with pytest.raises(ValueError):
        core.request("", b"", NOW_NS)
    with pytest.raises(ValueError):
        core.request("m", b"", NOW_NS, timeout_ms=-1)
    with pytest.raises(TypeError):
        core.request("m", b"", NOW_NS, headers={"x": object()})
    assert core.in_flight == 0 and core.messages() == []


def test_the_requests_made_between_two_takes_share_a_message(core, monkeypatch):
    for index in range(5):
        core.request("m", b"%d" % index, NOW_NS)
    (message,) = core.messages()
    assert len(message) == 2 + 2 * 5
    assert core.messages() == []  # taken
    monkeypatch.setattr(protocol, "MAX_BATCH_ITEMS", 3)
    for index in range(7):
        core.request("m", b"%d" % index, NOW_NS)
    messages = core.messages()
    assert [len(message[2::2]) for message in messages] == [3, 3, 1]
    assert [body for message in messages for body in message[3::2]] == [
        b"%d" % index for index in range(7)]


def test_the_header_cache_is_bounded():
    cache = HeaderCache(limit=4)
    pairs = [cache.pair("m", None, timeout_ms, "a/b") for timeout_ms in range(10)]
    assert len(cache._pairs) <= 4 and len(cache._routes) <= 4
    assert cache.pair("m", None, 9, "a/b") is pairs[9]
    assert protocol.parse_route(pairs[3][0][2:]) == ("m", None, 3)  # after its length
    assert protocol.parse_meta(pairs[3][1]) == ("a/b", None, None)


# ---------------------------------------------------------------- replies in

def test_replies_in_any_order_and_one_message_reach_their_calls(core):
    calls = [core.request("m", str(index), NOW_NS) for index in range(20)]
    requests = sent(core)
    assert core.in_flight == 20
    order = requests[::2] + requests[1::2][::-1]
    woken = core.receive(replies(*(answer(rid, b"answer-" + body, content_type="text/plain")
                                   for rid, _route, _meta, body in order)), NOW_NS)
    assert sorted(call.rid for call in woken) == sorted(call.rid for call in calls)
    for index, call in enumerate(calls):
        reply = core.reply(call)
        assert (reply.status, reply.content_type, reply.body) == (
            200, "text/plain", b"answer-%d" % index)
    assert core.in_flight == 0


def test_reply_fields_text_and_json(core):
    call = core.request("m", b"", NOW_NS)
    core.receive(replies(answer(call.rid, b'{"a": 1}', 201, "application/json",
                                {"x-h": "v"})), NOW_NS)
    reply = core.reply(call)
    assert isinstance(reply, Reply)
    assert (reply.status, reply.content_type, reply.headers) == (201, "application/json",
                                                                {"x-h": "v"})
    assert reply.json() == {"a": 1} and reply.text == '{"a": 1}'
    latin = Reply(200, "text/plain; charset=latin-1", None, "é".encode("latin-1"))
    assert latin.text == "é" and latin.headers == {}
    text = repr(Reply(200, "x/y", None, b"z" * 1000))
    assert len(text) < 200 and json.dumps(text)


def test_chunks_are_joined_in_front_of_the_final_body_and_wake_only_streaming_calls(core):
    joined = core.request("m", b"x", NOW_NS)
    streamed = core.request("m", b"y", NOW_NS, streams=True)
    first = core.receive(replies(answer(joined.rid, b"one,", command=protocol.PARTIAL),
                                 answer(streamed.rid, b"a", 206, "text/event-stream",
                                        command=protocol.PARTIAL)), NOW_NS)
    assert first == [streamed]  # a caller that joins the chunks waits for the end
    assert core.stream_head(streamed) == (206, "text/event-stream", None)
    assert core.take_chunks(streamed) == [b"a"] and not core.take_chunks(streamed)
    core.receive(replies(answer(joined.rid, b"two,", command=protocol.PARTIAL),
                         answer(streamed.rid, b"b", command=protocol.PARTIAL)), NOW_NS)
    assert core.in_flight == 2 and joined.outcome is None
    last = core.receive(replies(answer(joined.rid, b"end"), answer(streamed.rid, b"z")),
                        NOW_NS)
    assert last == [joined, streamed]
    assert core.reply(joined).body == b"one,two,end"
    assert core.take_chunks(streamed) == [b"b"] and core.reply(streamed).body == b"z"
    assert core.stream_head(streamed)[0] == 206  # the first chunk's, not a later one's


ALL_CODES = sorted(errors.ERROR_BY_CODE.items())


@pytest.mark.parametrize("code, cls", ALL_CODES, ids=[code for code, _ in ALL_CODES])
def test_an_error_reply_raises_its_typed_error(core, code, cls):
    call = core.request("m", b"x", NOW_NS)
    assert core.receive(replies(failure(call.rid, code, f"boom {code}", cls.http_status)),
                        NOW_NS) == [call]
    with pytest.raises(cls) as info:
        core.reply(call)
    assert type(info.value) is cls
    assert (info.value.message, info.value.http_status) == (f"boom {code}", cls.http_status)


@pytest.mark.parametrize("code, builtin", [
    ("deadline_exceeded", TimeoutError),
    ("model_not_found", LookupError),
    ("queue_full", OverflowError),
    ("bad_request", ValueError),
    ("handler_error", RuntimeError),
    ("worker_lost", ConnectionError),
    ("broker_unavailable", ConnectionError),
])
def test_error_replies_are_caught_as_builtins(core, code, builtin):
    call = core.request("m", b"x", NOW_NS)
    core.receive(replies(failure(call.rid, code)), NOW_NS)
    with pytest.raises(builtin):
        core.reply(call)


def test_the_status_on_the_wire_wins_and_unknown_codes_survive(core):
    known, unknown = core.request("m", b"1", NOW_NS), core.request("m", b"2", NOW_NS)
    core.receive(replies(failure(known.rid, "prediction_error", "teapot", 418),
                         failure(unknown.rid, "brand_new_code", "what", 502)), NOW_NS)
    with pytest.raises(errors.PredictionError) as info:
        core.reply(known)
    assert info.value.http_status == 418
    with pytest.raises(errors.ServingError) as info:
        core.reply(unknown)
    assert info.value.code == "brand_new_code" and info.value.http_status == 502


def test_malformed_messages_are_dropped_and_the_calls_wait_on(core):
    call = core.request("m", b"x", NOW_NS)
    head = protocol.rid_head(call.rid) + protocol.REPLY
    for frames in ([b"garbage"], [b"ZB9", protocol.REPLIES, head, b""],
                   [protocol.VERSION, protocol.REQUEST, head, b""],
                   [protocol.VERSION, protocol.REPLIES, head],
                   [protocol.VERSION, protocol.REPLIES, protocol.rid_head(call.rid) + b"\x7f",
                    b""]):
        assert core.receive(frames, NOW_NS) == []
    assert call.outcome is None and core.in_flight == 1
    core.receive(replies(answer(call.rid, b"ok")), NOW_NS)
    assert core.reply(call).body == b"ok"


def test_an_undecodable_reply_meta_is_a_protocol_error(core):
    call = core.request("m", b"x", NOW_NS)
    core.receive(replies((call.rid, protocol.REPLY, b"\xc1", b"")), NOW_NS)
    with pytest.raises(errors.ProtocolError):
        core.reply(call)


def test_replies_to_unknown_or_forgotten_calls_are_dropped(core):
    call = core.request("m", b"x", NOW_NS)
    core.forget(call)
    assert core.in_flight == 0
    assert core.receive(replies(answer(call.rid, b"late"), answer(b"unknown", b"?")),
                        NOW_NS) == []
    assert call.outcome is None


# ---------------------------------------------------------------- local deadlines

def test_a_silent_call_fails_at_its_deadline_never_before(core, monkeypatch):
    monkeypatch.setattr(helpers, "GRACE_MS", 20)
    short = core.request("m", b"s", NOW_NS, timeout_ms=30)
    long = core.request("m", b"l", NOW_NS, timeout_ms=200)
    answered = core.request("m", b"a", NOW_NS, timeout_ms=30)
    core.receive(replies(answer(answered.rid, b"ok")), NOW_NS + 10 * MS)
    assert short.deadline_ns == NOW_NS + 50 * MS  # its timeout and the grace
    assert core.expire(NOW_NS + 50 * MS - 1) == []
    assert core.expire(NOW_NS + 50 * MS) == [short]
    with pytest.raises(errors.DeadlineExceeded, match="within 50 ms"):
        core.reply(short)
    with pytest.raises(TimeoutError):  # a DeadlineExceeded is a TimeoutError
        core.reply(short)
    assert core.expire(NOW_NS + 219 * MS) == [] and core.in_flight == 1
    assert core.expire(NOW_NS + 10**12) == [long] and core.in_flight == 0
    assert core.receive(replies(answer(short.rid, b"too late")), NOW_NS) == []
    assert core.reply(answered).body == b"ok"


def test_a_request_without_a_timeout_waits_the_default():
    call = ClientCore().request("m", b"x", NOW_NS)
    assert call.deadline_ns == NOW_NS + helpers.DEFAULT_WAIT_MS * MS


def test_deadlines_in_many_buckets_expire_in_order_and_only_when_due():
    core = ClientCore()
    calls = [core.request("m", b"x", NOW_NS + index * DEADLINE_BUCKET_NS // 3,
                          timeout_ms=100) for index in range(30)]
    for index in range(0, 30, 5):  # some are answered: they never expire
        core.forget(calls[index])
    expired = []
    for step in range(0, 40):
        now_ns = calls[0].deadline_ns + step * DEADLINE_BUCKET_NS // 4
        newly = core.expire(now_ns)
        assert all(call.deadline_ns <= now_ns for call in newly)
        expired += newly
    assert expired == [call for index, call in enumerate(calls) if index % 5]
    assert core.in_flight == 0


def test_a_call_whose_bucket_passed_while_others_were_made_still_expires():
    core = ClientCore()
    silent = core.request("m", b"s", NOW_NS, timeout_ms=10)
    answered = core.request("m", b"a", NOW_NS, timeout_ms=10)
    core.receive(replies(answer(answered.rid, b"ok")), NOW_NS + MS)
    later_ns = silent.deadline_ns + 10 * DEADLINE_BUCKET_NS  # both buckets' time has passed
    fresh = core.request("m", b"f", later_ns, timeout_ms=10)  # retires the past buckets
    assert core.expire(later_ns) == [silent]
    assert core.reply(answered).body == b"ok" and core.in_flight == 1
    assert core.expire(fresh.deadline_ns) == [fresh]


# ---------------------------------------------------------------- refusal hints

def test_a_deadline_unreachable_hint_refuses_its_route_here_until_it_runs_out(core):
    first = core.request("m", b"x", NOW_NS, timeout_ms=100)
    sent(core)
    core.receive(replies(failure(first.rid, "deadline_unreachable", "late, 9 ahead", 503,
                                 retry_after_ms=300)), NOW_NS)
    with pytest.raises(errors.DeadlineUnreachable):
        core.reply(first)
    refused = core.request("m", b"x", NOW_NS + 100 * MS, timeout_ms=100)
    with pytest.raises(errors.QueueFull, match="9 ahead") as info:  # a kind of QueueFull
        core.reply(refused)
    assert type(info.value) is errors.DeadlineUnreachable
    assert info.value.retry_after_ms == 200  # what is left of the hint
    assert core.in_flight == 0 and core.messages() == []  # never sent
    other = core.request("m", b"y", NOW_NS + 100 * MS, timeout_ms=200)  # another route
    later = core.request("m", b"z", NOW_NS + 300 * MS, timeout_ms=100)  # the hint ran out
    assert [rid for rid, *_ in sent(core)] == [other.rid, later.rid]


def test_other_errors_and_control_calls_leave_no_hint(core):
    queued = core.request("m", b"x", NOW_NS, timeout_ms=100)
    bare = core.request("m", b"x", NOW_NS, timeout_ms=100)
    control, _frames = core.control("describe", {}, NOW_NS)
    core.receive(replies(failure(queued.rid, "queue_full", "full", 503, 50),
                         failure(bare.rid, "deadline_unreachable", "late", 503),
                         failure(control.rid, "deadline_unreachable", "late", 503, 50)), NOW_NS)
    assert core.request("m", b"x", NOW_NS, timeout_ms=100).outcome is None


def test_refusal_hints_alone():
    hints = RefusalHints()
    route, other = protocol.encode_route("m", None, 100), protocol.encode_route("m", None, 200)
    hints.note(route, b"\xc1 garbage", NOW_NS)
    assert not hints
    hints.note(route, protocol.encode_error_info("deadline_unreachable", "late", 503, 30),
               NOW_NS)
    assert hints.refusal(route, NOW_NS + 29 * MS + 1).retry_after_ms == 1
    assert hints.refusal(other, NOW_NS) is None
    assert hints.refusal(route, NOW_NS + 30 * MS) is None
    assert not hints  # ran out: forgotten


# ---------------------------------------------------------------- control, failures, close

def test_a_control_call_is_sent_at_once_and_answers_a_map(core):
    call, frames = core.control("describe", {"model": "m"}, NOW_NS)
    assert frames[:3] == [protocol.VERSION, protocol.CONTROL, call.rid]
    assert protocol.parse_control(frames[3]) == {"op": "describe", "model": "m"}
    assert core.messages() == []  # not a request
    core.receive(replies(answer(call.rid, msgpack.packb({"pong": True}))), NOW_NS)
    assert core.control_answer(call) == {"pong": True}
    empty, _frames = core.control("stop", {}, NOW_NS)
    listed, _frames = core.control("ping", {}, NOW_NS)
    failed, _frames = core.control("ping", {}, NOW_NS)
    core.receive(replies(answer(empty.rid), answer(listed.rid, msgpack.packb([1])),
                         failure(failed.rid, "shutting_down", "bye", 503)), NOW_NS)
    assert core.control_answer(empty) == {}
    with pytest.raises(errors.ProtocolError, match="map"):
        core.control_answer(listed)
    with pytest.raises(errors.ShuttingDown):
        core.control_answer(failed)


def test_a_control_call_waits_its_own_timeout(core):
    call, _frames = core.control("ping", {}, NOW_NS, timeout_ms=50)
    assert core.expire(NOW_NS + 49 * MS) == []
    assert core.expire(NOW_NS + 50 * MS) == [call]
    with pytest.raises(errors.DeadlineExceeded, match="control 'ping'"):
        core.control_answer(call)


def test_a_message_that_could_not_be_sent_fails_its_calls(core):
    calls = [core.request("m", b"x", NOW_NS) for _ in range(3)]
    (message,) = core.messages()
    error = errors.BrokerUnavailable("full")
    assert core.fail_unsent(message, error) == calls
    assert core.in_flight == 0
    for call in calls:
        with pytest.raises(errors.BrokerUnavailable):
            core.reply(call)


def test_close_fails_the_waiting_calls_and_refuses_new_ones(core):
    answered = core.request("m", b"x", NOW_NS)
    core.receive(replies(answer(answered.rid, b"ok")), NOW_NS)
    waiting = core.request("m", b"y", NOW_NS)
    assert core.close() == [waiting]
    assert core.closed and core.in_flight == 0 and core.messages() == []
    with pytest.raises(errors.ShuttingDown):
        core.reply(waiting)
    assert core.reply(answered).body == b"ok"
    with pytest.raises(errors.ShuttingDown):
        core.request("m", b"z", NOW_NS)
    with pytest.raises(errors.ShuttingDown):
        core.control("ping", {}, NOW_NS)


def test_the_package_names_the_clients():
    from zerobatch.api.aio_client import AsyncClient
    from zerobatch.api.client import Client

    assert (zerobatch.Client, zerobatch.AsyncClient) == (Client, AsyncClient)
    assert {"Client", "AsyncClient"} <= set(dir(zerobatch)) & set(zerobatch.__all__)
    with pytest.raises(AttributeError):
        zerobatch.NoSuchThing  # noqa: B018
