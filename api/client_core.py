"""The sans-IO core of the ZeroMQ clients: what a client knows about its requests, without a
socket or a clock.

`ClientCore` gives each request or control call a request id (rid) and a `Call` record,
encodes it (through `zerobatch.protocol`) into the REQUEST messages it hands out
(`messages()`: every request made since the last call, coalesced, at most
protocol.MAX_BATCH_ITEMS a message), files each reply it is given (`receive()`) under its
rid, turns a finished call into a `Reply`, a control answer or the typed error from
`zerobatch.errors`, refuses requests itself while the broker's `deadline_unreachable` hint
holds (client_helpers.RefusalHints), and fails the calls whose local deadline has passed
(`expire()`). The caller moves the frames and passes the monotonic clock in (`now_ns`).

`api.client.Client` (blocking) and `api.aio_client.AsyncClient` (asyncio) are thin pumps over
it that differ only in how they wait: each Call has a `waiter` slot that the pump may fill
(the asyncio client puts a future there) and that the core never reads; `receive()`,
`expire()` and `close()` return the calls whose waiters should wake.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import struct
from typing import Any

from zerobatch import protocol
from zerobatch.api.client_helpers import (
    HeaderCache,
    RefusalHints,
    Reply,
    decode_control,
    decode_reply,
    encode_body,
    parse_reply_meta,
    wait_ms,
)
from zerobatch.errors import DeadlineExceeded, ProtocolError, ServingError, ShuttingDown

__all__ = ["Call", "ClientCore"]

log = logging.getLogger(__name__)

#: width of the buckets that index the local deadlines of the calls in flight
DEADLINE_BUCKET_NS = 50_000_000

_RID = struct.Struct("<Q")  # rid = the client's 8-byte little-endian counter
_PARTIAL = protocol.PARTIAL
_ERROR = protocol.ERROR
_VERSION = protocol.VERSION
_REQUEST = protocol.REQUEST


class Call:
    """One request or control call: its rid, its local deadline and what came back so far.

    `outcome` is None while the call waits; then the final (command, meta, body) of its
    REPLY or ERROR, or the ServingError it failed with here (refused, timed out, closed,
    not sent). `chunks` holds the bodies of streamed chunks (PARTIAL) not yet taken, and
    `chunk_meta` the reply meta of the first chunk (None until one came).
    """

    __slots__ = ("rid", "route", "what", "wait_ms", "deadline_ns", "streams", "chunks",
                 "chunk_meta", "outcome", "waiter")

    def __init__(self, rid: bytes, route: bytes | None, what: str, limit_ms: int,
                 deadline_ns: int, streams: bool) -> None:
        self.rid = rid
        #: the request's route (None for control calls): the key of refusal hints
        self.route = route
        self.what = what
        #: how long the call may wait for its answer here
        self.wait_ms = limit_ms
        self.deadline_ns = deadline_ns
        #: whether each chunk wakes the waiter (a caller that takes chunks as they come)
        self.streams = streams
        self.chunks: list | tuple = ()  # a list once the first chunk comes
        self.chunk_meta: Any = None
        self.outcome: tuple | ServingError | None = None
        #: the pump's own handle on whoever waits for this call; never read by the core
        self.waiter: Any = None

    def __repr__(self) -> str:
        state = "pending" if self.outcome is None else "done"
        return f"<Call {self.what} rid={self.rid.hex()} {state}>"


class _Deadlines:
    """The local deadlines of the calls in flight, in buckets of DEADLINE_BUCKET_NS, so that
    finding the expired ones costs a heap pop per bucket, not a look at every call.

    A bucket lists the rids of its calls and an answered call is not taken out of it: most
    calls are answered long before their deadline, and taking each out would cost every
    request what only a few need. Whether a listed rid still waits is read from `waiting`
    (the core's rid -> call map) when its bucket is read: by `pop_due`, or by `add` once the
    bucket's time has passed, which moves the calls still waiting to the overdue list. So the
    buckets hold rids for at most a deadline's span, and never a call or its answer.
    """

    __slots__ = ("_waiting", "_buckets", "_ticks", "_overdue")

    def __init__(self, waiting: dict[bytes, Call]) -> None:
        self._waiting = waiting
        #: bucket tick -> the rids of the calls whose deadlines fall in it
        self._buckets: dict[int, list[bytes]] = {}
        self._ticks: list[int] = []  # a heap of the buckets' ticks
        #: rids of calls still waiting whose bucket's time has passed
        self._overdue: list[bytes] = []

    def add(self, rid: bytes, deadline_ns: int, now_ns: int) -> None:
        ticks = self._ticks
        if ticks and ticks[0] < now_ns // DEADLINE_BUCKET_NS:
            self._retire_past_buckets(now_ns // DEADLINE_BUCKET_NS)
        tick = deadline_ns // DEADLINE_BUCKET_NS
        bucket = self._buckets.get(tick)
        if bucket is None:
            self._buckets[tick] = [rid]
            heapq.heappush(ticks, tick)
        else:
            bucket.append(rid)

    def _retire_past_buckets(self, now_tick: int) -> None:
        ticks, buckets, waiting = self._ticks, self._buckets, self._waiting
        while ticks and ticks[0] < now_tick:
            self._overdue += [rid for rid in buckets.pop(heapq.heappop(ticks)) if rid in waiting]

    def pop_due(self, now_ns: int) -> list[Call]:
        """Remove and return the calls still waiting whose deadline is at or before now_ns."""
        now_tick = now_ns // DEADLINE_BUCKET_NS
        self._retire_past_buckets(now_tick)
        waiting = self._waiting
        due = [waiting[rid] for rid in self._overdue if rid in waiting]
        self._overdue = []
        bucket = self._buckets.get(now_tick)
        if bucket:  # the current bucket: call by call
            later = []
            for rid in bucket:
                call = waiting.get(rid)
                if call is None:
                    continue
                if call.deadline_ns <= now_ns:
                    due.append(call)
                else:
                    later.append(rid)
            self._buckets[now_tick] = later
        return due

    def clear(self) -> None:
        self._buckets.clear()
        self._ticks.clear()
        self._overdue = []


class ClientCore:
    """The state of one client connection; see the module docstring."""

    __slots__ = ("timeout_ms", "_counter", "_calls", "_deadlines", "_headers", "_refusals",
                 "_outbox", "_closed")

    def __init__(self, timeout_ms: int | None = None) -> None:
        #: the timeout of requests that name none; 0 means the model's default
        self.timeout_ms = timeout_ms or 0
        self._counter = itertools.count(1)
        #: rid -> call, for every call sent (or to be sent) and not yet finished
        self._calls: dict[bytes, Call] = {}
        self._deadlines = _Deadlines(self._calls)
        self._headers = HeaderCache()
        self._refusals = RefusalHints()
        #: flat [head, body, ...] of the requests made since the last messages()
        self._outbox: list = []
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Calls made and not yet answered, failed or forgotten."""
        return len(self._calls)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ calls

    def request(self, model: str, body: Any, now_ns: int, version: str | None = None,
                timeout_ms: int | None = None, content_type: str | None = None,
                headers: dict[str, str] | None = None, request_id: str | None = None,
                streams: bool = False) -> Call:
        """A new request, queued for the next messages() (a pump that coalesces what one
        turn makes); the arguments and refusals are request_message's."""
        call, message = self.request_message(model, body, now_ns, version, timeout_ms,
                                             content_type, headers, request_id, streams)
        if message is not None:
            self._outbox += message[2:]
        return call

    def request_message(self, model: str, body: Any, now_ns: int, version: str | None = None,
                        timeout_ms: int | None = None, content_type: str | None = None,
                        headers: dict[str, str] | None = None, request_id: str | None = None,
                        streams: bool = False) -> tuple[Call, list | None]:
        """A new request and the REQUEST message that carries it alone, for a pump that
        sends each request at once; see Client.submit for the arguments. A route the
        broker's hint still refuses gives a call that has already failed with
        DeadlineUnreachable, and no message (None)."""
        if self._closed:
            raise ShuttingDown("the client is closed")
        if timeout_ms is None:
            timeout_ms = self.timeout_ms
        payload, wire_type = encode_body(body, content_type)
        route, meta = self._headers.frames(model, version, timeout_ms, wire_type, headers,
                                           request_id)
        limit_ms = wait_ms(timeout_ms)
        refusals = self._refusals
        if refusals:
            refusal = refusals.refusal(route, now_ns)
            if refusal is not None:
                call = Call(b"", route, model, limit_ms, now_ns, streams)
                call.outcome = refusal
                return call, None
        call = self._open(route, model, limit_ms, now_ns, streams)
        return call, [_VERSION, _REQUEST, protocol.encode_request_head(call.rid, route, meta),
                      payload]

    def control(self, op: str, args: dict[str, Any], now_ns: int,
                timeout_ms: int | None = None) -> tuple[Call, list]:
        """A new control call and the frames to send it in at once. timeout_ms is how long
        to wait for the answer (it is not sent); None means the client's default."""
        if self._closed:
            raise ShuttingDown("the client is closed")
        limit_ms = timeout_ms or wait_ms(self.timeout_ms)
        call = self._open(None, f"control {op!r}", limit_ms, now_ns, False)
        return call, protocol.encode_control(call.rid, op, **args)

    def _open(self, route: bytes | None, what: str, limit_ms: int, now_ns: int,
              streams: bool) -> Call:
        rid = _RID.pack(next(self._counter))
        call = Call(rid, route, what, limit_ms, now_ns + limit_ms * 1_000_000, streams)
        self._calls[rid] = call
        self._deadlines.add(rid, call.deadline_ns, now_ns)
        return call

    def messages(self) -> list[list]:
        """The REQUEST messages for every request made since the last call (none: [])."""
        outbox = self._outbox
        if not outbox:
            return []
        self._outbox = []
        return protocol.encode_requests(outbox)

    def fail_unsent(self, message: list, error: ServingError) -> list[Call]:
        """Fail the calls of a REQUEST message (from messages()) that could not be sent;
        returns them."""
        failed = []
        for head in message[2::2]:
            call = self._calls.get(protocol.request_rid(head))
            if call is not None:
                self.fail(call, error)
                failed.append(call)
        return failed

    def fail(self, call: Call, error: ServingError) -> None:
        """Finish a waiting call with error (a later reply to it is dropped)."""
        self.forget(call)
        if call.outcome is None:
            call.outcome = error

    def fail_all(self, error: ServingError) -> list[Call]:
        """Finish every waiting call with error and drop what was not sent (the broker behind
        this core is gone: api.client_pool); the core stays open. Returns the failed calls."""
        failed = list(self._calls.values())
        for call in failed:
            call.outcome = error
        self._calls.clear()
        self._deadlines.clear()
        self._outbox = []
        return failed

    def forget(self, call: Call) -> None:
        """Stop tracking a call whose caller no longer waits; later replies are dropped."""
        self._calls.pop(call.rid, None)

    # ------------------------------------------------------------------ replies

    def receive(self, frames: list, now_ns: int) -> list[Call]:
        """File the replies of one received message; return the calls whose waiters should
        wake: each call it finished, and each streaming call it gave a chunk. Malformed
        messages and replies to calls no longer tracked are logged and dropped."""
        try:
            replies = protocol.parse_client_replies(frames)
        except ProtocolError as exc:
            log.warning("dropped a malformed reply: %s", exc)
            return []
        calls = self._calls
        woken = []
        for command, rid, meta, body in replies:
            call = calls.get(rid)
            if call is None:
                log.debug("dropped a late reply for rid %s", rid.hex())
                continue
            if command == _PARTIAL:
                if call.chunk_meta is None:
                    call.chunk_meta = meta
                chunks = call.chunks
                if chunks:
                    chunks.append(body)
                else:
                    call.chunks = [body]
                if call.streams:
                    woken.append(call)
                continue
            del calls[rid]
            call.outcome = (command, meta, body)
            if command == _ERROR and call.route is not None:
                self._refusals.note(call.route, meta, now_ns)
            woken.append(call)
        return woken

    def expire(self, now_ns: int) -> list[Call]:
        """Fail every call whose local deadline (its timeout plus a grace) has passed at
        now_ns with DeadlineExceeded; return them."""
        expired = self._deadlines.pop_due(now_ns)
        calls = self._calls
        for call in expired:
            del calls[call.rid]
            call.outcome = DeadlineExceeded(f"no reply to {call.what} from the broker within "
                                            f"{call.wait_ms} ms")
        return expired

    def close(self) -> list[Call]:
        """Fail every waiting call with ShuttingDown, drop what was not sent, refuse new
        calls; returns the failed calls."""
        self._closed = True
        failed = list(self._calls.values())
        error = ShuttingDown("the client was closed before the reply came")
        for call in failed:
            call.outcome = error
        self._calls.clear()
        self._deadlines.clear()
        self._outbox = []
        return failed

    # ------------------------------------------------------------------ results

    @staticmethod
    def reply(call: Call) -> Reply:
        """A finished call's Reply, the chunks not yet taken joined in front of its final
        body; or raise its typed error."""
        outcome = call.outcome
        if type(outcome) is not tuple:
            raise outcome
        command, meta, body = outcome
        return decode_reply(command, meta, body, call.chunks)

    @staticmethod
    def control_answer(call: Call) -> dict[str, Any]:
        """A finished control call's decoded answer; or raise its typed error."""
        outcome = call.outcome
        if type(outcome) is not tuple:
            raise outcome
        return decode_control(*outcome)

    @staticmethod
    def take_chunks(call: Call) -> list | tuple:
        """The bodies of the chunks that came since the last take, in order (empty: ())."""
        chunks = call.chunks
        if chunks:
            call.chunks = ()
        return chunks

    @staticmethod
    def stream_head(call: Call) -> tuple[int, str | None, dict[str, str] | None]:
        """(status, content type, headers) of a streamed reply: its first chunk's."""
        return parse_reply_meta(call.chunk_meta)
