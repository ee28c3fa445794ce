"""The asyncio ZeroMQ client: many concurrent requests on one DEALER, resolved by rid.

One reader, registered with the event loop on the socket's file descriptor, drains every
message that arrives and resolves the future waiting under its rid; each call sends its
request (at once, or with the others of its event-loop turn at the turn's end: see
`_post_request`) and awaits its own future, bounded by its timeout plus a grace, past which
it fails with DeadlineExceeded (`_Deadlines`: one timer per client, not one per call).
Requests are sent without blocking: a full send queue means the broker is not reading, and
fails the call with BrokerUnavailable.

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

Refusal hints: as `Client`, it refuses a route itself while the broker's last
`deadline_unreachable` for it says the broker would (`api.client_helpers.RefusalHints`).

Create an AsyncClient inside the event loop that will use it (it binds to that loop on first
use), and close it there: `await client.aclose()` or `async with AsyncClient(...)`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, AsyncIterator

import zmq
from zerobatch.api.client_helpers import (
    DEFAULT_ADDRESS,
    HIGH_WATER_MARK,
    HeaderCache,
    RefusalHints,
    Reply,
    connect_dealer,
    decode_control,
    decode_reply,
    encode_body,
    local_timeout,
    new_rid,
    parse_reply_meta,
    wait_ms,
)

from zerobatch import protocol
from zerobatch.errors import BrokerUnavailable, ProtocolError, ServingError, ShuttingDown
from zerobatch.transport import has_message, recv_bytes, send_frames

__all__ = ["AsyncClient", "ReplyStream"]

log = logging.getLogger(__name__)

_PARTIAL = protocol.PARTIAL
_ERROR = protocol.ERROR
_VERSION = protocol.VERSION
_REQUEST = protocol.REQUEST
_request_head = protocol.encode_request_head


#: The local timeouts of calls are checked this often, so a call fails up to this much past
#: its own deadline. That deadline already holds a grace past the timeout the broker
#: enforces (client_helpers.GRACE_MS): it only matters when the broker is silent.
SWEEP_INTERVAL_S = 0.05


class _Deadlines:
    """The local deadlines of the calls in flight, checked by one timer for the whole client.

    A loop timer per call costs about 1.8 us to set and cancel (uvloop), a few per cent of
    what a front end spends on a request. Instead each call goes into the bucket of the sweep
    tick (every SWEEP_INTERVAL_S) at or after its deadline, and leaves it when it is answered;
    while any call waits, one periodic timer fails the calls of every tick that has passed.
    """

    __slots__ = ("_loop", "_buckets", "_ticks", "_swept", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: sweep tick -> {rid: (future, what, limit_ms)} of the calls that expire at it
        self._buckets: dict[int, dict[bytes, tuple[asyncio.Future, str, int]]] = {}
        #: rid -> its sweep tick, for every call still waiting
        self._ticks: dict[bytes, int] = {}
        self._swept = 0  # the last tick whose calls were failed
        self._timer: asyncio.TimerHandle | None = None

    def add(self, rid: bytes, future: asyncio.Future, what: str, limit_ms: int) -> float:
        """Fail `future` with DeadlineExceeded unless `discard(rid)` comes first; returns its
        deadline (loop time)."""
        deadline = self._loop.time() + limit_ms / 1000
        tick = -int(-deadline // SWEEP_INTERVAL_S)  # the first tick at or after the deadline
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
        bucket[rid] = (future, what, limit_ms)
        self._ticks[rid] = tick
        if self._timer is None:
            self._swept = int(self._loop.time() // SWEEP_INTERVAL_S)
            self._timer = self._loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        return deadline

    def discard(self, rid: bytes) -> None:
        tick = self._ticks.pop(rid, None)
        if tick is not None:
            bucket = self._buckets[tick]
            del bucket[rid]
            if not bucket:
                del self._buckets[tick]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._ticks.clear()

    def _sweep(self) -> None:
        now_tick = int(self._loop.time() // SWEEP_INTERVAL_S)
        buckets, ticks = self._buckets, self._ticks
        for tick in range(self._swept + 1, now_tick + 1):
            for rid, (future, what, limit_ms) in buckets.pop(tick, {}).items():
                del ticks[rid]
                if not future.done():
                    future.set_exception(local_timeout(what, limit_ms))
        self._swept = now_tick
        self._timer = self._loop.call_later(SWEEP_INTERVAL_S, self._sweep) if ticks else None


class ReplyStream:
    """A reply being streamed: status, content type and headers of its first chunk, and
    `chunks()`, which yields each chunk's body as it arrives, then the final body."""

    __slots__ = ("status", "content_type", "headers", "_queue", "_deadline", "_what",
                 "_limit_ms", "_forget")

    def __init__(self, meta: Any, loop: asyncio.AbstractEventLoop, limit_ms: int, what: str,
                 forget: Any) -> None:
        status, content_type, headers = parse_reply_meta(meta)
        self.status = status
        self.content_type = content_type
        self.headers = headers if headers is not None else {}
        self._queue: asyncio.Queue = asyncio.Queue()
        self._deadline = loop.time() + limit_ms / 1000
        self._what = what
        self._limit_ms = limit_ms
        self._forget = forget

    def _push(self, item: tuple) -> None:
        self._queue.put_nowait(item)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Each chunk's body, then the final body; an ERROR raises its typed error."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    command, meta, body = await asyncio.wait_for(
                        self._queue.get(), max(0.0, self._deadline - loop.time()))
                except asyncio.TimeoutError:
                    raise local_timeout(self._what, self._limit_ms) from None
                if command is None:
                    yield bytes(body)
                    continue
                yield decode_reply(command, meta, body).body
                return
        finally:
            self._forget()

    def __repr__(self) -> str:
        return f"<ReplyStream status={self.status} {self._what}>"


class AsyncClient:
    """Asyncio ZeroMQ client; the same calls as `Client`, awaited."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout_ms: int | None = None,
                 context: zmq.Context | None = None) -> None:
        self.address = address
        #: the timeout of requests that name none; None/0 means the model's default
        self.timeout_ms = timeout_ms or 0
        self._context = context or zmq.Context.instance()
        sock = connect_dealer(self._context, address)
        self._socket = sock
        self._fd: int = sock.getsockopt(zmq.FD)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[bytes, asyncio.Future] = {}
        self._chunks: dict[bytes, list] = {}
        #: rids whose caller takes a ReplyStream at the first chunk; the streams under way
        self._stream_rids: set[bytes] = set()
        self._streams: dict[bytes, ReplyStream] = {}
        self._counter = itertools.count(1)
        self._headers = HeaderCache()
        self._refusals = RefusalHints()
        self._deadlines: _Deadlines | None = None  # made with the loop, on first use
        self._drain_scheduled = False
        #: requests of this loop turn still to be sent, together, at its end; None when the
        #: turn has made none yet
        self._outbox: list | None = None
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
                       stream: bool) -> Reply | ReplyStream:
        """One request: encode, send, await; with stream, the first chunk resolves it."""
        if timeout_ms is None:
            timeout_ms = self.timeout_ms
        payload, ctype = encode_body(body, content_type)
        route, meta = self._headers.frames(model, version, timeout_ms, ctype, headers,
                                           request_id)
        if self._refusals:
            self._refusals.check(route)  # refused here while the broker's hint holds
        answer = await self._call(None, route, meta, payload, wait_ms(timeout_ms), model,
                                  stream)
        command = answer[0]
        if command is None:
            return answer[1]
        if command == _ERROR:
            self._refusals.note(route, answer[1])
        return decode_reply(*answer)

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
                    what: str, streams: bool = False) -> tuple:
        loop = self._loop
        if loop is None:
            loop = self._start()
        if self._closed:
            raise ShuttingDown("the client is closed")
        rid = new_rid(next(self._counter))
        future = loop.create_future()
        pending = self._pending
        pending[rid] = future
        deadlines = self._deadlines
        deadline = deadlines.add(rid, future, what, limit_ms)
        if streams:
            self._stream_rids.add(rid)
        try:
            if encode is None:
                self._post_request(rid, a, b, c)
            else:
                self._send(encode(rid, a, b, c))
            answer = await future
            if answer[0] is None:  # a ReplyStream: it needs the rest of the deadline
                stream = answer[1]
                stream._deadline, stream._limit_ms, stream._what = deadline, limit_ms, what
            return answer
        finally:
            deadlines.discard(rid)
            if streams:
                self._stream_rids.discard(rid)
            if pending.pop(rid, None) is not None and self._chunks:
                self._chunks.pop(rid, None)

    def _post_request(self, rid: bytes, route: bytes, meta: bytes, body: Any) -> None:
        """Send a request in the REQUEST message that goes at the end of this loop turn with
        every request the turn makes (see "Coalescing" in zerobatch/protocol.py: one message
        per turn, not one per request), or at once when it is the only request in flight:
        then the wait for the turn's end would be all its added latency, and under load the
        requests in flight keep the broker busy meanwhile."""
        outbox = self._outbox
        head = _request_head(rid, route, meta)
        if outbox is None:
            if len(self._pending) == 1:
                self._send([_VERSION, _REQUEST, head, body])
                self._outbox = []
            else:
                self._outbox = [head, body]
            self._loop.call_soon(self._flush_outbox)
            return
        outbox += (head, body)
        if len(outbox) >= 2 * protocol.MAX_BATCH_ITEMS:  # a message holds at most that many
            self._flush_outbox()
            self._outbox = []  # the turn goes on: its later requests start a new message

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, None
        if not outbox or self._closed:
            return
        try:
            self._send([_VERSION, _REQUEST, *outbox])
        except BrokerUnavailable as exc:
            for head in outbox[::2]:
                future = self._pending.get(head[1:1 + head[0]])
                if future is not None and not future.done():
                    future.set_exception(BrokerUnavailable(exc.message))

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

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise ShuttingDown("the client is closed")
        loop = self._loop = asyncio.get_running_loop()
        self._deadlines = _Deadlines(loop)
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
        pending = self._pending
        streams = self._streams
        try:
            while has_message(sock):
                frames = recv_bytes(sock, block=False)
                try:
                    replies = protocol.parse_client_replies(frames)
                except ProtocolError as exc:
                    log.warning("dropped a malformed reply: %s", exc)
                    continue
                for command, rid, meta, body in replies:
                    if streams and rid in streams:
                        self._to_stream(rid, command, meta, body)
                        continue
                    future = pending.get(rid)
                    if future is None:
                        log.debug("dropped a late reply for rid %s", rid.hex())
                        continue
                    if command == _PARTIAL:
                        self._on_partial(rid, future, meta, body)
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

    def _on_partial(self, rid: bytes, future: asyncio.Future, meta: Any, body: Any) -> None:
        """A streamed chunk for a request still awaited: it becomes a ReplyStream when the
        caller takes one, else the chunk is kept for the final reply."""
        if rid in self._stream_rids and not future.done():
            streams = self._streams
            del self._pending[rid]
            stream = ReplyStream(meta, self._loop, 0, "a streamed reply",
                                 lambda: streams.pop(rid, None))
            stream._push((None, meta, body))
            streams[rid] = stream
            future.set_result((None, stream))
            return
        self._chunks.setdefault(rid, []).append(body)

    def _to_stream(self, rid: bytes, command: bytes, meta: Any, body: Any) -> None:
        stream = self._streams[rid]
        if command == _PARTIAL:
            stream._push((None, meta, body))
        else:
            del self._streams[rid]
            stream._push((command, meta, body))

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
        if self._deadlines is not None:
            self._deadlines.close()
        for stream in self._streams.values():
            stream._push((protocol.ERROR, protocol.encode_error_info(
                ShuttingDown.code, "the client was closed before the reply ended",
                ShuttingDown.http_status), b""))
        self._streams.clear()
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
