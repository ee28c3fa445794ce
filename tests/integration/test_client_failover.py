"""The clients over two real brokers (api.client_pool): requests spread over both, one
broker stopped (gracefully) or killed mid-run, the requests after it served by the other, the
ones in flight to the dead broker answered (BrokerUnavailable) rather than left hanging, and
the broker started again on the same address served again; for Client and AsyncClient."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.fake_client_broker import FakeBroker, Received, echo, error_frames
from tests.support.servers import Server, finish
from zerobatch import errors
from zerobatch.api import client_pool
from zerobatch.api.aio_client import AsyncClient
from zerobatch.api.client import Client

pytestmark = pytest.mark.integration

MODELS = {"echo": "echo", "slow": "slow"}
#: the longest any one call may take here: detection is PING_TIMEOUT_MS plus an interval
CALL_LIMIT_S = 10.0
#: how long a restarted broker may take to be found up again (its start plus a backoff)
REJOIN_LIMIT_S = 60.0


def requests_served(server: Server, model: str = "echo") -> int:
    for entry in server.describe()["models"]:
        if entry["modelName"] == model:
            return entry["requests"]
    raise KeyError(model)


def restart_on(make_server, address: str) -> Server:
    """A new server whose broker listens on address (the CLI's last --client-address wins)."""
    server = make_server(MODELS, "--client-address", address)
    server.client_address = address
    return server


@pytest.fixture
def servers(make_server):
    return make_server(MODELS), make_server(MODELS)


def test_blocking_client_spreads_fails_over_and_rejoins(servers, make_server):
    one, two = servers
    with Client([one.client_address, two.client_address], timeout_ms=5000) as client:
        bodies = [b"%d" % i for i in range(20)]
        assert [client.predict("echo", body).body for body in bodies] == bodies
        assert requests_served(one) == 10 and requests_served(two) == 10

        pending = [client.submit("slow", {"sleep_ms": 300}) for _ in range(4)]
        finish(one)  # graceful: queued requests are refused (and resent), running ones finish
        for handle in pending:
            try:
                assert handle.result(timeout_s=CALL_LIMIT_S).status == 200
            except errors.BrokerUnavailable:
                pass
        failed = 0
        for i in range(20):  # at most the first request to the dead broker fails
            try:
                assert client.predict("echo", b"%d" % i).body == b"%d" % i
            except errors.BrokerUnavailable as exc:
                assert one.client_address in str(exc)
                failed += 1
        assert failed <= 1
        assert client.brokers_up == [two.client_address]
        before = requests_served(two)
        for _ in range(10):  # found down: all the following go to the other
            assert client.predict("echo", b"x").body == b"x"
        assert requests_served(two) == before + 10

        again = restart_on(make_server, one.client_address)
        deadline = time.monotonic() + REJOIN_LIMIT_S
        while one.client_address not in client.brokers_up:
            assert time.monotonic() < deadline, "the restarted broker never rejoined"
            assert client.predict("echo", b"y").body == b"y"
            time.sleep(0.05)
        for _ in range(10):
            assert client.predict("echo", b"z").body == b"z"
        assert requests_served(again) >= 4
        assert client.ping(broker=one.client_address)


def test_async_client_spreads_fails_over_and_rejoins(servers, make_server):
    one, two = servers
    addresses = [one.client_address, two.client_address]

    async def spread(client, count):
        bodies = [b"%d" % i for i in range(count)]
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.predict("echo", body) for body in bodies)), CALL_LIMIT_S)
        assert [reply.body for reply in replies] == bodies

    async def outcome(awaitable):
        try:
            return (await awaitable).status
        except errors.BrokerUnavailable as exc:
            exc.add_note(f"at {time.monotonic()}")
            return exc

    async def main():
        async with AsyncClient(addresses, timeout_ms=20_000) as client:
            await spread(client, 20)
            assert requests_served(one) == 10 and requests_served(two) == 10

            # killed outright mid-run: its in-flight requests never get an answer from it
            slow = [asyncio.ensure_future(outcome(client.predict("slow", {"sleep_ms": 2000})))
                    for _ in range(4)]
            await asyncio.sleep(0.5)  # sent, and running or queued on both brokers
            assert client.in_flight == 4
            one.kill_leftovers()
            started = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(*slow), CALL_LIMIT_S)
            lost = [r for r in results if isinstance(r, errors.BrokerUnavailable)]
            assert lost and results.count(200) + len(lost) == 4, results  # spread: 2 and 2
            assert all(one.client_address in str(exc) for exc in lost)
            lost_at = max(float(exc.__notes__[0].split()[1]) for exc in lost)
            assert lost_at - started < 5  # a ping interval and timeout, not the call's 20 s
            assert client.brokers_up == [two.client_address]
            before = requests_served(two)
            await spread(client, 10)  # all the following go to the other
            assert requests_served(two) == before + 10

            again = await asyncio.to_thread(restart_on, make_server, one.client_address)
            deadline = time.monotonic() + REJOIN_LIMIT_S
            while one.client_address not in client.brokers_up:
                assert time.monotonic() < deadline, "the restarted broker never rejoined"
                await asyncio.sleep(0.05)
            await spread(client, 10)
            assert requests_served(again) >= 4
            assert await client.ping(broker=one.client_address)
        assert client.closed

    asyncio.run(main())


def stopping(msg: Received) -> list:
    """A broker that is stopping: it answers pings and refuses every request unrun."""
    if msg.route is None:
        return echo(msg)
    return error_frames(msg.rid, "shutting_down", "the server is stopping", 503)


def test_a_shutting_down_refusal_is_resent_to_another_broker():
    with FakeBroker(stopping) as leaving, FakeBroker(echo) as staying:
        with Client([leaving.address, staying.address], timeout_ms=5000) as client:
            assert client.predict("m", b"a").body == b"a"  # refused by the first, resent
            assert client.brokers_up == [staying.address]
            assert b"".join(client.stream("m", b"s")) == b"s"
        with Client([leaving.address, staying.address], timeout_ms=5000) as client:
            assert list(client.stream("m", b"u")) == [b"u"]  # a stream refused: resent too
            assert client.brokers_up == [staying.address]

        async def main():
            async with AsyncClient([leaving.address, staying.address]) as client:
                assert (await client.predict("m", b"b")).body == b"b"
                assert client.brokers_up == [staying.address]
                assert [chunk async for chunk in client.stream("m", b"t")] == [b"t"]
                assert (await client.control("status", broker=0))["op"] == "status"

        asyncio.run(main())


def test_no_broker_up_fails_fast_naming_the_addresses():
    silent = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]  # nothing listens on either
    with Client(silent, timeout_ms=5000) as client:
        with pytest.raises(errors.BrokerUnavailable):  # found silent by its ping
            client.predict("echo", b"a")
        deadline = time.monotonic() + CALL_LIMIT_S
        while client.brokers_up:
            with pytest.raises(errors.BrokerUnavailable):
                client.predict("echo", b"b")
            assert time.monotonic() < deadline
        started = time.monotonic()
        with pytest.raises(errors.BrokerUnavailable) as caught:
            client.predict("echo", b"c")
        assert time.monotonic() - started < 0.5
        assert all(address in str(caught.value) for address in silent)
    assert client_pool.PING_TIMEOUT_MS < CALL_LIMIT_S * 1000


def test_single_address_still_builds_the_plain_client(servers):
    one, _two = servers
    with Client(one.client_address) as client:
        assert type(client) is Client
        assert client.predict("echo", b"q").body == b"q"
