"""The sans-IO broker pool (api.client_pool.BrokerPool) with the clock passed in: which broker
a request goes to, when each is pinged, how a broker goes down, backs off and rejoins; and
that a list of addresses (only a list) builds the pooled clients, with no socket opened."""

from __future__ import annotations

import pytest

from zerobatch import errors
from zerobatch.api import client_pool
from zerobatch.api.client_core import ClientCore
from zerobatch.api.client_pool import BrokerPool

A, B, C = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"
NOW_NS = 10**15
MS = 1_000_000


def test_round_robin_over_the_brokers_up():
    pool = BrokerPool([A, B, C])
    assert [pool.choose() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    pool.mark_down(1, NOW_NS)
    assert [pool.choose() for _ in range(4)] == [0, 2, 0, 2]


def test_least_in_flight_wins_and_ties_go_round_robin():
    pool = BrokerPool([A, B, C])
    assert pool.choose([5, 1, 3]) == 1
    assert pool.choose([0, 0, 0]) == 2  # the cursor moved past 1
    assert pool.choose([0, 0, 0]) == 0
    pool.mark_down(1, NOW_NS)
    assert pool.choose([4, 0, 4]) == 2  # 1 is down however idle


def test_none_up_fails_fast_naming_every_address():
    pool = BrokerPool([A, B])
    pool.mark_down(0, NOW_NS)
    pool.mark_down(1, NOW_NS)
    with pytest.raises(errors.BrokerUnavailable) as caught:
        pool.choose([0, 0])
    assert A in str(caught.value) and B in str(caught.value)
    assert isinstance(caught.value, ConnectionError)
    with pytest.raises(errors.BrokerUnavailable):
        pool.index_of(None)


def test_control_calls_go_to_the_first_up_or_the_one_named():
    pool = BrokerPool([A, B, C])
    assert pool.index_of(None) == 0
    pool.mark_down(0, NOW_NS)
    assert pool.index_of(None) == 1
    assert pool.index_of(A) == 0  # named: even when down
    assert pool.index_of(2) == 2
    with pytest.raises(ValueError):
        pool.index_of("tcp://elsewhere:9")
    with pytest.raises(ValueError):
        pool.index_of(3)


def test_up_brokers_are_pinged_every_interval_one_ping_at_a_time():
    pool = BrokerPool([A, B], ping_interval_ms=500)
    assert pool.pings_due(NOW_NS) == [0, 1]
    pool.ping_sent(0, NOW_NS)
    assert pool.pings_due(NOW_NS) == [1]  # one ping out per broker
    assert pool.ping_answered(0, True, NOW_NS + 2 * MS) is False
    assert pool.pings_due(NOW_NS + 501 * MS) == [1]
    assert pool.pings_due(NOW_NS + 502 * MS) == [0, 1]


def test_an_unanswered_ping_takes_a_broker_down_once():
    pool = BrokerPool([A, B])
    pool.ping_sent(1, NOW_NS)
    assert pool.ping_answered(1, False, NOW_NS) is True  # the pump fails its calls
    assert pool.up() == [0]
    pool.ping_sent(1, NOW_NS)
    assert pool.ping_answered(1, False, NOW_NS) is False  # already down: nothing to fail
    assert pool.mark_down(1, NOW_NS) is False


def test_a_down_broker_is_retried_with_a_doubling_backoff_and_rejoins():
    pool = BrokerPool([A, B], ping_interval_ms=500, retry_min_ms=100, retry_max_ms=350)
    assert pool.mark_down(0, NOW_NS) is True
    waits = []
    now = NOW_NS
    for _ in range(4):
        due = pool.brokers[0].due_ns
        assert 0 not in pool.pings_due(due - 1)
        assert 0 in pool.pings_due(due)
        waits.append((due - now) // MS)
        now = due
        pool.ping_sent(0, now)
        pool.ping_answered(0, False, now)
    assert waits == [100, 200, 350, 350]
    pool.ping_sent(0, now)
    assert pool.ping_answered(0, True, now) is False
    assert pool.up() == [0, 1]
    assert pool.brokers[0].failures == 0
    pool.mark_down(0, now)
    assert pool.brokers[0].due_ns - now == 100 * MS  # the backoff starts over


@pytest.mark.parametrize("addresses", [[], "tcp://a:1", [A, A], [A, ""], [A, None]])
def test_bad_address_lists_are_refused(addresses):
    with pytest.raises(errors.ConfigError):
        BrokerPool(addresses)


def test_fail_all_fails_every_call_and_keeps_the_core_open():
    core = ClientCore(1000)
    first = core.request("m", b"1", NOW_NS)
    second = core.request("m", b"2", NOW_NS)
    error = errors.BrokerUnavailable("gone")
    assert set(core.fail_all(error)) == {first, second}
    assert first.outcome is error and second.outcome is error
    assert core.in_flight == 0 and core.messages() == [] and not core.closed
    assert core.expire(NOW_NS + 10**12) == []
    with pytest.raises(errors.BrokerUnavailable):
        core.reply(first)


def test_a_list_builds_a_pooled_client_and_a_string_the_plain_one(monkeypatch):
    opened = []

    def connect(_context, address, *keys):
        opened.append(address)
        if keys[0] is not None:
            assert keys == ("server.key", "client.key_secret")
        return _FakeSocket()

    monkeypatch.setattr("zerobatch.api.client.connect_dealer", connect)
    monkeypatch.setattr("zerobatch.api.aio_client.connect_dealer", connect)
    from zerobatch.api.aio_client import AsyncClient
    from zerobatch.api.client import Client

    plain = Client(A)
    assert type(plain) is Client and plain.address == A
    pooled = Client([A, B], timeout_ms=250)
    assert isinstance(pooled, client_pool.PooledClient) and isinstance(pooled, Client)
    assert pooled.addresses == (A, B) and pooled.brokers_up == [A, B]
    assert pooled.timeout_ms == 250
    aio = AsyncClient((A, B))
    assert isinstance(aio, client_pool.PooledAsyncClient) and isinstance(aio, AsyncClient)
    assert type(AsyncClient(B)) is AsyncClient
    assert opened == [A, A, B, A, B, B]
    curve = Client([A, B], curve_server_key="server.key", curve_secret_key="client.key_secret")
    assert opened[-2:] == [A, B]  # the keys reached both brokers' sockets
    curve.close()
    pooled.close()
    aio.close()
    assert pooled.closed and aio.closed
    with pytest.raises(errors.ShuttingDown):
        pooled.submit("m", b"")


class _FakeSocket:
    def getsockopt(self, _option):
        return -1

    def close(self, linger=None):
        pass


def test_a_ping_out_does_not_count_as_load():
    pool = BrokerPool([A, B])
    pool.ping_sent(1, NOW_NS)
    assert [pool.choose([0, 1]), pool.choose([0, 1])] == [0, 1]
    assert pool.choose([1, 1]) == 1
