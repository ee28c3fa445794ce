"""The asyncio ZeroMQ client against a fake broker thread, on asyncio's loop and on uvloop:
concurrency by rid, the reader's wake-ups, coalesced sends, typed errors, local timeouts,
close. What the client core decides on its own is tested without sockets in
tests/unit/test_client_core.py."""

from __future__ import annotations

import asyncio

import pytest

import zerobatch.api.aio_client as aio_client
import zerobatch.api.client_helpers as helpers
from tests.support.fake_client_broker import FakeBroker, echo, error_frames, reply_frames
from zerobatch import errors, protocol
from zerobatch.api.client import AsyncClient

WAIT_S = 5.0


async def next_msg(broker, count=1):
    return await asyncio.to_thread(broker.take, count)


def reply_head(request_head: bytes) -> bytes:
    """The head of a REPLY to the request whose head this is."""
    rid, _route, _meta = protocol.split_request_head(request_head)
    return rid + protocol.REPLY + protocol.encode_reply_meta(200, "text/plain")


def test_fifty_concurrent_predicts_answered_in_reverse_order(run, broker):
    async def main():
        async with AsyncClient(broker.address) as client:
            tasks = [asyncio.ensure_future(client.predict("m", str(i))) for i in range(50)]
            received = await next_msg(broker, 50)
            assert client.in_flight == 50
            for msg in reversed(received):
                broker.reply(msg, b"r" + msg.body, content_type="text/plain")
            replies = await asyncio.gather(*tasks)
            assert [r.body for r in replies] == [b"r%d" % i for i in range(50)]
            assert client.in_flight == 0
            assert {m.route for m in received} == {("m", None, 0)}
            assert {m.content_type for m in received} == {"text/plain; charset=utf-8"}
    run(main())


def test_many_sequential_round_trips_never_stall(run):
    """The descriptor is edge-triggered: a lost wake-up would stall one of these calls."""
    with FakeBroker(echo) as fake:
        async def main():
            async with AsyncClient(fake.address) as client:
                for i in range(300):
                    reply = await client.predict("m", {"i": i})
                    assert reply.json() == {"i": i}
                for _ in range(5):  # bursts of concurrent calls between sequential ones
                    bodies = [bytes([i]) * (i + 1) for i in range(40)]
                    replies = await asyncio.gather(*(client.predict("m", b) for b in bodies))
                    assert [r.body for r in replies] == bodies
        run(main())


def test_bodies_headers_and_route_on_the_wire(run):
    with FakeBroker(echo) as fake:
        async def main():
            async with AsyncClient(fake.address, timeout_ms=900) as client:
                await client.predict("m", b"\x00raw", version="3", headers={"a": "b"},
                                     request_id="rq", content_type="image/jpeg")
                reply = await client.predict("m", {"k": "v"}, timeout_ms=0)
                assert reply.json() == {"k": "v"}
                large = bytes(200_000)
                assert (await client.predict("m", large)).body == large
        run(main())
        first, second, third = fake.take(3)
        assert first.route == ("m", "3", 900)
        assert (first.content_type, first.headers, first.request_id, first.body) == (
            "image/jpeg", {"a": "b"}, "rq", b"\x00raw")
        assert second.route == ("m", None, 0) and second.content_type == "application/json"
        assert len(third.body) == 200_000


@pytest.mark.parametrize("code", ["model_not_found", "queue_full", "deadline_exceeded",
                                  "handler_error", "worker_lost", "request_too_large"])
def test_error_replies_raise_typed_errors(run, broker, code):
    cls = errors.ERROR_BY_CODE[code]

    async def main():
        async with AsyncClient(broker.address) as client:
            task = asyncio.ensure_future(client.predict("m", b"x"))
            (msg,) = await next_msg(broker)
            broker.send(msg.identity, error_frames(msg.rid, code, "nope", cls.http_status))
            with pytest.raises(cls, match="nope"):
                await task
    run(main())


def test_partial_chunks_are_joined(run, broker):
    async def main():
        async with AsyncClient(broker.address) as client:
            task = asyncio.ensure_future(client.predict("m", b"x"))
            (msg,) = await next_msg(broker)
            broker.send(msg.identity, reply_frames(msg.rid, b"a", command=protocol.PARTIAL))
            broker.reply(msg, b"b")
            assert (await task).body == b"ab"
    run(main())


def test_silent_broker_times_out_locally_and_late_reply_is_dropped(run, broker, monkeypatch):
    monkeypatch.setattr(helpers, "GRACE_MS", 20)

    async def main():
        async with AsyncClient(broker.address) as client:
            with pytest.raises(errors.DeadlineExceeded):
                await client.predict("m", b"x", timeout_ms=30)
            assert client.in_flight == 0
            (late,) = await next_msg(broker)
            broker.reply(late, b"late")
            task = asyncio.ensure_future(client.predict("m", b"y", timeout_ms=3000))
            (msg,) = await next_msg(broker)
            broker.reply(msg, b"fresh")
            assert (await task).body == b"fresh"
    run(main())


def test_local_deadlines_fail_only_the_silent_calls_and_leave_nothing_behind(
        run, broker, monkeypatch):
    """One timer serves every call: answered calls leave no entry, silent ones fail in the
    order of their deadlines, never before, and the timer stops once nothing waits."""
    monkeypatch.setattr(helpers, "GRACE_MS", 20)
    monkeypatch.setattr(aio_client, "SWEEP_INTERVAL_S", 0.01)

    async def main():
        loop = asyncio.get_running_loop()
        async with AsyncClient(broker.address) as client:
            answered = [asyncio.ensure_future(client.predict("m", b"a", timeout_ms=5000))
                        for _ in range(20)]
            started = loop.time()
            short = asyncio.ensure_future(client.predict("m", b"s", timeout_ms=30))
            long = asyncio.ensure_future(client.predict("m", b"l", timeout_ms=200))
            for msg in (await next_msg(broker, 22))[:20]:
                broker.reply(msg, b"ok")
            assert [r.body for r in await asyncio.gather(*answered)] == [b"ok"] * 20
            assert client.in_flight == 2  # only the two silent calls are left
            with pytest.raises(errors.DeadlineExceeded):
                await short
            # its 30 ms and the 20 ms grace (uvloop's clock has millisecond steps: 1 ms slack)
            assert loop.time() - started >= 0.049
            assert not long.done()
            with pytest.raises(errors.DeadlineExceeded):
                await long
            assert loop.time() - started >= 0.219
            assert client.in_flight == 0
            assert client._sweeper is None  # the sweep that failed the last one stopped it
    run(main())


def test_cancelled_call_forgets_its_rid(run, broker):
    async def main():
        async with AsyncClient(broker.address) as client:
            task = asyncio.ensure_future(client.predict("m", b"x"))
            (msg,) = await next_msg(broker)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.in_flight == 0
            broker.reply(msg, b"nobody waits")
            assert await asyncio.wait_for(client.ping(timeout_ms=50), WAIT_S) is False
    run(main())


def test_control_and_ping(run):
    with FakeBroker(echo) as fake:
        async def main():
            async with AsyncClient(fake.address) as client:
                assert await client.control("describe", model="m") == {
                    "pong": True, "op": "describe"}
                assert await client.ping() is True
        run(main())
        describe, ping = fake.take(2)
        assert describe.control == {"op": "describe", "model": "m"}
        assert ping.control == {"op": "ping"}


def test_silent_ping_is_false(run, broker):
    async def main():
        async with AsyncClient(broker.address) as client:
            assert await client.ping(timeout_ms=50) is False
    run(main())


def test_close_fails_pending_calls_and_refuses_new_ones(run, broker):
    async def main():
        client = AsyncClient(broker.address)
        tasks = [asyncio.ensure_future(client.predict("m", b"x")) for _ in range(3)]
        await next_msg(broker, 3)
        await client.aclose()
        for task in tasks:
            with pytest.raises(errors.ShuttingDown):
                await task
        with pytest.raises(errors.ShuttingDown):
            await client.predict("m", b"x")
        client.close()  # idempotent
    run(main())


def test_requests_of_one_loop_turn_share_a_message_after_the_first(run):
    """The first request of a turn goes out at once when nothing else is in flight; the others
    of that turn follow together in one REQUEST message; while requests are in flight, a
    later turn's requests all go in one message; every one is answered (REPLIES in one message
    too)."""
    import zmq

    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def receive_messages(count: int) -> list[list[bytes]]:
        messages = []
        while len(messages) < count and router.poll(int(WAIT_S * 1000)):
            messages.append(router.recv_multipart())
        return messages

    async def main():
        async with AsyncClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000) as client:
            tasks = [asyncio.ensure_future(client.predict("m", b"%d" % i)) for i in range(5)]
            first, rest = await asyncio.to_thread(receive_messages, 2)
            assert len(first) == 1 + 2 + 2 and len(rest) == 1 + 2 + 2 * 4
            tasks += [asyncio.ensure_future(client.predict("m", b"%d" % i)) for i in range(5, 8)]
            (later,) = await asyncio.to_thread(receive_messages, 1)
            assert len(later) == 1 + 2 + 2 * 3  # five in flight: the first waits for the others
            assert client.in_flight == 8
            heads = [first[3]] + rest[3::2] + later[3::2]
            replies = [rest[0], protocol.VERSION, protocol.REPLIES]
            for index, head in enumerate(heads):
                replies += [reply_head(head), b"r%d" % index]
            router.send_multipart(replies)
            answers = await asyncio.gather(*tasks)
            assert [a.body for a in answers] == [b"r%d" % i for i in range(8)]

    try:
        run(main())
    finally:
        router.close()


def test_a_turn_with_more_requests_than_a_message_holds_sends_several(run, monkeypatch):
    import zmq

    monkeypatch.setattr(protocol, "MAX_BATCH_ITEMS", 3)
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def receive_rids(count: int) -> list[list[bytes]]:
        messages = []
        while sum(len(m[3::2]) for m in messages) < count and router.poll(int(WAIT_S * 1000)):
            messages.append(router.recv_multipart())
        return messages

    async def main():
        async with AsyncClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000) as client:
            tasks = [asyncio.ensure_future(client.predict("m", b"%d" % i)) for i in range(8)]
            messages = await asyncio.to_thread(receive_rids, 8)
            assert [len(m[3::2]) for m in messages] == [1, 3, 3, 1]
            for message in messages:
                for head in message[3::2]:
                    router.send_multipart([message[0], protocol.VERSION, protocol.REPLIES,
                                           reply_head(head), head])
            answers = await asyncio.gather(*tasks)
            assert len({a.body for a in answers}) == 8

    try:
        run(main())
    finally:
        router.close()
