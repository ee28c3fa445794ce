"""The asyncio ZeroMQ client: many concurrent requests on one DEALER, resolved by rid.

One reader, registered with the event loop on the socket's file descriptor, drains every
message that arrives and resolves the future waiting under its rid; each call sends at once
and awaits its own future, bounded by a timer (its timeout plus a grace) that fails it with
DeadlineExceeded. Requests are sent without blocking: a full send queue means the broker is
not reading, and fails the call with BrokerUnavailable.

Why not `zmq.asyncio`: its sockets allocate a future and several EVENTS queries per send and
per receive, and wake a handler after every send while a receive waits. A plain socket read
from a loop reader does the same job with one EVENTS check per send. The ZeroMQ descriptor
is edge-triggered, so the reader always drains until EVENTS shows nothing left, and every
send re-checks EVENTS (a send may consume the wake-up of a reply that just arrived).

Create an AsyncClient inside the event loop that will use it (it binds to that loop on first
use), and close it there: `await client.aclose()` or `async with AsyncClient(...)`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import zmq

from api.client_helpers import (
    DEFAULT_ADDRESS,
    EVENTS,
    HIGH_WATER_MARK,
    NOBLOCK,
    POLLIN,
    HeaderCache,
    Reply,
    decode_control,
    decode_reply,
    encode_body,
    local_timeout,
    new_rid,
    socket_get,
    wait_ms,
)
from zerobatch import protocol
from zerobatch.errors import BrokerUnavailable, ProtocolError, ServingError, ShuttingDown
from zerobatch.transport import send_frames

__all__ = ["AsyncClient"]

log = logging.getLogger(__name__)

_PARTIAL = protocol.PARTIAL


def _expire(future: asyncio.Future, what: str, limit_ms: int) -> None:
    if not future.done():
        future.set_exception(local_timeout(what, limit_ms))


class AsyncClient:
    """Asyncio ZeroMQ client; the same calls as `Client`, awaited."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout_ms: int | None = None,
                 context: zmq.Context | None = None) -> None:
        self.address = address
        #: the timeout of requests that name none; None/0 means the model's default
        self.timeout_ms = timeout_ms or 0
        self._context = context or zmq.Context.instance()
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        sock.connect(address)
        self._socket = sock
        self._fd: int = sock.getsockopt(zmq.FD)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[bytes, asyncio.Future] = {}
        self._chunks: dict[bytes, list] = {}
        self._counter = itertools.count(1)
        self._headers = HeaderCache()
        self._drain_scheduled = False
        self._closed = False

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
        if timeout_ms is None:
            timeout_ms = self.timeout_ms
        payload, ctype = encode_body(body, content_type)
        route, meta = self._headers.frames(model, version, timeout_ms, ctype, headers,
                                           request_id)
        answer = await self._call(protocol.encode_request, route, meta, payload,
                                  wait_ms(timeout_ms), model)
        return decode_reply(*answer)

    async def control(self, op: str, *, timeout_ms: int | None = None,
                      **args: Any) -> dict[str, Any]:
        """Send a control call (op plus args) and return the broker's decoded answer.

        timeout_ms is how long to wait here (it is not sent); None means the client's default.
        """
        limit_ms = timeout_ms or wait_ms(self.timeout_ms)
        answer = await self._call(_encode_control, op, args, None, limit_ms, f"control {op!r}")
        return decode_control(*answer[:3])

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
        return len(self._pending)

    async def _call(self, encode: Any, a: Any, b: Any, c: Any, limit_ms: int,
                    what: str) -> tuple:
        loop = self._loop
        if loop is None:
            loop = self._start()
        if self._closed:
            raise ShuttingDown("the client is closed")
        rid = new_rid(next(self._counter))
        future = loop.create_future()
        pending = self._pending
        pending[rid] = future
        timer = loop.call_later(limit_ms / 1000, _expire, future, what, limit_ms)
        try:
            self._send(encode(rid, a, b, c))
            return await future
        finally:
            timer.cancel()
            if pending.pop(rid, None) is not None and self._chunks:
                self._chunks.pop(rid, None)

    def _send(self, frames: list) -> None:
        sock = self._socket
        try:
            send_frames(sock, frames)
        except zmq.Again:
            raise BrokerUnavailable(f"cannot send to the broker at {self.address}: "
                                    f"{HIGH_WATER_MARK} messages already queued") from None
        # The descriptor is edge-triggered and a send may have swallowed a reply's wake-up.
        if not self._drain_scheduled and socket_get(sock, EVENTS) & POLLIN:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    # ------------------------------------------------------------------ reader

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise ShuttingDown("the client is closed")
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._drain)
        self._drain_scheduled = True
        loop.call_soon(self._drain)  # messages may have arrived before the reader existed
        return loop

    def _drain(self) -> None:
        """Receive every waiting message and resolve its future (the loop's reader)."""
        self._drain_scheduled = False
        if self._closed:
            return
        sock = self._socket
        recv = sock.recv_multipart
        pending = self._pending
        try:
            while socket_get(sock, EVENTS) & POLLIN:
                frames = recv(NOBLOCK)
                try:
                    command, rid, meta, body = protocol.parse_client_reply(frames)
                except ProtocolError as exc:
                    log.warning("dropped a malformed reply: %s", exc)
                    continue
                future = pending.get(rid)
                if future is None:
                    log.debug("dropped a late reply for rid %s", rid.hex())
                    continue
                if command == _PARTIAL:
                    self._chunks.setdefault(rid, []).append(body)
                    continue
                del pending[rid]
                chunks = self._chunks.pop(rid, None) if self._chunks else None
                if not future.done():
                    future.set_result((command, meta, body, chunks))
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:  # the socket was closed under us
            if not self._closed:
                log.error("the client socket failed: %s", exc)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the reader, fail every waiting call with ShuttingDown, close the socket."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ShuttingDown("the client was closed before the reply "
                                                  "came"))
        self._pending.clear()
        self._chunks.clear()
        self._socket.close(linger=0)

    async def aclose(self) -> None:
        self.close()
        await asyncio.sleep(0)  # let the failed calls see their errors before the loop moves on

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.address} in_flight={len(self._pending)}>"


def _encode_control(rid: bytes, op: str, args: dict[str, Any], _unused: Any) -> list:
    return protocol.encode_control(rid, op, **args)
