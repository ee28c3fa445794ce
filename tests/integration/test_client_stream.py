"""Streamed replies (PARTIAL chunks before the final REPLY) through Client.stream,
AsyncClient.stream and AsyncClient.predict_or_stream, against the fake broker thread: each
chunk reaches the caller before the next one exists."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.fake_client_broker import error_frames, reply_frames
from zerobatch import errors, protocol
from zerobatch.api.aio_client import ReplyStream
from zerobatch.api.client import AsyncClient, Client
from zerobatch.api.client_helpers import Reply

WAIT_S = 5.0


def chunk(broker, msg, body, status=200, content_type="text/plain"):
    broker.send(msg.identity, reply_frames(msg.rid, body, status=status,
                                           content_type=content_type,
                                           command=protocol.PARTIAL))


# ---------------------------------------------------------------- Client.stream

def test_sync_stream_yields_each_chunk_as_it_arrives_then_the_final_body(broker):
    with Client(broker.address) as client:
        stream = client.stream("m", b"x", timeout_ms=3000)
        other = client.submit("m", b"y")
        first = broker.next()
        msg_other = broker.next()
        chunk(broker, first, b"one")
        assert next(stream) == b"one"  # yielded before the next chunk exists
        chunk(broker, first, b"two")
        broker.reply(msg_other, b"other")  # another request's reply is filed, not streamed
        assert next(stream) == b"two"
        chunk(broker, first, b"three")
        broker.reply(first, b"final")
        assert list(stream) == [b"three", b"final"]
        assert other.result().body == b"other"
        assert client.in_flight == 0


def test_sync_stream_of_a_plain_reply_yields_its_body(broker):
    with Client(broker.address) as client:
        stream = client.stream("m", b"x")
        broker.reply(broker.next(), b"whole")
        assert list(stream) == [b"whole"]


def test_sync_stream_error_after_chunks_raises_its_typed_error(broker):
    with Client(broker.address) as client:
        stream = client.stream("m", b"x")
        msg = broker.next()
        chunk(broker, msg, b"one")
        assert next(stream) == b"one"
        broker.send(msg.identity, error_frames(msg.rid, "handler_error", "boom", 500))
        with pytest.raises(errors.HandlerError, match="boom"):
            next(stream)


def test_sync_stream_abandoned_forgets_its_request(broker):
    with Client(broker.address) as client:
        stream = client.stream("m", b"x")
        msg = broker.next()
        chunk(broker, msg, b"one")
        assert next(stream) == b"one"
        stream.close()
        assert client.in_flight == 0
        chunk(broker, msg, b"late")
        broker.reply(msg, b"late final")
        probe = client.submit("m", b"p")
        broker.reply(broker.next(), b"probe")
        assert probe.result().body == b"probe"


def test_predict_still_joins_chunks(broker):
    with Client(broker.address) as client:
        pending = client.submit("m", b"x")
        msg = broker.next()
        chunk(broker, msg, b"a")
        broker.reply(msg, b"b")
        assert pending.result().body == b"ab"


# ---------------------------------------------------------------- AsyncClient

async def next_msg(broker):
    (msg,) = await asyncio.to_thread(broker.take, 1)
    return msg


def test_async_stream_yields_chunks_in_order(run, broker):
    async def main():
        async with AsyncClient(broker.address) as client:
            stream = client.stream("m", b"x", timeout_ms=3000)
            first = asyncio.ensure_future(stream.__anext__())
            msg = await next_msg(broker)
            chunk(broker, msg, b"one")
            assert await first == b"one"
            chunk(broker, msg, b"two")
            assert await stream.__anext__() == b"two"
            chunk(broker, msg, b"three")
            broker.reply(msg, b"final")
            assert [c async for c in stream] == [b"three", b"final"]
            assert client.in_flight == 0
    run(main())


def test_predict_or_stream_resolves_at_the_first_chunk(run, broker):
    async def main():
        async with AsyncClient(broker.address) as client:
            task = asyncio.ensure_future(client.predict_or_stream("m", b"x"))
            msg = await next_msg(broker)
            chunk(broker, msg, b"one", status=201, content_type="text/event-stream")
            stream = await task
            assert type(stream) is ReplyStream
            assert (stream.status, stream.content_type) == (201, "text/event-stream")
            chunk(broker, msg, b"two")
            broker.reply(msg, b"end")
            assert [c async for c in stream.chunks()] == [b"one", b"two", b"end"]
            # a reply without chunks resolves as a plain Reply
            task = asyncio.ensure_future(client.predict_or_stream("m", b"y"))
            broker.reply(await next_msg(broker), b"plain")
            reply = await task
            assert type(reply) is Reply and reply.body == b"plain"
    run(main())


def test_async_stream_error_after_a_chunk_raises(run, broker):
    async def main():
        async with AsyncClient(broker.address) as client:
            stream = client.stream("m", b"x")
            first = asyncio.ensure_future(stream.__anext__())
            msg = await next_msg(broker)
            chunk(broker, msg, b"one")
            assert await first == b"one"
            broker.send(msg.identity, error_frames(msg.rid, "handler_error", "late boom", 500))
            with pytest.raises(errors.HandlerError, match="late boom"):
                await stream.__anext__()
    run(main())


def test_async_stream_times_out_locally(run, broker):
    async def main():
        async with AsyncClient(broker.address) as client:
            answer = asyncio.ensure_future(client.predict_or_stream("m", b"x", timeout_ms=1))
            msg = await next_msg(broker)
            chunk(broker, msg, b"one")
            stream = await answer
            chunks = stream.chunks()
            assert await chunks.__anext__() == b"one"
            with pytest.raises(errors.DeadlineExceeded):
                await chunks.__anext__()  # no final reply within 1 ms + the grace
            assert client.in_flight == 0
    run(main())
