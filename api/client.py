"""The blocking ZeroMQ client of zerobatch: a DEALER to the broker's client endpoint.

`Client` is a thin pump over the sans-IO `api.client_core.ClientCore`, which owns the request
ids, the encoding, the replies, the broker's refusal hints and the local deadlines; `Client`
only sends what the core hands out and, whenever a caller waits, blocks on the socket and
gives the core every message that arrives. So many requests can be in flight on one socket
(`submit` returns a `PendingReply`), with no background thread. `stream` yields the chunks a
streaming handler sends (PARTIAL messages) as they arrive, then the final body; `predict`
joins them into one body. `AsyncClient` (in `api.aio_client`, re-exported here) is the
asyncio pump over the same core, used by the HTTP front ends.

After a `deadline_unreachable` refusal, requests on the same model, version and timeout are
refused here, without being sent, for as long as the broker said it would refuse them.

A Client is not thread-safe (neither is a ZeroMQ socket): use one per thread. Against a
server that requires CURVE, give `curve_server_key` (the server's public .key file) and
`curve_secret_key` (this client's .key_secret file, whose .key the server authorized).

    with Client("tcp://127.0.0.1:9500") as client:
        reply = client.predict("digits", image_bytes)
        print(reply.status, reply.json())
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import zmq

from zerobatch.api.aio_client import AsyncClient
from zerobatch.api.client_core import Call, ClientCore
from zerobatch.api.client_helpers import DEFAULT_ADDRESS, HIGH_WATER_MARK, Reply, connect_dealer
from zerobatch.errors import BrokerUnavailable, ServingError, ShuttingDown
from zerobatch.transport import recv_bytes, send_frames

__all__ = ["AsyncClient", "Client", "PendingReply", "Reply"]

log = logging.getLogger(__name__)

_RCVTIMEO = zmq.RCVTIMEO
_MAX_RCVTIMEO_MS = 3_600_000  # the option is a C int; longer waits loop


class PendingReply:
    """A request in flight; `result()` waits for its reply (pumping the client's socket)."""

    __slots__ = ("_client", "_call")

    def __init__(self, client: Client, call: Call) -> None:
        self._client = client
        self._call = call

    @property
    def rid(self) -> bytes:
        return self._call.rid

    def done(self) -> bool:
        return self._call.outcome is not None

    def result(self, timeout_s: float | None = None) -> Reply:
        """The reply, or raise its typed error.

        Waits at most the request's own timeout plus a grace, then raises DeadlineExceeded and
        forgets the request. With timeout_s, waits at most that long and raises the builtin
        TimeoutError if no reply came, leaving the request pending.
        """
        call = self._call
        if call.outcome is None:
            self._client._wait(call, timeout_s)
        return ClientCore.reply(call)

    def __repr__(self) -> str:
        state = "done" if self._call.outcome is not None else "pending"
        return f"<PendingReply {self._call.what} rid={self._call.rid.hex()} {state}>"


class Client:
    """Blocking ZeroMQ client; see the module docstring. A list of addresses makes a client
    over several brokers (api.client_pool.PooledClient)."""

    def __new__(cls, address: str | list[str] | tuple[str, ...] = DEFAULT_ADDRESS,
                *args: Any, **kwargs: Any) -> Client:
        if cls is Client and isinstance(address, (list, tuple)):
            from zerobatch.api.client_pool import PooledClient
            return object.__new__(PooledClient)
        return object.__new__(cls)

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout_ms: int | None = None,
                 context: zmq.Context | None = None, curve_server_key: str | None = None,
                 curve_secret_key: str | None = None) -> None:
        self.address = address
        self._core = ClientCore(timeout_ms)
        self._context = context or zmq.Context.instance()
        self._socket = connect_dealer(self._context, address, curve_server_key,
                                      curve_secret_key)
        self._rcvtimeo_ms = -1  # the socket's receive timeout, as last set

    @property
    def timeout_ms(self) -> int:
        """The timeout of requests that name none; 0 means the model's default."""
        return self._core.timeout_ms

    @timeout_ms.setter
    def timeout_ms(self, timeout_ms: int | None) -> None:
        self._core.timeout_ms = timeout_ms or 0

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
        call, message = self._core.request_message(model, body, time.monotonic_ns(), version,
                                                   timeout_ms, content_type, headers,
                                                   request_id)
        if message is not None:
            try:
                self._send(message)
            except BrokerUnavailable as exc:
                self._core.fail(call, exc)
                raise
        return PendingReply(self, call)

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
        return self._stream(handle._call)  # sent now, not at the first next()

    def _stream(self, call: Call) -> Iterator[bytes]:
        core = self._core
        try:
            while True:
                chunks = core.take_chunks(call)
                if chunks:
                    yield from chunks
                    continue
                if call.outcome is not None:
                    yield core.reply(call).body  # an ERROR raises here
                    return
                self._wait(call, None, until_chunk=True)
        finally:
            if call.outcome is None:  # the caller stopped early: forget the request
                core.forget(call)

    def control(self, op: str, *, timeout_ms: int | None = None, **args: Any) -> dict[str, Any]:
        """Send a control call (op plus args) to the broker and return its decoded answer.

        timeout_ms is how long to wait for the answer here (it is not sent); None means the
        client's default.
        """
        core = self._core
        call, frames = core.control(op, args, time.monotonic_ns(), timeout_ms)
        try:
            self._send(frames)
        except BrokerUnavailable:
            core.forget(call)
            raise
        self._wait(call, None)
        return core.control_answer(call)

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
        return self._core.in_flight

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the socket at once (linger 0); requests still waiting fail with ShuttingDown."""
        if self._core.closed:
            return
        self._core.close()
        self._socket.close(linger=0)

    @property
    def closed(self) -> bool:
        return self._core.closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.address} in_flight={self._core.in_flight}>"

    # ------------------------------------------------------------------ socket pump

    def _send(self, frames: list) -> None:
        try:
            send_frames(self._socket, frames)
        except zmq.Again:
            raise BrokerUnavailable(f"cannot send to the broker at {self.address}: "
                                    f"{HIGH_WATER_MARK} messages already queued") from None

    def _wait(self, call: Call, timeout_s: float | None, until_chunk: bool = False) -> None:
        """Pump the socket until call (not yet answered) is answered, its deadline passes, or
        timeout_s does (or, with until_chunk, until it has a chunk to take)."""
        core = self._core
        if core.closed:
            raise ShuttingDown("the client is closed")
        now_ns = time.monotonic_ns()
        end_ns = call.deadline_ns
        own_deadline = True
        if timeout_s is not None:
            wait_end_ns = now_ns + int(timeout_s * 1e9)
            if wait_end_ns < end_ns:
                end_ns, own_deadline = wait_end_ns, False
        sock = self._socket
        while True:  # receives at least once, even when the wait is already over
            timeout_ms = min(max(end_ns - now_ns + 999_999, 0) // 1_000_000, _MAX_RCVTIMEO_MS)
            if timeout_ms != self._rcvtimeo_ms:  # one option call fewer per message
                sock.setsockopt(_RCVTIMEO, timeout_ms)
                self._rcvtimeo_ms = timeout_ms
            try:
                frames = recv_bytes(sock)
            except zmq.Again:
                frames = None
            now_ns = time.monotonic_ns()
            if frames is not None:
                core.receive(frames, now_ns)
            if call.outcome is not None or (until_chunk and call.chunks):
                return
            if now_ns >= end_ns:
                break
        if not own_deadline:
            raise TimeoutError(f"no reply to {call.what} within {timeout_s} s (still pending)")
        core.expire(now_ns)  # fails call, and any other call past its deadline
