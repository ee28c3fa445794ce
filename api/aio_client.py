"""The asyncio ZeroMQ client: many concurrent requests on one DEALER, a thin pump over the
sans-IO `api.client_core.ClientCore` (which owns rids, encoding, replies, refusal hints and
local deadlines).

One reader, registered with the event loop on the socket's file descriptor, drains every
message that arrives into the core and wakes the future of each call the core finished;
each call awaits its own future. Requests are coalesced: the requests one event-loop turn
makes go out together at the turn's end, in as few REQUEST messages as the core makes of
them (see "Coalescing" in zerobatch/protocol.py), except a request made while nothing else is
in flight, which goes at once: the wait for the turn's end would be all its added latency,
and under load the requests in flight keep the broker busy meanwhile. One timer per client,
every SWEEP_INTERVAL_S while calls wait, has the core fail the calls past their local
deadline (their timeout plus a grace) with DeadlineExceeded. Sends never block: a full send
queue means the broker is not reading, and fails the calls with BrokerUnavailable.

Why not `zmq.asyncio`: its sockets allocate a future and several EVENTS queries per send and
per receive, and wake a handler after every send while a receive waits. A plain socket read
from a loop reader does the same job with one EVENTS check per send. The ZeroMQ descriptor
is edge-triggered, so the reader always drains until EVENTS shows nothing left, and every
send re-checks EVENTS (a send may consume the wake-up of a reply that just arrived).

Streaming: `predict` joins a streaming handler's chunks (PARTIAL messages) into one body.
`predict_or_stream` resolves as soon as the first chunk arrives, with a `ReplyStream` whose
status and headers are the first chunk's and whose `chunks()` yields each chunk as it arrives
and the final body last (a reply without chunks resolves as a plain Reply, as `predict`
does); `stream` is the async generator of those bodies.

Create an AsyncClient inside the event loop that will use it (it binds to that loop on first
use), and close it there: `await client.aclose()` or `async with AsyncClient(...)`.
`AsyncClient([address, ...])` spreads requests over several brokers (api.client_pool).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

import zmq

from zerobatch.api.client_core import Call, ClientCore
from zerobatch.api.client_helpers import DEFAULT_ADDRESS, HIGH_WATER_MARK, Reply, connect_dealer
from zerobatch.errors import BrokerUnavailable, ServingError, ShuttingDown
from zerobatch.transport import has_message, recv_bytes, send_frames

__all__ = ["AsyncClient", "ReplyStream"]

log = logging.getLogger(__name__)

#: How often the local deadlines of calls are checked, so a call fails up to this much past
#: its own deadline. That deadline already holds a grace past the timeout the broker
#: enforces (client_helpers.GRACE_MS): it only matters when the broker is silent.
SWEEP_INTERVAL_S = 0.05


class ReplyStream:
    """A reply being streamed: status, content type and headers of its first chunk, and
    `chunks()`, which yields each chunk's body as it arrives, then the final body."""

    __slots__ = ("status", "content_type", "headers", "_client", "_call")

    def __init__(self, client: AsyncClient, call: Call) -> None:
        status, content_type, headers = ClientCore.stream_head(call)
        self.status = status
        self.content_type = content_type
        self.headers = headers if headers is not None else {}
        self._client = client
        self._call = call

    async def chunks(self) -> AsyncIterator[bytes]:
        """Each chunk's body, then the final body; an ERROR raises its typed error, and so
        does the request's local deadline (DeadlineExceeded)."""
        call = self._call
        take_chunks = ClientCore.take_chunks
        try:
            while True:
                chunks = take_chunks(call)
                if chunks:
                    for chunk in chunks:
                        yield chunk
                    continue
                if call.outcome is not None:
                    yield ClientCore.reply(call).body
                    return
                await self._client._wait(call)
        finally:
            if call.outcome is None:  # the caller stopped early: forget the request
                self._client._core.forget(call)

    def __repr__(self) -> str:
        return f"<ReplyStream status={self.status} {self._call.what}>"


class AsyncClient:
    """Asyncio ZeroMQ client; the same calls as `Client`, awaited. A list of addresses makes
    a client over several brokers (api.client_pool.PooledAsyncClient)."""

    def __new__(cls, address: str | list[str] | tuple[str, ...] = DEFAULT_ADDRESS,
                *args: Any, **kwargs: Any) -> AsyncClient:
        if cls is AsyncClient and isinstance(address, (list, tuple)):
            from zerobatch.api.client_pool import PooledAsyncClient
            return object.__new__(PooledAsyncClient)
        return object.__new__(cls)

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout_ms: int | None = None,
                 context: zmq.Context | None = None, curve_server_key: str | None = None,
                 curve_secret_key: str | None = None) -> None:
        self.address = address
        self._core = ClientCore(timeout_ms)
        self._context = context or zmq.Context.instance()
        sock = connect_dealer(self._context, address, curve_server_key, curve_secret_key)
        self._socket = sock
        self._fd: int = sock.getsockopt(zmq.FD)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self._flush_scheduled = False  # the requests of this loop turn go at its end
        self._sweeper: asyncio.TimerHandle | None = None  # runs while calls wait

    @property
    def timeout_ms(self) -> int:
        """The timeout of requests that name none; 0 means the model's default."""
        return self._core.timeout_ms

    @timeout_ms.setter
    def timeout_ms(self, timeout_ms: int | None) -> None:
        self._core.timeout_ms = timeout_ms or 0

    # ------------------------------------------------------------------ requests

    async def predict(self, model: str, body: Any, *, version: str | None = None,
                      timeout_ms: int | None = None, content_type: str | None = None,
                      headers: dict[str, str] | None = None,
                      request_id: str | None = None) -> Reply:
        """Send one request and await its reply; an ERROR reply raises its typed error.

        body: bytes-like (application/octet-stream), str (text/plain; charset=utf-8) or a
        dict/list (JSON). timeout_ms travels to the broker as the request's deadline; None
        means the client's default, 0 the model's. Without a reply within timeout_ms plus a
        grace, raises DeadlineExceeded and forgets the request.
        """
        return await self._request(model, body, version, timeout_ms, content_type, headers,
                                   request_id, False)

    async def predict_or_stream(self, model: str, body: Any, *, version: str | None = None,
                                timeout_ms: int | None = None,
                                content_type: str | None = None,
                                headers: dict[str, str] | None = None,
                                request_id: str | None = None) -> Reply | ReplyStream:
        """As `predict`, but a reply that streams resolves at its first chunk, as a
        ReplyStream (whose `chunks()` must then be consumed)."""
        return await self._request(model, body, version, timeout_ms, content_type, headers,
                                   request_id, True)

    async def _request(self, model: str, body: Any, version: str | None,
                       timeout_ms: int | None, content_type: str | None,
                       headers: dict[str, str] | None, request_id: str | None,
                       streams: bool) -> Reply | ReplyStream:
        """One request: made by the core, sent with its turn, awaited; with streams, the
        first chunk resolves it."""
        if self._loop is None:
            self._start()
        core = self._core
        call = core.request(model, body, time.monotonic_ns(), version=version,
                            timeout_ms=timeout_ms, content_type=content_type,
                            headers=headers, request_id=request_id, streams=streams)
        if call.outcome is None:  # else refused here, per the broker's hint
            self._post_request()
            await self._wait(call)
        if streams and call.chunk_meta is not None:
            return ReplyStream(self, call)
        return core.reply(call)

    async def stream(self, model: str, body: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        """Send one request; yield each streamed chunk as it arrives, then the final body
        (one item when the handler does not stream). Arguments as `predict`."""
        answer = await self.predict_or_stream(model, body, **kwargs)
        if isinstance(answer, Reply):
            yield answer.body
            return
        async for chunk in answer.chunks():
            yield chunk

    async def control(self, op: str, *, timeout_ms: int | None = None,
                      **args: Any) -> dict[str, Any]:
        """Send a control call (op plus args) and return the broker's decoded answer.

        timeout_ms is how long to wait here (it is not sent); None means the client's default.
        """
        if self._loop is None:
            self._start()
        core = self._core
        call, frames = core.control(op, args, time.monotonic_ns(), timeout_ms)
        try:
            self._send(frames)
        except BrokerUnavailable:
            core.forget(call)
            raise
        await self._wait(call)
        return core.control_answer(call)

    async def ping(self, timeout_ms: int = 1000) -> bool:
        """True if the broker answers a ping within timeout_ms."""
        try:
            await self.control("ping", timeout_ms=timeout_ms)
        except ServingError:  # silent, gone, or answering with an error: not healthy
            return False
        return True

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered or given up."""
        return self._core.in_flight

    # ------------------------------------------------------------------ waiting

    async def _wait(self, call: Call) -> None:
        """Until the core finishes call, or gives a streaming call a chunk; a caller that
        stops waiting (cancelled) forgets the call."""
        if call.outcome is not None:  # failed before the wait began (not sent)
            return
        future = call.waiter = self._loop.create_future()
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        try:
            await future
        except BaseException:
            self._core.forget(call)
            raise
        finally:
            call.waiter = None

    def _wake(self, calls: list[Call]) -> None:
        for call in calls:
            future = call.waiter
            if future is not None and not future.done():
                future.set_result(None)

    def _sweep(self) -> None:
        """Fail the calls past their local deadline; again later while any call waits."""
        core = self._core
        self._wake(core.expire(time.monotonic_ns()))
        self._sweeper = (self._loop.call_later(SWEEP_INTERVAL_S, self._sweep)
                         if core.in_flight else None)

    # ------------------------------------------------------------------ sending

    def _post_request(self) -> None:
        """Have the core's new request sent at this loop turn's end, with the others the turn
        makes, or at once when it is the only request in flight."""
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)
        if self._core.in_flight == 1:
            self._send_requests()  # later requests of this turn go at its end

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._core.closed:
            self._send_requests()

    def _send_requests(self) -> None:
        core = self._core
        for message in core.messages():
            try:
                self._send(message)
            except BrokerUnavailable as exc:
                self._wake(core.fail_unsent(message, exc))

    def _send(self, frames: list) -> None:
        sock = self._socket
        try:
            send_frames(sock, frames)
        except zmq.Again:
            raise BrokerUnavailable(f"cannot send to the broker at {self.address}: "
                                    f"{HIGH_WATER_MARK} messages already queued") from None
        # The descriptor is edge-triggered and a send may have swallowed a reply's wake-up.
        if not self._drain_scheduled and has_message(sock):
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    # ------------------------------------------------------------------ reader

    def _start(self) -> None:
        if self._core.closed:
            raise ShuttingDown("the client is closed")
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._drain)
        self._drain_scheduled = True
        loop.call_soon(self._drain)  # messages may have arrived before the reader existed

    def _drain(self) -> None:
        """Give every waiting message to the core and wake its calls (the loop's reader)."""
        self._drain_scheduled = False
        core = self._core
        if core.closed:
            return
        sock = self._socket
        try:
            while has_message(sock):
                frames = recv_bytes(sock, block=False)
                for call in core.receive(frames, time.monotonic_ns()):
                    future = call.waiter
                    if future is not None and not future.done():
                        future.set_result(None)
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:  # the socket was closed under us
            if not core.closed:
                log.error("the client socket failed: %s", exc)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the reader, fail every waiting call with ShuttingDown, close the socket."""
        core = self._core
        if core.closed:
            return
        self._wake(core.close())
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._socket.close(linger=0)

    async def aclose(self) -> None:
        self.close()
        await asyncio.sleep(0)  # let the failed calls see their errors before the loop moves on

    @property
    def closed(self) -> bool:
        return self._core.closed

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.address} in_flight={self._core.in_flight}>"
