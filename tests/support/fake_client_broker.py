"""A fake broker for the client and HTTP tests: a ROUTER on loopback, played in a thread.

Each received message is parsed with the protocol module and queued (`next()` takes it);
a handler, when set, answers at once; otherwise the test answers later, in any order, with
`send()`. tests/integration/test_fake_client_broker.py checks the fake itself, so its
mistakes are not blamed on the clients.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
import zmq

from zerobatch import protocol

POLL_MS = 2
WAIT_S = 5.0


@dataclass
class Received:
    """One message the fake broker got, decoded."""

    identity: bytes
    command: bytes
    rid: bytes
    route: tuple | None = None        # (model, version, timeout_ms) of a REQUEST
    content_type: str | None = None
    headers: dict | None = None
    request_id: str | None = None
    body: bytes = b""
    control: dict | None = None       # the map of a CONTROL

    @property
    def model(self) -> str:
        return self.route[0]


def reply_frames(rid: bytes, body: bytes = b"", status: int = 200,
                 content_type: str | None = None, headers: dict | None = None,
                 command: bytes = protocol.REPLY) -> list:
    return [protocol.VERSION, protocol.REPLIES, protocol.rid_head(rid) + command
            + protocol.encode_reply_meta(status, content_type, headers), body]


def error_frames(rid: bytes, code: str, message: str, status: int) -> list:
    return protocol.encode_error(protocol.rid_head(rid), code, message, status)


def control_reply(rid: bytes, answer: dict) -> list:
    return reply_frames(rid, msgpack.packb(answer), content_type="application/msgpack")


def echo(msg: Received) -> list | None:
    """Handler: echo a request's body and content type; answer ping with {"pong": True}."""
    if msg.command == protocol.CONTROL:
        return control_reply(msg.rid, {"pong": True, "op": msg.control["op"]})
    return reply_frames(msg.rid, msg.body, content_type=msg.content_type)


Handler = Callable[[Received], "list | None"]


class FakeBroker:
    """The broker's client-facing ROUTER in a thread; see the module docstring."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.received: queue.Queue[Received] = queue.Queue()
        self._outbox: queue.Queue[list] = queue.Queue()
        self._stop = threading.Event()
        self._socket = zmq.Context.instance().socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._run, name="fake-broker", daemon=True)
        self._thread.start()

    def next(self, timeout_s: float = WAIT_S) -> Received:
        """The next message the broker received (waits at most timeout_s)."""
        return self.received.get(timeout=timeout_s)

    def take(self, count: int, timeout_s: float = WAIT_S) -> list[Received]:
        return [self.next(timeout_s) for _ in range(count)]

    def send(self, identity: bytes, frames: list) -> None:
        """Send frames (after the identity) from the broker's thread."""
        self._outbox.put([identity, *frames])

    def reply(self, msg: Received, body: bytes = b"", **kwargs: Any) -> None:
        self.send(msg.identity, reply_frames(msg.rid, body, **kwargs))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)

    def __enter__(self) -> FakeBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        sock = self._socket
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(POLL_MS):
                    while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        self._handle(sock.recv_multipart(zmq.NOBLOCK))
                while True:
                    try:
                        sock.send_multipart(self._outbox.get_nowait())
                    except queue.Empty:
                        break
        finally:
            sock.close(linger=0)

    def _handle(self, frames: list) -> None:
        """One message: a CONTROL, or a REQUEST holding one or more requests (each filed and
        answered on its own, as the real broker does)."""
        identity, envelope = frames[0], frames[1:]
        command = protocol.check_envelope(envelope, 3)
        if command == protocol.REQUEST:
            assert len(envelope) % 2 == 0, "REQUEST items come in (head, body) pairs"
            for base in range(2, len(envelope), 2):
                head, body = envelope[base:base + 2]
                rid_part, route, meta = protocol.split_request_head(head)
                rid = rid_part[1:]
                content_type, headers, request_id = protocol.parse_meta(meta)
                self._file(Received(identity, command, rid, route=protocol.parse_route(route),
                                    content_type=content_type, headers=headers,
                                    request_id=request_id, body=body))
        elif command == protocol.CONTROL:
            self._file(Received(identity, command, envelope[2],
                                control=protocol.parse_control(envelope[3])))
        else:
            raise AssertionError(f"a client sent command {command!r}")

    def _file(self, msg: Received) -> None:
        identity = msg.identity
        self.received.put(msg)
        if self.handler is not None:
            answer = self.handler(msg)
            if answer is not None:
                sock = self._socket
                sock.send_multipart([identity, *answer])
