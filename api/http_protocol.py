"""The HTTP protocol the front ends run: uvicorn's httptools protocol, with fewer writes.

uvicorn writes a response as two system calls: the head when the app sends
`http.response.start`, the body when it sends `http.response.body` (ASGI makes them two
messages). On loopback a send costs about as much as the rest of the response's Python, and
the profile of a front end under load showed those two writes as its two largest entries. So
each connection's transport is wrapped: what one event-loop turn writes to a connection is
kept and handed to the real transport at the end of that turn as one `writelines` (one
writev on uvloop), head and body together, with no copy. The turn ends microseconds later,
so no response waits longer than that; a close flushes first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a _TurnWriter (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_TurnWriter(transport, self.loop))
