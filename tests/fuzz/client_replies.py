"""Fuzz target: REPLIES messages fed to the clients' sans-IO core and its reply decoding.

A client with a few calls in flight (three requests, one of them streaming, and a control
call; their rids are the core's 8-byte counters 1 to 4) receives the messages of an input
(`decode_messages`). What must hold:

- `ClientCore.receive` never raises (a malformed message is logged and dropped);
- each finished call's `reply()` / `control_answer()` gives a Reply of the documented types
  or raises a typed ServingError; `stream_head()` gives (int, str | None, dict | None) or
  raises ProtocolError;
- a call answered once stays answered: later replies to it are dropped;
- afterwards the client still works: a new request (unless the broker's hint refuses its
  route for a while, which must then be DeadlineUnreachable) is answered by a well-formed
  reply, and every call left fails with DeadlineExceeded once its deadline passes.
"""

from __future__ import annotations

from typing import Any

from tests.fuzz import _harness

with _harness.instrumented("zerobatch"):
    from zerobatch import protocol as p
    from zerobatch.api.client_core import Call, ClientCore
    from zerobatch.api.client_helpers import Reply
    from zerobatch.errors import DeadlineExceeded, DeadlineUnreachable, ServingError

S = 1_000_000_000
MODEL = "m"
#: the rids the first calls get (the core counts from 1)
RIDS = tuple(n.to_bytes(8, "little") for n in range(1, 5))


def open_calls(core: ClientCore) -> list[Call]:
    """Three requests (the second streams) and a ping, in flight at time 0."""
    calls = [core.request(MODEL, b"a", 0, timeout_ms=1000),
             core.request(MODEL, {"k": [1]}, 0, version="2", streams=True),
             core.request(MODEL, "text", 0, timeout_ms=5)]
    core.messages()
    calls.append(core.control("ping", {}, 0)[0])
    assert tuple(call.rid for call in calls) == RIDS
    return calls


def decode_messages(data: bytes) -> list[list[bytes]]:
    """An input's messages: each a count byte (mod 16), then that many frames (u16 LE
    length, bytes)."""
    messages = []
    at = 0
    while at < len(data):
        count = data[at] % 16
        frames, at = _harness.take_frames(data, at + 1, count)
        messages.append(frames)
    return messages


def encode_messages(messages: list[list[bytes]]) -> bytes:
    return b"".join(bytes((len(frames),)) + _harness.put_frames(frames) for frames in messages)


def check_finished(core: ClientCore, call: Call) -> Any:
    """A finished call's result, checked for its types; a ServingError is returned."""
    if call.outcome is None:
        return None
    try:
        if call.route is None:
            result = ClientCore.control_answer(call)
            assert isinstance(result, dict)
            return result
        reply = ClientCore.reply(call)
    except ServingError as exc:
        return exc
    check_reply(reply)
    return reply


def check_reply(reply: Reply) -> None:
    assert type(reply.status) is int
    assert reply.content_type is None or type(reply.content_type) is str
    assert type(reply.headers) is dict
    assert all(type(k) is str and type(v) is str for k, v in reply.headers.items())
    memoryview(reply.body)


def run_messages(core: ClientCore, calls: list[Call], messages: list[list[bytes]]) -> None:
    """Feed the messages; check each finished call once, and that it stays finished."""
    done: dict[bytes, Any] = {}
    for now_ns, frames in enumerate(messages):
        woken = core.receive(frames, now_ns)
        assert all(isinstance(call, Call) for call in woken)
        for call in calls:
            if call.chunk_meta is not None:
                try:
                    status, content_type, headers = ClientCore.stream_head(call)
                except ServingError:
                    pass
                else:
                    assert type(status) is int
                    assert content_type is None or type(content_type) is str
                    assert headers is None or type(headers) is dict
                ClientCore.take_chunks(call)
            if call.outcome is not None:
                if call.rid in done:
                    assert call.outcome is done[call.rid], "a finished call changed its outcome"
                else:
                    done[call.rid] = call.outcome
                    check_finished(core, call)


def check_still_works(core: ClientCore, now_ns: int) -> None:
    """A new request gets its reply (or the broker's hint refuses it at once), and every
    call still waiting fails with DeadlineExceeded past its deadline."""
    call, message = core.request_message(MODEL, b"probe", now_ns, timeout_ms=1000)
    if message is None:
        assert isinstance(call.outcome, DeadlineUnreachable)
    else:
        rid_part = p.split_request_head(message[2])[0]
        reply = p.encode_client_reply(b"", rid_part, p.REPLY + p.encode_reply_meta(200, None),
                                      b"probe")[1:]
        assert core.receive(reply, now_ns) == [call]
        assert ClientCore.reply(call).body == b"probe"
    waiting = core.in_flight
    expired = core.expire(now_ns + 1000 * S)
    assert len(expired) == waiting and core.in_flight == 0
    assert all(isinstance(call.outcome, DeadlineExceeded) for call in expired)


def test_one_input(data: bytes) -> None:
    core = ClientCore()
    calls = open_calls(core)
    messages = decode_messages(data)
    run_messages(core, calls, messages)
    check_still_works(core, len(messages) + 1)


def seeds() -> list[bytes]:
    reply = p.REPLY + p.encode_reply_meta(200, "text/plain", {"x-a": "b"})
    error = p.ERROR + p.encode_error_info("deadline_unreachable", "later", 503, 250)
    partial = p.PARTIAL + p.encode_reply_meta(201, None, None)
    control = p.REPLY + p.encode_reply_meta(200, "application/msgpack")

    def head(rid: bytes, answer: bytes) -> bytes:
        return p.rid_head(rid) + answer

    return [encode_messages(messages) for messages in (
        [[p.VERSION, p.REPLIES, head(RIDS[0], reply), b"body"]],
        [[p.VERSION, p.REPLIES, head(RIDS[1], partial), b"c1", head(RIDS[1], partial), b"c2",
          head(RIDS[1], reply), b"end"]],
        [[p.VERSION, p.REPLIES, head(RIDS[2], error), b""],
         [p.VERSION, p.REPLIES, head(RIDS[3], control), p.packb({"status": "Healthy"})]],
        [[p.VERSION, p.REPLIES, head(RIDS[0], p.ERROR + p.encode_error_info(
            "queue_full", "full", 503)), b"", head(RIDS[3], p.ERROR + b"\x90"), b""]],
    )]


if __name__ == "__main__":
    _harness.run("client_replies", test_one_input, seeds())
