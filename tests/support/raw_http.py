"""Raw HTTP/1.1 over a plain socket, for the tests that send what http.client will not:
trickled bytes, oversized heads, malformed and pipelined requests. Every wait is bounded."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass


def connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def read_until_closed(sock: socket.socket, limit_s: float = 5.0) -> bytes:
    """Everything the server sends on sock until it closes the connection. A reset counts as
    the close: a server that refuses a request before reading it whole resets the connection
    after its answer (the answer is still read first). Fails the test after limit_s."""
    deadline = time.monotonic() + limit_s
    received = b""
    while True:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise AssertionError(f"connection still open after {limit_s} s; received "
                                 f"{received[:300]!r}")
        sock.settimeout(remaining_s)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            continue  # the deadline check above fails the test
        if not chunk:
            return received
        received += chunk


def read_response(sock: socket.socket, limit_s: float = 5.0) -> Response:
    """One response (with a Content-Length) from a connection that stays open."""
    deadline = time.monotonic() + limit_s
    received = b""
    while True:
        responses, rest = _split(received)
        if responses:
            assert not rest, f"more than one response: {received!r}"
            return responses[0]
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise AssertionError(f"no whole response within {limit_s} s: {received[:300]!r}")
        sock.settimeout(remaining_s)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            raise AssertionError(f"closed before a whole response: {received[:300]!r}")
        received += chunk


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lowercase
    body: bytes

    def json(self):
        return json.loads(self.body)


def parse_responses(raw: bytes) -> list[Response]:
    """The responses in raw, in order; each must carry a Content-Length."""
    responses, rest = _split(raw)
    assert not rest, f"trailing bytes after {len(responses)} responses: {rest[:300]!r}"
    return responses


def _split(raw: bytes) -> tuple[list[Response], bytes]:
    responses = []
    while raw:
        head, found, after = raw.partition(b"\r\n\r\n")
        if not found:
            break
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        if len(after) < length:
            break
        responses.append(Response(int(status_line.split(" ", 2)[1]), headers, after[:length]))
        raw = after[length:]
    return responses, raw


class Trickle(threading.Thread):
    """Sends `data` on sock `piece_bytes` at a time, `interval_s` apart, in a thread, until all
    is sent, the server closes or stop() is called."""

    def __init__(self, sock: socket.socket, data: bytes, piece_bytes: int,
                 interval_s: float) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.data = data
        self.piece_bytes = piece_bytes
        self.interval_s = interval_s
        self.stopped = threading.Event()
        self.sent_bytes = 0

    def run(self) -> None:
        for start in range(0, len(self.data), self.piece_bytes):
            if self.stopped.wait(self.interval_s):
                return
            try:
                self.sock.sendall(self.data[start:start + self.piece_bytes])
            except OSError:
                return
            self.sent_bytes = start + self.piece_bytes

    def stop(self) -> None:
        self.stopped.set()
        self.join(10.0)

    def __enter__(self) -> Trickle:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """sendall(data) in a thread, for data larger than the socket buffers that the server may
    refuse part way (a reset ends the thread quietly)."""
    def send() -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread
