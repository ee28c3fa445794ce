"""Refusal hints on the wire: after the broker refuses a request as deadline_unreachable with
retry_after_ms, both clients refuse that route themselves until then, without sending; other
routes and expired hints go to the broker. The hints' rules, clock passed in, are tested in
tests/unit/test_client_core.py."""

from __future__ import annotations

import asyncio
import queue
import time

import pytest

from tests.support.fake_client_broker import reply_frames
from zerobatch import protocol
from zerobatch.api.aio_client import AsyncClient
from zerobatch.api.client import Client
from zerobatch.errors import DeadlineUnreachable, QueueFull

HINT_MS = 300


def refuse_with_hint(broker, retry_after_ms=HINT_MS, code="deadline_unreachable"):
    msg = broker.next()
    broker.send(msg.identity, protocol.encode_error(protocol.rid_head(msg.rid), code,
                                                    "too late, 9 ahead", 503, retry_after_ms))
    return msg


def assert_nothing_sent(broker):
    with pytest.raises(queue.Empty):
        broker.next(timeout_s=0.1)


def test_sync_client_refuses_a_hinted_route_itself(broker):
    with Client(broker.address) as client:
        first = client.submit("m", b"x", timeout_ms=100)
        refuse_with_hint(broker)
        with pytest.raises(DeadlineUnreachable):
            first.result()
        started = time.monotonic()
        with pytest.raises(QueueFull):  # DeadlineUnreachable is a kind of QueueFull
            client.predict("m", b"x", timeout_ms=100)
        assert time.monotonic() - started < 0.05
        assert_nothing_sent(broker)
        other = client.submit("m", b"y", timeout_ms=200)  # another deadline: another route
        msg = broker.next()
        broker.send(msg.identity, reply_frames(msg.rid, b"ok"))
        assert other.result().body == b"ok"
        time.sleep(HINT_MS / 1000)
        late = client.submit("m", b"z", timeout_ms=100)
        msg = broker.next()  # the hint ran out: asked again
        broker.send(msg.identity, reply_frames(msg.rid, b"again"))
        assert late.result().body == b"again"


def test_async_client_refuses_a_hinted_route_itself(broker, run):
    async def scenario():
        async with AsyncClient(broker.address) as client:
            first = asyncio.ensure_future(client.predict("m", b"x", timeout_ms=100))
            await asyncio.sleep(0)
            await asyncio.get_running_loop().run_in_executor(None, refuse_with_hint, broker)
            with pytest.raises(DeadlineUnreachable):
                await first
            with pytest.raises(DeadlineUnreachable):
                await client.predict("m", b"x", timeout_ms=100)
            return client.in_flight

    assert run(scenario()) == 0
    assert_nothing_sent(broker)
