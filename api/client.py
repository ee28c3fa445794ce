"""The ZeroMQ client of zerobatch: a DEALER to the broker's client endpoint.

`Client` is synchronous and has no background thread: whoever waits for a reply pumps the
socket and files every reply that arrives under its request id (rid), so many requests can be
in flight on one socket (`submit` returns a `PendingReply`). `stream` yields the chunks a
streaming handler sends (PARTIAL messages) as they arrive, then the final body; `predict`
joins them into one body. `AsyncClient` (in
`api.aio_client`, re-exported here) is the asyncio twin used by the HTTP front ends.

Both keep the broker's refusal hints (`api.client_helpers.RefusalHints`): after a
`deadline_unreachable` refusal, requests on the same model, version and timeout are refused
here, without being sent, for as long as the broker said it would refuse them.

A Client is not thread-safe (neither is a ZeroMQ socket): use one per thread.

    with Client("tcp://127.0.0.1:9500") as client:
        reply = client.predict("digits", image_bytes)
        print(reply.status, reply.json())
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable, Iterator

import zmq
from zerobatch.api.aio_client import AsyncClient
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
    wait_ms,
)

from zerobatch import protocol
from zerobatch.errors import BrokerUnavailable, ProtocolError, ServingError, ShuttingDown
from zerobatch.transport import recv_bytes, send_frames

__all__ = ["AsyncClient", "Client", "PendingReply", "Reply"]

log = logging.getLogger(__name__)

_PARTIAL = protocol.PARTIAL
_ERROR = protocol.ERROR
_RCVTIMEO = zmq.RCVTIMEO
_MAX_RCVTIMEO_MS = 3_600_000  # the option is a C int; longer waits loop


class PendingReply:
    """A request in flight; `result()` waits for its reply (pumping the client's socket)."""

    __slots__ = ("_client", "rid", "_deadline_ns", "_wait_ms", "_what", "_answer", "_route")

    def __init__(self, client: Client, rid: bytes, wait_ms_: int, what: str,
                 route: bytes | None = None) -> None:
        self._client = client
        self.rid = rid
        #: the request's route frame (None for control calls): the key of refusal hints
        self._route = route
        self._wait_ms = wait_ms_
        self._deadline_ns = time.monotonic_ns() + wait_ms_ * 1_000_000
        self._what = what
        #: (command, meta, body, chunks) once answered; a ServingError if it failed locally
        self._answer: Any = None

    def done(self) -> bool:
        return self._answer is not None

    def result(self, timeout_s: float | None = None) -> Reply:
        """The reply, or raise its typed error.

        Waits at most the request's own timeout plus a grace, then raises DeadlineExceeded and
        forgets the request. With timeout_s, waits at most that long and raises the builtin
        TimeoutError if no reply came, leaving the request pending.
        """
        if self._answer is None:
            self._client._wait(self, timeout_s)
        answer = self._answer
        if type(answer) is tuple:
            return decode_reply(*answer)
        raise answer

    def _decode_control(self) -> dict[str, Any]:
        if self._answer is None:
            self._client._wait(self, None)
        answer = self._answer
        if type(answer) is tuple:
            return decode_control(*answer[:3])
        raise answer

    def __repr__(self) -> str:
        state = "done" if self._answer is not None else "pending"
        return f"<PendingReply {self._what} rid={self.rid.hex()} {state}>"


class Client:
    """Blocking ZeroMQ client; see the module docstring."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout_ms: int | None = None,
                 context: zmq.Context | None = None) -> None:
        self.address = address
        #: the timeout of requests that name none; None/0 means the model's default
        self.timeout_ms = timeout_ms or 0
        self._context = context or zmq.Context.instance()
        sock = connect_dealer(self._context, address)
        self._socket = sock
        self._pending: dict[bytes, PendingReply] = {}
        self._chunks: dict[bytes, list] = {}
        self._counter = itertools.count(1)
        self._headers = HeaderCache()
        self._refusals = RefusalHints()
        self._rcvtimeo_ms = -1  # the socket's receive timeout, as last set
        self._closed = False

    # ------------------------------------------------------------------ requests

    def predict(self, model: str, body: Any, *, version: str | None = None,
                timeout_ms: int | None = None, content_type: str | None = None,
                headers: dict[str, str] | None = None, request_id: str | None = None) -> Reply:
        """Send one request and wait for its reply; an ERROR reply raises its typed error."""
        return self.submit(model, body, version=version, timeout_ms=timeout_ms,
                           content_type=content_type, headers=headers,
                           request_id=request_id).result()

    def submit(self, model: str, body: Any, *, version: str | None = None,
               timeout_ms: int | None = None, content_type: str | None = None,
               headers: dict[str, str] | None = None,
               request_id: str | None = None) -> PendingReply:
        """Send one request now and return its handle; the reply is collected by `result()`.

        body: bytes-like (application/octet-stream), str (text/plain; charset=utf-8) or a
        dict/list (JSON). timeout_ms travels to the broker as the request's deadline; None
        means the client's default, 0 the model's.
        """
        if timeout_ms is None:
            timeout_ms = self.timeout_ms
        payload, ctype = encode_body(body, content_type)
        route, meta = self._headers.frames(model, version, timeout_ms, ctype, headers,
                                           request_id)
        rid = new_rid(next(self._counter))
        handle = PendingReply(self, rid, wait_ms(timeout_ms), model, route)
        if self._refusals:
            try:
                self._refusals.check(route)  # refused here while the broker's hint holds
            except ServingError as exc:
                handle._answer = exc
                return handle
        self._send(protocol.encode_request(rid, route, meta, payload))
        self._pending[rid] = handle
        return handle

    def stream(self, model: str, body: Any, *, version: str | None = None,
               timeout_ms: int | None = None, content_type: str | None = None,
               headers: dict[str, str] | None = None,
               request_id: str | None = None) -> Iterator[bytes]:
        """Send one request and yield its streamed chunks as they arrive, then the final body.

        A handler that does not stream yields one item, the whole body. An ERROR, even after
        some chunks, raises its typed error; the timeouts are those of `predict`.
        """
        handle = self.submit(model, body, version=version, timeout_ms=timeout_ms,
                             content_type=content_type, headers=headers,
                             request_id=request_id)
        return self._stream(handle)  # sent now, not at the first next()

    def _stream(self, handle: PendingReply) -> Iterator[bytes]:
        rid = handle.rid
        chunks = self._chunks
        try:
            while handle._answer is None:
                if rid in chunks:
                    yield from chunks.pop(rid)
                    continue
                self._wait(handle, None, until=lambda: rid in chunks)
            answer = handle._answer
            if type(answer) is not tuple:
                raise answer
            command, meta, final, rest = answer
            reply = decode_reply(command, meta, final)  # an ERROR raises here
            if rest:
                yield from rest
            yield reply.body
        finally:
            if handle._answer is None:  # the caller stopped early: forget the request
                self._pending.pop(rid, None)
                chunks.pop(rid, None)

    def control(self, op: str, *, timeout_ms: int | None = None, **args: Any) -> dict[str, Any]:
        """Send a control call (op plus args) to the broker and return its decoded answer.

        timeout_ms is how long to wait for the answer here (it is not sent); None means the
        client's default.
        """
        rid = new_rid(next(self._counter))
        self._send(protocol.encode_control(rid, op, **args))
        limit_ms = timeout_ms or wait_ms(self.timeout_ms)
        handle = PendingReply(self, rid, limit_ms, f"control {op!r}")
        self._pending[rid] = handle
        return handle._decode_control()

    def ping(self, timeout_ms: int = 1000) -> bool:
        """True if the broker answers a ping within timeout_ms."""
        try:
            self.control("ping", timeout_ms=timeout_ms)
        except ServingError:  # silent, gone, or answering with an error: not healthy
            return False
        return True

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered or given up."""
        return len(self._pending)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the socket at once (linger 0); requests still waiting fail with ShuttingDown."""
        if self._closed:
            return
        self._closed = True
        for handle in self._pending.values():
            handle._answer = ShuttingDown("the client was closed before the reply came")
        self._pending.clear()
        self._chunks.clear()
        self._socket.close(linger=0)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.address} in_flight={len(self._pending)}>"

    # ------------------------------------------------------------------ socket pump

    def _send(self, frames: list) -> None:
        if self._closed:
            raise ShuttingDown("the client is closed")
        try:
            send_frames(self._socket, frames)
        except zmq.Again:
            raise BrokerUnavailable(f"cannot send to the broker at {self.address}: "
                                    f"{HIGH_WATER_MARK} messages already queued") from None

    def _wait(self, handle: PendingReply, timeout_s: float | None,
              until: Callable[[], bool] | None = None) -> None:
        """Pump the socket until handle is answered, its deadline passes, or timeout_s does
        (or, with until, as soon as until() is true after a message arrived)."""
        if self._closed:
            raise ShuttingDown("the client is closed")
        now = time.monotonic_ns()
        end = handle._deadline_ns
        own_deadline = True
        if timeout_s is not None:
            wait_end = now + int(timeout_s * 1e9)
            if wait_end < end:
                end, own_deadline = wait_end, False
        sock = self._socket
        while handle._answer is None:
            remaining_ms = (end - now + 999_999) // 1_000_000
            if remaining_ms < 0:
                break
            timeout_ms = min(remaining_ms, _MAX_RCVTIMEO_MS)  # a bounded block
            if timeout_ms != self._rcvtimeo_ms:  # one option call fewer per message
                sock.setsockopt(_RCVTIMEO, timeout_ms)
                self._rcvtimeo_ms = timeout_ms
            try:
                frames = recv_bytes(sock)
            except zmq.Again:
                pass
            else:
                self._file(frames)
                if until is not None and until():
                    return
            now = time.monotonic_ns()
        if handle._answer is None:
            if not own_deadline:
                raise TimeoutError(f"no reply to {handle._what} within {timeout_s} s (still "
                                   "pending)")
            self._pending.pop(handle.rid, None)
            self._chunks.pop(handle.rid, None)
            handle._answer = local_timeout(handle._what, handle._wait_ms)

    def _file(self, frames: list) -> None:
        """File each reply of one received message under its rid; late and malformed replies
        are dropped."""
        try:
            replies = protocol.parse_client_replies(frames)
        except ProtocolError as exc:
            log.warning("dropped a malformed reply: %s", exc)
            return
        for command, rid, meta, body in replies:
            if command == _PARTIAL:
                if rid in self._pending:
                    self._chunks.setdefault(rid, []).append(body)
                continue
            handle = self._pending.pop(rid, None)
            if handle is None:
                log.debug("dropped a late reply for rid %s", rid.hex())
                continue
            chunks = self._chunks.pop(rid, None) if self._chunks else None
            handle._answer = (command, meta, body, chunks)
            if command == _ERROR and handle._route is not None:
                self._refusals.note(handle._route, meta)
