"""Several brokers behind one client: `Client([...])` and `AsyncClient([...])` spread
requests over the brokers that are up and fail over when one dies.

Design. Each broker gets a whole single-broker client of its own (a `member`: one DEALER, one
`ClientCore`), and the pooled client is a pump over those members plus `BrokerPool`, the
sans-IO record of which broker is up, when each is due a ping and how long a down one waits
before the next. Members share nothing (their rids, refusal hints and deadlines are per
broker), so a broker that dies is dealt with by failing its member's calls and replacing the
member with a fresh one (a new socket, as the Paranoid Pirate pattern reconnects), which
also drops whatever libzmq still queued for it: nothing sent before the failure reaches a
restarted broker. The single-broker clients are untouched: `Client("tcp://...")` builds the
plain client, and only a list or tuple of addresses builds a pooled one (`Client.__new__`),
so the one-broker hot path costs what it did.

Choice. A request goes to the up broker with the fewest calls in flight, ties broken round
robin (so sequential requests alternate). Control calls (`control`, `ping`) go to the first
broker that is up, or to the one named with `broker=`.

Failure. A broker is down when a send to it fails (its queue is full: the request never left,
and is sent to another broker), when it refuses a request as `shutting_down` (the broker
answers that only for requests that never reached a worker, so the request is resent to
another broker), or when it leaves a ping unanswered for PING_TIMEOUT_MS. Pings go to each up
broker every PING_INTERVAL_MS: the asyncio client from a timer, the blocking client while a
caller waits in it (it has no thread). The calls in flight to a broker that goes down fail
with BrokerUnavailable and are not resent: the broker may have run them, and running a
prediction twice is not for the client to decide. A down broker is pinged after a backoff
(RETRY_MIN_MS, doubling to RETRY_MAX_MS) and rejoins when it answers. With none up, requests
fail at once with BrokerUnavailable naming the addresses. A broker that is stopping answers
pings until it exits, so it may rejoin for a moment; a request it then refuses is resent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator, Sequence

from zerobatch import protocol
from zerobatch.api.aio_client import AsyncClient
from zerobatch.api.client import Client, PendingReply
from zerobatch.api.client_core import Call, ClientCore
from zerobatch.api.client_helpers import Reply
from zerobatch.errors import BrokerUnavailable, ConfigError, ServingError, ShuttingDown
from zerobatch.transport import has_message, recv_bytes

__all__ = ["BrokerPool", "PooledAsyncClient", "PooledClient"]

#: how often an up broker is pinged
PING_INTERVAL_MS = 500
#: how long a ping may go unanswered before its broker is down
PING_TIMEOUT_MS = 1000
#: the wait before a down broker is pinged again, doubled per failed ping up to RETRY_MAX_MS
RETRY_MIN_MS = 250
RETRY_MAX_MS = 5000
#: the blocking client's longest wait on one socket before it looks at the pings again
TICK_S = 0.1

_MS = 1_000_000
_REPLY = protocol.REPLY


class BrokerState:
    """What the pool knows of one broker."""

    __slots__ = ("address", "up", "failures", "due_ns", "pinging")

    def __init__(self, address: str) -> None:
        self.address = address
        self.up = True  # until shown otherwise: the first request finds out
        #: failed pings (or sends) in a row, which set the backoff
        self.failures = 0
        #: when the next ping is due (an up broker) or the next retry (a down one)
        self.due_ns = 0
        self.pinging = False

    def __repr__(self) -> str:
        return f"<Broker {self.address} {'up' if self.up else 'down'}>"


class BrokerPool:
    """Which brokers are up, which to use next and which to ping: a decision object with the
    clock passed in (monotonic ns) and no sockets; the pumps act on what it says."""

    def __init__(self, addresses: Sequence[str], ping_interval_ms: int = PING_INTERVAL_MS,
                 retry_min_ms: int = RETRY_MIN_MS, retry_max_ms: int = RETRY_MAX_MS) -> None:
        if isinstance(addresses, str) or not addresses:
            raise ConfigError("give a list of broker addresses, e.g. "
                              "['tcp://h1:9500', 'tcp://h2:9500']")
        if not all(isinstance(address, str) and address for address in addresses):
            raise ConfigError(f"broker addresses must be non-empty strings: {addresses!r}")
        if len(set(addresses)) != len(addresses):
            raise ConfigError(f"a broker address is listed twice: {list(addresses)!r}")
        self.brokers = [BrokerState(address) for address in addresses]
        self.ping_interval_ns = ping_interval_ms * _MS
        self.retry_min_ns = retry_min_ms * _MS
        self.retry_max_ns = retry_max_ms * _MS
        self._cursor = 0

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(broker.address for broker in self.brokers)

    def up(self) -> list[int]:
        """The indexes of the brokers considered up."""
        return [index for index, broker in enumerate(self.brokers) if broker.up]

    def unavailable(self) -> BrokerUnavailable:
        return BrokerUnavailable("no broker is up (" + ", ".join(self.addresses)
                                 + "); each is pinged again after a backoff")

    def choose(self, loads: Sequence[int] | None = None) -> int:
        """The broker for the next request: of those up, the one with the least load
        (calls in flight, by index, counting a ping out to it, which is not counted), ties
        broken round robin; without loads, round robin. Raises BrokerUnavailable when none
        is up."""
        brokers = self.brokers
        count = len(brokers)
        best = load = -1
        for step in range(count):
            index = (self._cursor + step) % count
            if not brokers[index].up:
                continue
            if loads is None:
                best = index
                break
            mine = max(loads[index] - brokers[index].pinging, 0)
            if best < 0 or mine < load:
                best, load = index, mine
        if best < 0:
            raise self.unavailable()
        self._cursor = (best + 1) % count
        return best

    def index_of(self, broker: str | int | None) -> int:
        """The broker a control call goes to: the one named (address or index), else the
        first up (BrokerUnavailable when none is)."""
        if broker is None:
            for index, state in enumerate(self.brokers):
                if state.up:
                    return index
            raise self.unavailable()
        if isinstance(broker, int) and not isinstance(broker, bool):
            if 0 <= broker < len(self.brokers):
                return broker
        elif broker in self.addresses:
            return self.addresses.index(broker)
        raise ValueError(f"no broker {broker!r} in {list(self.addresses)!r}")

    def pings_due(self, now_ns: int) -> list[int]:
        """The brokers to ping now: up ones whose interval has passed, down ones whose
        backoff has; none with a ping already out. The pump calls ping_sent for each."""
        return [index for index, broker in enumerate(self.brokers)
                if not broker.pinging and now_ns >= broker.due_ns]

    def ping_sent(self, index: int, now_ns: int) -> None:
        self.brokers[index].pinging = True

    def ping_answered(self, index: int, ok: bool, now_ns: int) -> bool:
        """Record a ping's fate (ok: answered in time); True when this took the broker down,
        so the pump must fail its calls and replace its socket."""
        broker = self.brokers[index]
        broker.pinging = False
        if ok:
            broker.up = True
            broker.failures = 0
            broker.due_ns = now_ns + self.ping_interval_ns
            return False
        return self.mark_down(index, now_ns)

    def mark_down(self, index: int, now_ns: int) -> bool:
        """A broker failed (a ping, a send, a shutting_down refusal): down until a ping after
        the backoff is answered. True when it was up (the pump must fail its calls and
        replace its socket)."""
        broker = self.brokers[index]
        was_up = broker.up
        broker.up = False
        broker.failures += 1
        backoff_ns = min(self.retry_min_ns << min(broker.failures - 1, 30), self.retry_max_ns)
        broker.due_ns = now_ns + backoff_ns
        return was_up


def _ping_ok(call: Call) -> bool:
    outcome = call.outcome
    return type(outcome) is tuple and outcome[0] == _REPLY


def _options(timeout_ms: int | None, context: Any, curve_server_key: str | None,
             curve_secret_key: str | None) -> dict[str, Any]:
    return {"timeout_ms": timeout_ms, "context": context,
            "curve_server_key": curve_server_key, "curve_secret_key": curve_secret_key}


# ---------------------------------------------------------------------- blocking


class _Members:
    """What the pooled clients share over their per-broker members (`_members`, `_pool`,
    `_options`, `_closed`): the timeout they all use, the load and the brokers up."""

    _members: list
    _options: dict
    _closed: bool
    addresses: tuple[str, ...]
    _pool: BrokerPool

    @property
    def timeout_ms(self) -> int:
        return self._members[0].timeout_ms

    @timeout_ms.setter
    def timeout_ms(self, timeout_ms: int | None) -> None:
        self._options["timeout_ms"] = timeout_ms
        for member in self._members:
            member.timeout_ms = timeout_ms

    @property
    def brokers_up(self) -> list[str]:
        """The addresses of the brokers considered up."""
        return [self.addresses[index] for index in self._pool.up()]

    @property
    def in_flight(self) -> int:
        return sum(member.in_flight for member in self._members)

    @property
    def closed(self) -> bool:
        return self._closed


class PooledPendingReply(PendingReply):
    """A request in flight to one of the pool's brokers; `result()` as PendingReply's. A
    `shutting_down` refusal is resent to another broker (it never reached a worker)."""

    __slots__ = ("_index", "_request")

    def __init__(self, client: PooledClient, index: int, call: Call, request: tuple) -> None:
        super().__init__(client, call)  # type: ignore[arg-type]
        self._index = index
        self._request = request

    def result(self, timeout_s: float | None = None) -> Reply:
        client: PooledClient = self._client  # type: ignore[assignment]
        while True:
            call = self._call
            if call.outcome is None:
                client._wait_on(self._index, call, timeout_s)
            try:
                return ClientCore.reply(call)
            except ShuttingDown:
                if client.closed:
                    raise
                client._went_down(self._index, "refused a request: shutting down")
                self._index, self._call = client._send_request(*self._request)


class PooledClient(_Members, Client):
    """A blocking client over several brokers; see the module docstring. Built by
    `Client([...])`; the same calls as Client, and control calls take `broker=`."""

    def __init__(self, addresses: Sequence[str], *, timeout_ms: int | None = None,
                 context: Any = None, curve_server_key: str | None = None,
                 curve_secret_key: str | None = None) -> None:
        self._pool = BrokerPool(list(addresses))
        self.addresses = self.address = self._pool.addresses
        self._options = _options(timeout_ms, context, curve_server_key, curve_secret_key)
        self._members: list[Client] = []
        self._pings: list[Call | None] = []
        self._closed = False
        try:
            for address in self.addresses:
                self._members.append(Client(address, **self._options))
                self._pings.append(None)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ requests

    def submit(self, model: str, body: Any, *, version: str | None = None,
               timeout_ms: int | None = None, content_type: str | None = None,
               headers: dict[str, str] | None = None,
               request_id: str | None = None) -> PendingReply:
        request = (model, body, version, timeout_ms, content_type, headers, request_id)
        index, call = self._send_request(*request)
        return PooledPendingReply(self, index, call, request)

    def _send_request(self, *request: Any) -> tuple[int, Call]:
        """Send a request to the broker chosen for it; one whose send fails is down, and the
        request (which never left) goes to the next."""
        if self._closed:
            raise ShuttingDown("the client is closed")
        self._tick()
        while True:
            index = self._pool.choose([member.in_flight for member in self._members])
            model, body, version, timeout_ms, content_type, headers, request_id = request
            try:
                handle = self._members[index].submit(
                    model, body, version=version, timeout_ms=timeout_ms,
                    content_type=content_type, headers=headers, request_id=request_id)
            except BrokerUnavailable:
                self._went_down(index, "cannot take more requests")
                continue
            return index, handle._call

    def stream(self, model: str, body: Any, *, version: str | None = None,
               timeout_ms: int | None = None, content_type: str | None = None,
               headers: dict[str, str] | None = None,
               request_id: str | None = None) -> Iterator[bytes]:
        """As Client.stream; a request refused as shutting_down before any chunk is resent
        to another broker, whose chunks then come joined, as one body."""
        handle: PooledPendingReply = self.submit(  # type: ignore[assignment]
            model, body, version=version, timeout_ms=timeout_ms, content_type=content_type,
            headers=headers, request_id=request_id)
        return self._stream_on(handle)  # sent now, not at the first next()

    def _stream_on(self, handle: PooledPendingReply) -> Iterator[bytes]:
        index, call = handle._index, handle._call
        started = False
        try:
            while True:
                chunks = ClientCore.take_chunks(call)
                if chunks:
                    started = True
                    yield from chunks
                    continue
                if call.outcome is not None:
                    if not started:  # a shutting_down refusal is resent, as result() does
                        yield handle.result().body
                    else:
                        yield ClientCore.reply(call).body
                    return
                self._wait_on(index, call, None, until_chunk=True)
        finally:
            if call.outcome is None:
                self._members[index]._core.forget(call)

    def control(self, op: str, *, timeout_ms: int | None = None, broker: str | int | None = None,
                **args: Any) -> dict[str, Any]:
        """A control call to the named broker (address or index), else the first up."""
        if self._closed:
            raise ShuttingDown("the client is closed")
        self._tick()
        index = self._pool.index_of(broker)
        member = self._members[index]
        core = member._core
        call, frames = core.control(op, args, time.monotonic_ns(), timeout_ms)
        try:
            member._send(frames)
        except BrokerUnavailable:
            core.forget(call)
            self._went_down(index, "cannot take more requests")
            raise
        self._wait_on(index, call, None)
        return ClientCore.control_answer(call)

    def ping(self, timeout_ms: int = 1000, broker: str | int | None = None) -> bool:
        """True if the named broker (else the first up) answers a ping within timeout_ms."""
        try:
            self.control("ping", timeout_ms=timeout_ms, broker=broker)
        except ServingError:
            return False
        return True

    # ------------------------------------------------------------------ health

    def _wait_on(self, index: int, call: Call, timeout_s: float | None,
                 until_chunk: bool = False) -> None:
        """Pump broker index's socket for call in slices of TICK_S, seeing to the pings
        between slices, until call is done (or has a chunk, with until_chunk)."""
        if self._closed:
            raise ShuttingDown("the client is closed")
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self._tick()
            if call.outcome is not None or (until_chunk and call.chunks):
                return
            slice_s = TICK_S
            if end is not None:
                left_s = end - time.monotonic()
                if left_s <= 0:
                    raise TimeoutError(f"no reply to {call.what} within {timeout_s} s "
                                       "(still pending)")
                slice_s = min(slice_s, left_s)
            try:
                self._members[index]._wait(call, slice_s, until_chunk)
            except TimeoutError:
                continue
            return

    def _tick(self) -> None:
        """Collect the answers to pings out, and send the pings due."""
        now_ns = time.monotonic_ns()
        pool, members, pings = self._pool, self._members, self._pings
        for index, ping in enumerate(pings):
            if ping is None:
                continue
            if ping.outcome is None:
                _receive_waiting(members[index], now_ns)
            if ping.outcome is None:
                continue
            pings[index] = None
            if pool.ping_answered(index, _ping_ok(ping), now_ns):
                self._replace(index, f"did not answer a ping within {PING_TIMEOUT_MS} ms")
        for index in pool.pings_due(now_ns):
            member = members[index]
            call, frames = member._core.control("ping", {}, now_ns, PING_TIMEOUT_MS)
            pool.ping_sent(index, now_ns)
            try:
                member._send(frames)
            except BrokerUnavailable:
                member._core.forget(call)
                if pool.ping_answered(index, False, now_ns):
                    self._replace(index, "cannot take more requests")
                continue
            pings[index] = call

    def _went_down(self, index: int, why: str) -> None:
        if self._pool.mark_down(index, time.monotonic_ns()):
            self._replace(index, why)

    def _replace(self, index: int, why: str) -> None:
        """Fail the calls in flight to broker index and give it a fresh socket."""
        old = self._members[index]
        old._core.fail_all(BrokerUnavailable(f"the broker at {old.address} {why}"))
        self._pings[index] = None
        self._pool.brokers[index].pinging = False
        old.close()
        self._members[index] = Client(old.address, **self._options)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for member in self._members:
            member.close()

    def __repr__(self) -> str:
        return (f"<Client {', '.join(self.addresses)} up={self.brokers_up} "
                f"in_flight={self.in_flight}>")


def _receive_waiting(member: Client, now_ns: int) -> None:
    """Give member's core every message waiting on its socket, and expire its calls."""
    sock, core = member._socket, member._core
    while has_message(sock):
        core.receive(recv_bytes(sock, block=False), now_ns)
    core.expire(now_ns)


# ---------------------------------------------------------------------- asyncio


class PooledAsyncClient(_Members, AsyncClient):
    """An asyncio client over several brokers; see the module docstring. Built by
    `AsyncClient([...])`; the same calls as AsyncClient, and control calls take `broker=`.
    Pings run from a timer of the loop the client is first used in."""

    def __init__(self, addresses: Sequence[str], *, timeout_ms: int | None = None,
                 context: Any = None, curve_server_key: str | None = None,
                 curve_secret_key: str | None = None) -> None:
        self._pool = BrokerPool(list(addresses))
        self.addresses = self.address = self._pool.addresses
        self._options = _options(timeout_ms, context, curve_server_key, curve_secret_key)
        self._members: list[AsyncClient] = []
        self._loop = None
        self._beat: asyncio.TimerHandle | None = None
        self._probes: set[asyncio.Task] = set()
        self._closed = False
        try:
            for address in self.addresses:
                self._members.append(AsyncClient(address, **self._options))
        except BaseException:
            self.close()
            raise

    async def _request(self, model: str, body: Any, version: str | None,
                       timeout_ms: int | None, content_type: str | None,
                       headers: dict[str, str] | None, request_id: str | None,
                       streams: bool) -> Any:
        """One request to the broker chosen for it. A send that fails, or a shutting_down
        refusal, takes the broker down and the request (which reached no worker) goes to
        the next; the calls the pool fails when a broker goes down are not resent."""
        if self._loop is None:
            self._start()
        while True:
            index = self._pool.choose([member.in_flight for member in self._members])
            member = self._members[index]
            try:
                return await member._request(model, body, version, timeout_ms, content_type,
                                             headers, request_id, streams)
            except ShuttingDown:
                if self._closed or self._members[index] is not member:
                    raise
                self._went_down(index, "refused a request: shutting down")
            except BrokerUnavailable:
                if self._members[index] is not member:  # failed by the pool: may have run
                    raise
                self._went_down(index, "cannot take more requests")

    async def control(self, op: str, *, timeout_ms: int | None = None,
                      broker: str | int | None = None, **args: Any) -> dict[str, Any]:
        """A control call to the named broker (address or index), else the first up."""
        if self._loop is None:
            self._start()
        index = self._pool.index_of(broker)
        member = self._members[index]
        try:
            return await member.control(op, timeout_ms=timeout_ms, **args)
        except BrokerUnavailable:
            if self._members[index] is member:
                self._went_down(index, "cannot take more requests")
            raise

    async def ping(self, timeout_ms: int = 1000, broker: str | int | None = None) -> bool:
        """True if the named broker (else the first up) answers a ping within timeout_ms."""
        try:
            await self.control("ping", timeout_ms=timeout_ms, broker=broker)
        except ServingError:
            return False
        return True

    # ------------------------------------------------------------------ health

    def _start(self) -> None:
        if self._closed:
            raise ShuttingDown("the client is closed")
        self._loop = asyncio.get_running_loop()
        self._heartbeat()

    def _heartbeat(self) -> None:
        """Ping the brokers due a ping; again in PING_INTERVAL_MS / 5 or less."""
        now_ns = time.monotonic_ns()
        pool = self._pool
        for index in pool.pings_due(now_ns):
            pool.ping_sent(index, now_ns)
            task = self._loop.create_task(self._probe(index, self._members[index]))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)
        self._beat = self._loop.call_later(min(PING_INTERVAL_MS, RETRY_MIN_MS) / 5000,
                                           self._heartbeat)

    async def _probe(self, index: int, member: AsyncClient) -> None:
        ok = await AsyncClient.ping(member, PING_TIMEOUT_MS)
        if self._closed or self._members[index] is not member:
            return  # replaced meanwhile: this ping's fate no longer says anything
        if self._pool.ping_answered(index, ok, time.monotonic_ns()):
            self._replace(index, f"did not answer a ping within {PING_TIMEOUT_MS} ms")

    def _went_down(self, index: int, why: str) -> None:
        if self._pool.mark_down(index, time.monotonic_ns()):
            self._replace(index, why)

    def _replace(self, index: int, why: str) -> None:
        """Fail the calls in flight to broker index and give it a fresh socket."""
        old = self._members[index]
        old._wake(old._core.fail_all(BrokerUnavailable(f"the broker at {old.address} {why}")))
        self._pool.brokers[index].pinging = False
        old.close()
        self._members[index] = AsyncClient(old.address, **self._options)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        for task in list(self._probes):
            task.cancel()
        for member in self._members:
            member.close()

    def __repr__(self) -> str:
        return (f"<AsyncClient {', '.join(self.addresses)} up={self.brokers_up} "
                f"in_flight={self.in_flight}>")
