"""The sync ZeroMQ client against a fake broker thread: frames on the wire, replies filed by
rid while another call waits, typed errors, local timeouts, control calls. What the client
core decides on its own (encoding, decoding, every error code, refusals) is tested without
sockets in tests/unit/test_client_core.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

import zerobatch.api.client_helpers as helpers
from tests.support.fake_client_broker import (
    control_reply,
    error_frames,
    reply_frames,
)
from zerobatch import errors, protocol
from zerobatch.api.client import Client, PendingReply, Reply

SHORT_MS = 3000


@pytest.fixture
def client(broker):
    with Client(broker.address, timeout_ms=SHORT_MS) as sync_client:
        yield sync_client


@pytest.fixture
def quick_grace(monkeypatch):
    """Local timeouts after timeout_ms + 20 ms instead of + 1 s."""
    monkeypatch.setattr(helpers, "GRACE_MS", 20)


# ---------------------------------------------------------------- bodies on the wire

def test_predict_sends_the_body_and_content_type_and_reads_the_answer(echo_broker):
    """The body encodings themselves are the core's (tests/unit/test_client_core.py); here
    one goes over a real socket and back."""
    with Client(echo_broker.address) as client:
        reply = client.predict("digits", {"x": [1, 2]})
    msg = echo_broker.next()
    assert (msg.body, msg.content_type) == (b'{"x":[1,2]}', "application/json")
    assert msg.route == ("digits", None, 0)
    assert msg.headers is None and msg.request_id is None
    assert reply.status == 200 and reply.json() == {"x": [1, 2]}
    assert reply.content_type == "application/json"


def test_route_and_meta_carry_version_timeout_headers_and_request_id(echo_broker):
    with Client(echo_broker.address, timeout_ms=700) as client:
        client.predict("m", b"1")
        client.predict("m", b"2", version="2.0", timeout_ms=50, content_type="image/png",
                       headers={"x-a": "b"}, request_id="req-1")
        client.predict("m", b"3", timeout_ms=0)
    first, second, third = echo_broker.take(3)
    assert first.route == ("m", None, 700)
    assert second.route == ("m", "2.0", 50)
    assert (second.content_type, second.headers, second.request_id) == (
        "image/png", {"x-a": "b"}, "req-1")
    assert third.route == ("m", None, 0)


def test_reply_fields_text_and_json(broker, client):
    pending = client.submit("m", b"")
    msg = broker.next()
    broker.reply(msg, b'{"a": 1}', status=201, content_type="application/json",
                 headers={"x-h": "v"})
    reply = pending.result()
    assert isinstance(reply, Reply)
    assert (reply.status, reply.content_type, reply.headers) == (201, "application/json",
                                                                {"x-h": "v"})
    assert reply.json() == {"a": 1} and reply.text == '{"a": 1}'
    latin = Reply(200, "text/plain; charset=latin-1", None, "é".encode("latin-1"))
    assert latin.text == "é" and latin.headers == {}


def test_large_body_round_trip(echo_broker):
    body = bytes(range(256)) * 1024  # 256 KiB: sent without a copy
    with Client(echo_broker.address) as client:
        assert client.predict("m", body).body == body


def test_unsupported_body_type_is_a_type_error(client):
    with pytest.raises(TypeError, match="cannot send a body"):
        client.submit("m", object())


def test_bad_route_arguments_fail_before_sending(client):
    with pytest.raises(ValueError):
        client.submit("", b"")
    with pytest.raises(ValueError):
        client.submit("m", b"", timeout_ms=-1)
    assert client.in_flight == 0


# ---------------------------------------------------------------- many in flight

def test_many_submits_answered_out_of_order_land_on_their_handles(broker, client):
    handles = [client.submit("m", str(i)) for i in range(20)]
    assert client.in_flight == 20
    received = broker.take(20)
    order = received[::2] + received[1::2][::-1]  # out of order
    for msg in order:
        broker.reply(msg, b"answer-" + msg.body)
    # wait on them in yet another order: each wait files the others' replies
    for i in (19, 0, 7, *range(20)):
        assert handles[i].result().body == b"answer-" + str(i).encode()
    assert client.in_flight == 0


def test_result_with_timeout_s_leaves_the_request_pending(broker, client):
    pending = client.submit("m", b"x")
    msg = broker.next()
    with pytest.raises(TimeoutError) as info:
        pending.result(timeout_s=0.05)
    assert not isinstance(info.value, errors.DeadlineExceeded)
    assert not pending.done() and client.in_flight == 1
    broker.reply(msg, b"late but fine")
    assert pending.result(timeout_s=SHORT_MS / 1000).body == b"late but fine"
    assert pending.done()


def test_partial_chunks_are_joined_before_the_final_body(broker, client):
    pending = client.submit("m", b"x")
    msg = broker.next()
    broker.send(msg.identity, reply_frames(msg.rid, b"one,", command=protocol.PARTIAL))
    broker.send(msg.identity, reply_frames(msg.rid, b"two,", command=protocol.PARTIAL))
    broker.reply(msg, b"end", content_type="text/plain")
    assert pending.result().body == b"one,two,end"


# ---------------------------------------------------------------- errors

def test_error_reply_raises_the_typed_error(broker, client):
    pending = client.submit("m", b"x")
    msg = broker.next()
    broker.send(msg.identity, error_frames(msg.rid, "handler_error", "boom", 500))
    with pytest.raises(errors.HandlerError) as info:
        pending.result()
    assert info.value.message == "boom" and info.value.http_status == 500


def test_silent_broker_gives_a_local_deadline_and_late_replies_are_dropped(
        broker, quick_grace):
    with Client(broker.address) as client:
        pending = client.submit("m", b"x", timeout_ms=30)
        msg = broker.next()
        with pytest.raises(errors.DeadlineExceeded):
            pending.result()
        with pytest.raises(TimeoutError):  # the same error again, and it is a TimeoutError
            pending.result()
        assert client.in_flight == 0
        broker.reply(msg, b"too late")  # dropped: the rid was forgotten
        nxt = client.submit("m", b"y", timeout_ms=SHORT_MS)
        broker.reply(broker.next(), b"fresh")
        assert nxt.result().body == b"fresh"


def test_malformed_replies_are_dropped(broker, client):
    pending = client.submit("m", b"x")
    msg = broker.next()
    broker.send(msg.identity, [b"garbage"])
    head = protocol.rid_head(msg.rid) + protocol.REPLY
    broker.send(msg.identity, [b"ZB9", protocol.REPLIES, head, b""])
    broker.send(msg.identity, [protocol.VERSION, protocol.REQUEST, head, b""])
    broker.send(msg.identity, [protocol.VERSION, protocol.REPLIES, head])
    broker.reply(msg, b"ok")
    assert pending.result().body == b"ok"


# ---------------------------------------------------------------- control, lifecycle

def test_control_and_ping(echo_broker):
    with Client(echo_broker.address) as client:
        assert client.control("describe", model="m") == {"pong": True, "op": "describe"}
        assert client.ping() is True
    describe, ping = echo_broker.take(2)
    assert describe.command == protocol.CONTROL
    assert describe.control == {"op": "describe", "model": "m"}
    assert ping.control == {"op": "ping"}


def test_control_error_and_silent_ping(broker, client):
    assert client.ping(timeout_ms=50) is False
    assert broker.next().control["op"] == "ping"
    pending_reply = client.submit("m", b"")  # still usable after a failed ping
    msg = broker.next()
    broker.send(msg.identity, control_reply(msg.rid, {"ok": 1}))
    assert pending_reply.result().status == 200


def test_control_error_reply_raises(broker):
    with Client(broker.address) as client:
        broker.handler = lambda m: error_frames(m.rid, "shutting_down", "bye", 503)
        with pytest.raises(errors.ShuttingDown):
            client.control("stop")
        assert client.ping() is False


def test_close_fails_pending_requests_and_refuses_new_ones(broker):
    client = Client(broker.address)
    pending = client.submit("m", b"x")
    client.close()
    client.close()  # idempotent
    assert client.closed
    with pytest.raises(errors.ShuttingDown):
        pending.result()
    with pytest.raises(errors.ShuttingDown):
        client.submit("m", b"x")
    assert isinstance(pending, PendingReply) and "done" in repr(pending)


def test_replies_coalesced_in_one_message_reach_each_pending_call():
    """The broker sends what one of its turns has for a client as one REPLIES message."""
    import zmq

    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout_ms=5000) as client:
            handles = [client.submit("m", b"%d" % i) for i in range(3)]
            received = []
            while len(received) < 3 and router.poll(5000):
                received.append(router.recv_multipart())
            replies = [received[0][0], protocol.VERSION, protocol.REPLIES]
            for message in reversed(received):
                rid, _route, _meta = protocol.split_request_head(message[3])
                replies += [rid + protocol.REPLY + protocol.encode_reply_meta(200, "text/plain"),
                            b"r" + message[4]]
            router.send_multipart(replies)
            assert [h.result(5).body for h in handles] == [b"r0", b"r1", b"r2"]
    finally:
        router.close()


def test_the_public_import_loads_the_clients_only_when_asked():
    """`import zerobatch` stays light (the broker and the workers import it); the clients
    come with the first access to their names."""
    code = ("import sys, zerobatch; "
            "assert 'zmq' not in sys.modules and 'zerobatch.api' not in sys.modules; "
            "assert {'Client', 'AsyncClient'} <= set(dir(zerobatch)); "
            "from zerobatch import AsyncClient, Client; "
            "from zerobatch.api.aio_client import AsyncClient as aio; "
            "from zerobatch.api.client import Client as sync; "
            "assert (Client, AsyncClient) == (sync, aio); print('ok')")
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
