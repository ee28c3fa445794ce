"""A fake broker for worker tests: a ROUTER on a random loopback port.

It plays the broker's side of the worker protocol (zerobatch.protocol): it waits for READY,
sends BATCH messages, collects W_REPLY items, records the heartbeats that arrive from the
worker's `.hb` identity and (unless told not to) answers each with a heartbeat of its own.
Every wait is bounded by a timeout; nothing here sleeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from zerobatch import protocol

HB = protocol.HEARTBEAT_SUFFIX


@dataclass
class Item:
    """One decoded W_REPLY item: a REPLY (status, content_type, headers, body) or an ERROR."""

    kind: str
    status: int
    content_type: str | None = None
    headers: dict | None = None
    body: bytes = b""
    code: str | None = None
    message: str | None = None


@dataclass
class FakeBroker:
    answer_heartbeats: bool = True
    zmq_context: Any = None
    heartbeats: list = field(default_factory=list)  # (identity, time.monotonic())

    def __post_init__(self) -> None:
        self.zmq_context = self.zmq_context or zmq.Context.instance()
        self.router = self.zmq_context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"

    def close(self) -> None:
        self.router.close(linger=0)

    def __enter__(self) -> "FakeBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ receiving

    def recv(self, match: Callable[[list[bytes]], bool], timeout_s: float) -> list[bytes]:
        """The next message (identity first) that `match` accepts; heartbeats are handled."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self.router.poll(left_ms, zmq.POLLIN):
                raise TimeoutError(f"no matching message within {timeout_s} s")
            frames = self.router.recv_multipart()
            if self._is_heartbeat(frames):
                self.heartbeats.append((frames[0], time.monotonic()))
                if self.answer_heartbeats:
                    try:
                        self.router.send_multipart([frames[0], *protocol.HEARTBEAT_FRAMES])
                    except zmq.ZMQError as exc:  # the .hb peer left after its last beat
                        if exc.errno != zmq.EHOSTUNREACH:
                            raise
            if match(frames):
                return frames

    def pump(self, duration_s: float) -> None:
        """Answer heartbeats for duration_s, ignoring everything else."""
        try:
            self.recv(lambda frames: False, duration_s)
        except TimeoutError:
            pass

    def wait_ready(self, timeout_s: float = 10.0) -> tuple[bytes, dict]:
        frames = self.recv(lambda f: len(f) == 4 and f[2] == protocol.W_READY, timeout_s)
        return frames[0], protocol.parse_ready(frames[3])

    def wait_command(self, command: bytes, timeout_s: float = 10.0) -> list[bytes]:
        return self.recv(lambda f: len(f) >= 3 and f[2] == command, timeout_s)

    def wait_reply(self, batch_id: int | None = None, timeout_s: float = 10.0) -> list[Item]:
        def match(frames: list[bytes]) -> bool:
            if len(frames) < 4 or frames[2] != protocol.W_REPLY:
                return False
            return batch_id is None or protocol.parse_batch_id(frames[3]) == batch_id

        frames = self.recv(match, timeout_s)
        _, items = protocol.split_worker_reply(frames[1:])
        return decode_answers(items)

    # ------------------------------------------------------------ sending

    def send_batch(self, identity: bytes, batch_id: int, items: list[tuple[bytes, bytes]]) -> None:
        frames = [identity, protocol.VERSION, protocol.W_BATCH, protocol.encode_batch_id(batch_id)]
        for meta, body in items:
            frames += [meta, body]
        self.router.send_multipart(frames)

    def send_raw(self, identity: bytes, frames: list[bytes]) -> None:
        self.router.send_multipart([identity, *frames])

    def request(self, identity: bytes, batch_id: int, items: list[tuple[bytes, bytes]],
                timeout_s: float = 10.0) -> list[Item]:
        self.send_batch(identity, batch_id, items)
        return self.wait_reply(batch_id, timeout_s)

    @staticmethod
    def _is_heartbeat(frames: list[bytes]) -> bool:
        return (len(frames) == 3 and frames[0].endswith(HB)
                and frames[1:] == protocol.HEARTBEAT_FRAMES)


def item(body: bytes | str, content_type: str = "application/json",
         headers: dict | None = None, request_id: str | None = None) -> tuple[bytes, bytes]:
    """A (meta, body) pair for a BATCH."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return protocol.encode_meta(content_type, headers, request_id), body


def decode_answers(items: list) -> list[Item]:
    """The flat [answer, body, ...] items of a W_REPLY, decoded (answer = cmd | a)."""
    return [decode_item(bytes(items[i][:1]), bytes(items[i][1:]), items[i + 1])
            for i in range(0, len(items), 2)]


def decode_item(cmd: bytes, a: bytes, b: bytes) -> Item:
    if cmd == protocol.REPLY:
        status, content_type, headers = protocol.parse_reply_meta(a)
        return Item("reply", status, content_type, headers, bytes(b))
    if cmd == protocol.ERROR:
        code, message, status, _retry_after_ms = protocol.parse_error_info(a)
        return Item("error", status, code=code, message=message)
    raise AssertionError(f"unknown W_REPLY item command {cmd!r}")
