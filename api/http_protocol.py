"""The HTTP protocol the front ends run: uvicorn's httptools protocol, with fewer writes.

uvicorn writes a response as two system calls: the head when the app sends
`http.response.start`, the body when it sends `http.response.body` (ASGI makes them two
messages). On loopback a send costs about as much as the rest of the response's Python, and
the profile of a front end under load showed those two writes as its two largest entries. So
each connection's transport is wrapped: what one event-loop turn writes to a connection is
kept and handed to the real transport at the end of that turn as one `writelines` (one
writev on uvloop), head and body together, with no copy. The turn ends microseconds later,
so no response waits longer than that; a close flushes first.

It also refuses an oversized upload before it is sent. Falcon's ASGI app awaits the first body
event before it routes a request, and that await is when uvicorn answers `Expect:
100-continue` (which curl sends for large uploads) with `100 Continue`. So a client would
upload a body of any size only to be answered 413 after its first chunk. Here, a request that
asks for `100-continue` and declares a Content-Length over `max_body_bytes` is answered 413 at
once, in the front end's JSON shape, and its connection is closed, so nothing it sends
afterwards is read as a next request. Other requests pay one attribute test.

And it bounds how long a client may take to send a request. uvicorn times out an idle
keep-alive connection after a response, but nothing else: a connection that never sends a
byte, or stops halfway through its headers or its body, stays open with its task for good,
and enough of them exhaust the front end's file descriptors. Here each connection notes the
loop time since which it waits for (the rest of) a request: from its opening or the
response before, and again from each piece of body that arrives, until the request is fully
received. So, as with nginx's client_header_timeout and client_body_timeout, a client has
`read_timeout_s` for its request line and headers, and as long between two pieces of its
body: a large upload over a slow link goes through, a stalled one does not. One sweep per
front end, every SWEEP_INTERVAL_S, closes the connections that waited longer: with a 408 in
the front end's JSON shape when part of a request came, silently when nothing did. A request
already received and being answered is never timed out, however long its model takes. A
request pays a few overridden callbacks that store a flag or a time (a read of the loop's
clock); the sweep costs one pass over the open connections a second.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from zerobatch.api.http_helpers import JSON, body_too_large, error_body
from zerobatch.errors import RequestTimeout, ServingError

__all__ = ["CoalescingHttpToolsProtocol"]

#: How often a front end looks for clients too slow to send their request.
SWEEP_INTERVAL_S = 1.0


class _TurnWriter:
    """A transport that passes each event-loop turn's writes on as one writelines call; any
    other attribute is the real transport's."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list | None = None

    def write(self, data: Any) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if not pending or self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _refusal_app(error: ServingError) -> Any:
    """An ASGI app that answers `error` without reading the request, and closes."""
    body = error_body(error.http_status, error.type_name, error.message)
    headers = [(b"content-type", JSON.encode()), (b"content-length", b"%d" % len(body)),
               (b"connection", b"close")]

    async def refuse(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": error.http_status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


def _error_response(error: ServingError) -> bytes:
    """A whole HTTP/1.1 response for `error`, in the front end's JSON shape, that closes."""
    body = error_body(error.http_status, error.type_name, error.message)
    reason = HTTPStatus(error.http_status).phrase.encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (error.http_status, reason, JSON.encode(),
                                              len(body)) + body)


class _ReadSweeper:
    """Every SWEEP_INTERVAL_S, times out the connections of one event loop that have waited
    too long for their request (see the module docstring). One per loop, started by its
    first connection; it ends when its loop does."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set) -> None:
        self.loop = loop
        self.connections = connections
        loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for protocol in list(self.connections):
            since = getattr(protocol, "reading_since", None)
            if since is not None and now - since > protocol.read_timeout_s:
                protocol.read_timed_out()
        self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)


_sweeper: _ReadSweeper | None = None


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length a request declares (httptools has refused a malformed one)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a _TurnWriter, refusing a `100-continue` upload
    over max_body_bytes before it is sent, and closing a connection whose request takes
    longer than read_timeout_s to arrive (see the module docstring)."""

    def __init__(self, *args: Any, max_body_bytes: int | None = None,
                 read_timeout_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        #: loop time since which this connection waits for (the rest of) a request; None
        #: once the request is fully received, and always without a read timeout
        self.reading_since: float | None = None
        #: part of a request has arrived (its first byte, up to its last)
        self._request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        global _sweeper
        super().connection_made(_TurnWriter(transport, self.loop))
        if self.read_timeout_s is not None:
            self.reading_since = self.loop.time()
            if _sweeper is None or _sweeper.loop is not self.loop:
                _sweeper = _ReadSweeper(self.loop, self.connections)

    def on_message_begin(self) -> None:
        self._request_begun = True
        super().on_message_begin()

    def on_body(self, body: bytes) -> None:
        if self.read_timeout_s is not None:
            self.reading_since = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._request_begun = False
        self.reading_since = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.read_timeout_s is not None:
            self.reading_since = self.loop.time()

    def read_timed_out(self) -> None:
        """The sweep found this connection waiting too long for its request: close it, with
        a 408 when part of a request came. A request fully received and not yet answered
        (the next one of a pipeline, once the one before it is answered) is left alone."""
        self.reading_since = None
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            return
        if self._request_begun:
            transport.write(_error_response(RequestTimeout(
                f"waited {self.read_timeout_s:g} s for the rest of the request")))
        transport.close()

    def on_headers_complete(self) -> None:
        limit = self.max_body_bytes
        if self.expect_100_continue and limit is not None:
            length = _declared_length(self.headers)
            if length is not None and length > limit:
                # uvicorn starts the request's task with self.app: this one, this once
                app, self.app = self.app, _refusal_app(body_too_large(length, limit))
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
                return
        super().on_headers_complete()
