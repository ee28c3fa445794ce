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
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.http_helpers import JSON, body_too_large, error_body
from zerobatch.errors import ServingError

__all__ = ["CoalescingHttpToolsProtocol"]


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
    over max_body_bytes before it is sent (see the module docstring)."""

    def __init__(self, *args: Any, max_body_bytes: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_body_bytes = max_body_bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_TurnWriter(transport, self.loop))

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
