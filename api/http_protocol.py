"""The HTTP protocol the front ends run: uvicorn's httptools protocol, with fewer writes and
with the limits that keep abusive clients from holding a front end.

uvicorn writes a response as two system calls: the head when the app sends
`http.response.start`, the body when it sends `http.response.body` (ASGI makes them two
messages). On loopback a send costs about as much as the rest of the response's Python, and
the profile of a front end under load showed those two writes as its two largest entries. So
each connection's transport is wrapped: what one event-loop turn writes to a connection is
kept and handed to the real transport at the end of that turn as one `writelines` (one
writev on uvloop), head and body together, with no copy. The turn ends microseconds later,
so no response waits longer than that; a close flushes first.

It refuses an oversized upload before it is sent. Falcon's ASGI app awaits the first body
event before it routes a request, and that await is when uvicorn answers `Expect:
100-continue` (which curl sends for large uploads) with `100 Continue`. So a client would
upload a body of any size only to be answered 413 after its first chunk. Here, a request that
asks for `100-continue` and declares a Content-Length over `max_body_bytes` is answered 413 at
once, as TorchServe's Netty (HttpObjectAggregator) answers it: no body, no Content-Type,
`content-length: 0`; and its connection is closed (where Netty keeps it open and drops what
follows), so nothing it sends afterwards is read as a next request.

It bounds how long a client may take to send a request. uvicorn times out an idle keep-alive
connection after a response, but nothing else: a connection that never sends a byte, or sends
its headers or its body a byte at a time, stays open with its task for good, and enough of
them exhaust the front end's file descriptors. Here each connection keeps a loop-time
deadline for (the rest of) its request. A client has `read_timeout_s` in all for its request
line and headers, counted from its connection or the response before; then its body has
`read_timeout_s` more, and each body byte that arrives earns `1 / min_rate_bytes_s` seconds
on top (Apache's mod_reqtimeout MinRate; the deadline never restarts per piece): a large
upload at a decent rate goes through however long it takes, a body trickled below the rate
does not. One sweep per front end, every SWEEP_INTERVAL_S, closes the connections past their
deadline: with a 408 when part of a request came, silently when nothing did. A request
received whole and being answered is never timed out, however long its model takes, nor is
one whose body the server is not reading (pipelined behind a request being answered).

It bounds the size of a request head. httptools hands over a header only once it is whole
and keeps its pieces until then (concatenating them: a 64 MB header took seconds of CPU), so
the head is measured as it arrives, before the parser sees it: the bytes received while a
head is being read count against `max_header_bytes`; a read longer than what is left is fed
only up to the limit, and the rest only if the head ended within it. A head over the limit is
answered 431 and its connection closed; the parser has kept at most the limit of it. A head
that begins inside the read that ended the request before it (pipelining) escapes that count
for the part of it in that read (at most one read, 256 KiB), so it is also measured from what
the parser kept once it is whole. The trailer fields of a chunked body count the same way
(they are headers too).

It caps the connections one front end holds at `max_connections`: one beyond is answered
503 at once and closed, before anything is read from it.

Every refusal (400 for a request the parser rejects, 408, 431, 503; and 413 above, without a
body) is a whole response in the front end's JSON shape, with `connection: close`, and is
sent only after the answers to the requests received before it on the connection, in order;
nothing sent after it is taken as a request. Refusals are counted, not logged one by one:
the first of a kind at once at WARNING, then at most one line per kind every
REFUSAL_LOG_INTERVAL_S with the count since the line before, so a flood does not flood the
log.

What a request pays for all this: a few attribute tests and stores in the callbacks it runs
through anyway, one overridden `data_received` around the parser, and one read of the loop's
clock once its headers are in. The sweep costs one pass over the open connections a second.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from http import HTTPStatus
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from zerobatch.api.http_helpers import JSON, error_body
from zerobatch.errors import (
    BadRequest,
    HeaderTooLarge,
    RequestTimeout,
    ServingError,
    TooManyConnections,
)

__all__ = ["CoalescingHttpToolsProtocol", "RefusalCounts"]

log = logging.getLogger(__name__)

#: How often a front end looks for clients too slow to send their request.
SWEEP_INTERVAL_S = 1.0
#: The least time between two log lines about the same kind of refused connection.
REFUSAL_LOG_INTERVAL_S = 10.0
#: _head_left of a connection that is being refused: whatever it sends next is dropped
_REFUSED = -1


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


async def _too_large(scope: dict, receive: Any, send: Any) -> None:
    """An ASGI app that answers 413 as Netty's HttpObjectAggregator does (no body, no content
    type) without reading the request, and closes."""
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-length", b"0"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b""})


def _error_response(error: ServingError) -> bytes:
    """A whole HTTP/1.1 response for `error`, in the front end's JSON shape, that closes."""
    body = error_body(error.http_status, error.type_name, error.message)
    reason = HTTPStatus(error.http_status).phrase.encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (error.http_status, reason, JSON.encode(),
                                              len(body)) + body)


class RefusalCounts:
    """How many connections were refused, per kind, and when to log them: the first of a kind
    at once, then at most one line per kind every interval_s, with the count since the line
    before. The clock (seconds, any origin) is passed in."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._counts: dict[str, int] = {}
        self._logged_at_s: dict[str, float] = {}

    def add(self, kind: str, now_s: float) -> list[tuple[str, int]]:
        """Count one refusal of `kind`; what is due to be logged now (see due)."""
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return self.due(now_s)

    def due(self, now_s: float) -> list[tuple[str, int]]:
        """(kind, count) for each kind with refusals not yet logged and no line in the last
        interval_s; those counts start again from zero."""
        ready = []
        for kind, count in self._counts.items():
            logged_at_s = self._logged_at_s.get(kind)
            if logged_at_s is None or now_s - logged_at_s >= self.interval_s:
                ready.append((kind, count))
        for kind, _count in ready:
            del self._counts[kind]
            self._logged_at_s[kind] = now_s
        return ready


class _LoopWatch:
    """The per-loop side of the limits: every SWEEP_INTERVAL_S, times out the connections of
    one event loop past their read deadline (see the module docstring) and logs the refusal
    counts that are due. One per loop, made by its first connection; it ends when its loop
    does."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set) -> None:
        self.loop = loop
        self.connections = connections
        self.refusals = RefusalCounts()
        loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def refused(self, kind: str) -> None:
        self._log(self.refusals.add(kind, self.loop.time()))

    def _log(self, counts: list[tuple[str, int]]) -> None:
        for kind, count in counts:
            log.warning("refused %d connection%s %s (one line per %g s at most, with the "
                        "count since the line before)", count, "" if count == 1 else "s",
                        kind, REFUSAL_LOG_INTERVAL_S)

    def _sweep(self) -> None:
        now = self.loop.time()
        for protocol in list(self.connections):
            deadline_s = getattr(protocol, "read_deadline_s", None)
            if deadline_s is not None and now > deadline_s:
                protocol.read_timed_out()
        self._log(self.refusals.due(now))
        self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)


_watch: _LoopWatch | None = None


def _loop_watch(loop: asyncio.AbstractEventLoop, connections: set) -> _LoopWatch:
    global _watch
    if _watch is None or _watch.loop is not loop:
        _watch = _LoopWatch(loop, connections)
    return _watch


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length a request declares (httptools has refused a malformed one)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _Refused(Exception):
    """Raised in a parser callback that refused the request, to stop the parser there."""


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a _TurnWriter, with the limits of the module
    docstring: `max_body_bytes` for 100-continue uploads, `read_timeout_s` and
    `min_rate_bytes_s` for slow clients, `max_header_bytes` for request heads,
    `max_connections` per front end. A limit left at None is not applied (no min rate: a
    body has read_timeout_s in all)."""

    def __init__(self, *args: Any, max_body_bytes: int | None = None,
                 read_timeout_s: float | None = None, min_rate_bytes_s: int | None = None,
                 max_header_bytes: int | None = None, max_connections: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self._s_per_body_byte = 1.0 / min_rate_bytes_s if min_rate_bytes_s else 0.0
        self.max_header_bytes = sys.maxsize if max_header_bytes is None else max_header_bytes
        self.max_connections = max_connections
        #: loop time by which (the rest of) the awaited request must have come; None while
        #: no request is awaited (one is being answered), and always without a read timeout
        self.read_deadline_s: float | None = None
        #: bytes the head being read (or awaited) may still take; None while a body is read;
        #: _REFUSED once the connection is refused
        self._head_left: int | None = self.max_header_bytes
        #: the head being read began inside a read that ended the request before it, so
        #: data_received did not count its first bytes: on_headers_complete measures it
        self._head_unmetered = False
        #: part of a request has arrived (its first byte, up to its last)
        self._request_begun = False
        #: the request being received has its headers in (self.cycle is its cycle)
        self._receiving_body = False
        #: how many of self.headers came before the current chunk (after it: trailer fields)
        self._fields_before_chunk = 0
        #: a refusal to send once the request received before it is answered
        self._deferred_refusal: bytes | None = None
        self._watch: _LoopWatch | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_TurnWriter(transport, self.loop))
        self._watch = _loop_watch(self.loop, self.connections)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._refuse(TooManyConnections("too many open connections; retry later"),
                         f"over the cap of {self.max_connections} open connections "
                         f"(--max-connections), answered 503")
            return
        if self.read_timeout_s is not None:
            self.read_deadline_s = self.loop.time() + self.read_timeout_s

    # -- reading: the head's size is counted here, before the parser sees the bytes

    def data_received(self, data: bytes) -> None:
        left = self._head_left
        if left is not None:  # a head is awaited or being read (or the connection refused)
            if len(data) > left:
                self._data_over_head_budget(data)
                return
            self._head_left = left - len(data)
        self._unset_keepalive_if_required()  # what follows is _feed, inlined for speed
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_stopped(exc)

    def _data_over_head_budget(self, data: bytes) -> None:
        """data is longer than what the head being read may still take: feed what it may,
        the rest only if the head ended within that, and answer 431 if it did not."""
        view = memoryview(data)
        while view:
            left = self._head_left
            if left is None:  # in a body: no head to count
                self._feed(view)
                return
            if left < 0:  # refused: drop
                return
            if len(view) <= left:
                self._head_left = left - len(view)
                self._feed(view)
                return
            self._head_left = 0
            if left:
                self._feed(view[:left])
            if self._head_left == 0:  # still in the same head, and it goes on
                self._refuse_head()
                return
            view = view[left:]

    def _feed(self, data: bytes | memoryview) -> None:
        """uvicorn's data_received, but a request the parser rejects is answered 400 in the
        front end's JSON shape (after the answers before it) and counted, not logged."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_stopped(exc)

    def _parser_stopped(self, exc: Exception) -> None:
        """The parser raised: an upgrade (uvicorn's handling), or a request it rejects."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            # else the request is answered as a plain one (uvicorn would log each of them)
        elif self._head_left != _REFUSED:  # not stopped by a callback that refused
            self._refuse(BadRequest(_invalid_request_message(exc)),
                         "with an invalid HTTP request, answered 400")

    # -- parser callbacks

    def on_message_begin(self) -> None:
        self._request_begun = True
        # data_received left the budget untouched since the request before ended in this read
        self._head_unmetered = self._head_left == self.max_header_bytes
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._head_unmetered and self._parsed_head_bytes() > self.max_header_bytes:
            self._refuse_head()
            raise _Refused  # stops the parser: this request is not run
        self._head_left = None
        self._receiving_body = True
        if self.read_timeout_s is not None:
            self.read_deadline_s = self.loop.time() + self.read_timeout_s
        limit = self.max_body_bytes
        if self.expect_100_continue and limit is not None:
            length = _declared_length(self.headers)
            if length is not None and length > limit:
                self._watch.refused(f"with a 100-continue upload over {limit} bytes "
                                    f"(--max-request-size), answered 413")
                # uvicorn starts the request's task with self.app: this one, this once
                app, self.app = self.app, _too_large
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
                return
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        # what follows a chunk's size line is counted as a head until its data begins: the
        # last chunk's trailer fields, which the parser keeps as it keeps headers (and uvicorn
        # adds to the request's headers)
        self._head_left = self.max_header_bytes
        self._fields_before_chunk = len(self.headers)

    def on_body(self, body: bytes) -> None:
        self._head_left = None
        if self.read_deadline_s is not None:
            self.read_deadline_s += len(body) * self._s_per_body_byte
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._head_left is not None and self._trailer_bytes() > self.max_header_bytes:
            # chunked, and its trailer fields came in the read that ended it: uncounted
            self._refuse_head()
            raise _Refused
        self._request_begun = False
        self._receiving_body = False
        self._head_left = self.max_header_bytes
        self.read_deadline_s = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deferred_refusal is not None:
            if self.cycle.response_complete:  # the last request received is answered
                self._send_and_close(self._deferred_refusal)
            return
        if self.read_timeout_s is not None:
            self.read_deadline_s = self.loop.time() + self.read_timeout_s

    # -- refusals

    def read_timed_out(self) -> None:
        """The sweep found this connection past its read deadline: close it, with a 408 when
        part of a request came. A request received whole and not yet answered (the next one
        of a pipeline, once the one before it is answered) is left alone, and so is one whose
        body the server is not reading (it waits behind the answer to the one before)."""
        self.read_deadline_s = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.more_body:
                return
            if self.flow.read_paused or (self.pipeline and self.pipeline[0][0] is cycle):
                # the server is not reading its body now, or will not use it before the
                # answers to the requests before it: the wait is not the client's
                self.read_deadline_s = self.loop.time() + self.read_timeout_s
                return
        if self._request_begun:
            self._refuse(RequestTimeout(f"waited {self.read_timeout_s:g} s for the rest of the "
                                        f"request"),
                         "too slow to send a request (--request-read-timeout, "
                         "--request-min-rate), answered 408")
        else:
            self.transport.close()

    def _refuse_head(self) -> None:
        limit = self.max_header_bytes
        what = "trailer fields" if self._receiving_body else "request line and headers"
        self._refuse(HeaderTooLarge(f"{what} over the limit of {limit} bytes"),
                     f"with a request head over {limit} bytes (--max-header-size), "
                     f"answered 431")

    def _refuse(self, error: ServingError, kind: str) -> None:
        """Answer `error` and close, after the answers to the requests received whole before
        it; read nothing more. `kind` says what was refused, for the log."""
        self._head_left = _REFUSED
        self.read_deadline_s = None
        self._watch.refused(kind)
        cycle = self.cycle
        if self._receiving_body and cycle is not None:  # refusing self.cycle's body
            if cycle.response_started:  # answered, or being answered, already
                self.transport.close()
            elif self.pipeline and self.pipeline[0][0] is cycle:
                # it waits behind others: the refusal is its answer, in its turn
                self.pipeline[0] = (cycle, _refusal_app(error))
            else:
                self._send_and_close(_error_response(error))
        elif cycle is not None and not cycle.response_complete:
            # a new request, after the one received whole before it: refused once that one
            # is answered
            self._deferred_refusal = _error_response(error)
        else:
            self._send_and_close(_error_response(error))

    def _send_and_close(self, response: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _trailer_bytes(self) -> int:
        """The size of the trailer fields uvicorn added to self.headers after the last
        chunk (name: value CRLF each, CRLF)."""
        trailers = self.headers[self._fields_before_chunk:]
        return sum(len(name) + len(value) + 4 for name, value in trailers) + 2

    def _parsed_head_bytes(self) -> int:
        """The size of the request line and headers just parsed, from what the parser kept
        (optional whitespace aside): method SP url SP HTTP/1.1 CRLF, name: value CRLF each,
        CRLF."""
        return (len(self.parser.get_method()) + len(self.url) + 12
                + sum(len(name) + len(value) + 4 for name, value in self.headers) + 2)


def _invalid_request_message(exc: Exception) -> str:
    """The 400's message: the parser's reason, unless it stopped in a callback of ours."""
    if isinstance(exc, httptools.HttpParserCallbackError) or not str(exc):
        return "invalid HTTP request"
    return f"invalid HTTP request: {exc}"
