"""The worker's heartbeat thread: its own DEALER, so a long forward pass never silences it.

The thread owns a second DEALER socket whose identity is the worker id plus
`protocol.HEARTBEAT_SUFFIX`, connected to the broker's worker address. Every
`interval_ms` it sends `protocol.HEARTBEAT_FRAMES`; it reads whatever the broker sends on
that socket, and any message counts as a sign of life (as does `touch()`, which the data
loop calls when the broker sends it something). The broker is declared lost, and `lost`
is set with a reason, when

- nothing arrived from the broker for `liveness` intervals, or
- the parent process changed (`os.getppid()` differs from the one at start: the broker
  that spawned this worker is gone); not checked with parent_pid=0 (a remote worker, whose
  parent is not the broker).

The data loop watches `lost` and ends the process with a non-zero exit code; a local worker
is then restarted by its supervisor. `stop()` ends the thread; the socket closes with
linger 0.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

import zmq

from zerobatch import protocol
from zerobatch.errors import ProtocolError

log = logging.getLogger(__name__)

#: Longest the thread sleeps before it looks at its stop event again.
STOP_CHECK_MS = 50
_NS_PER_MS = 1_000_000


class Heartbeat(threading.Thread):
    """Sends heartbeats to the broker and watches for the broker's own."""

    def __init__(self, zmq_context: zmq.Context, broker_address: str, worker_id: str,
                 interval_ms: int = protocol.HEARTBEAT_INTERVAL_MS,
                 liveness: int = protocol.HEARTBEAT_LIVENESS,
                 parent_pid: int | None = None,
                 socket_setup: Callable[[zmq.Socket], None] | None = None) -> None:
        super().__init__(name=f"heartbeat-{worker_id}", daemon=True)
        if interval_ms <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval_ms} ms")
        self._zmq_context = zmq_context
        self._broker_address = broker_address
        self._identity = worker_id.encode("utf-8") + protocol.HEARTBEAT_SUFFIX
        self._interval_ns = interval_ms * _NS_PER_MS
        self._expiry_ns = liveness * interval_ms * _NS_PER_MS
        self._parent_pid = os.getppid() if parent_pid is None else parent_pid
        #: called with the socket before it connects (a remote worker's CURVE keys)
        self._socket_setup = socket_setup
        self._stop_event = threading.Event()
        self._last_seen_ns = time.monotonic_ns()
        self.lost = threading.Event()
        self.lost_reason = ""
        self.sent = 0

    def touch(self) -> None:
        """Record that the broker was heard from (on any socket)."""
        self._last_seen_ns = time.monotonic_ns()

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout_s)

    def run(self) -> None:
        socket = self._zmq_context.socket(zmq.DEALER)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.IDENTITY, self._identity)
            # Queue heartbeats only on a live connection: none pile up while disconnected.
            socket.setsockopt(zmq.IMMEDIATE, 1)
            socket.setsockopt(zmq.SNDHWM, protocol.HEARTBEAT_LIVENESS)
            if self._socket_setup is not None:
                self._socket_setup(socket)
            socket.connect(self._broker_address)
            self._last_seen_ns = time.monotonic_ns()
            self._beat(socket)
        except Exception as exc:  # never die silently: a mute worker must not look alive
            log.exception("heartbeat thread failed")
            self._declare_lost(f"heartbeat thread failed: {type(exc).__name__}: {exc}")
        finally:
            socket.close(linger=0)

    def _beat(self, socket: zmq.Socket) -> None:
        next_beat_ns = time.monotonic_ns()
        while not self._stop_event.is_set():
            now_ns = time.monotonic_ns()
            if now_ns >= next_beat_ns:
                try:
                    socket.send_multipart(protocol.HEARTBEAT_FRAMES, zmq.NOBLOCK)
                    self.sent += 1
                    next_beat_ns = now_ns + self._interval_ns
                except zmq.Again:  # not connected (yet): try again soon, not an interval later
                    next_beat_ns = now_ns + min(self._interval_ns, STOP_CHECK_MS * _NS_PER_MS)
            silent_ns = now_ns - self._last_seen_ns
            if silent_ns > self._expiry_ns:
                self._declare_lost(f"no message from the broker for {silent_ns // _NS_PER_MS} "
                                   f"ms (liveness {self._expiry_ns // _NS_PER_MS} ms)")
                return
            if self._parent_pid and os.getppid() != self._parent_pid:
                self._declare_lost(f"parent process {self._parent_pid} is gone")
                return
            wait_ms = min(STOP_CHECK_MS, max(0, (next_beat_ns - now_ns) // _NS_PER_MS) + 1)
            if socket.poll(wait_ms, zmq.POLLIN):
                self._drain(socket)

    def _drain(self, socket: zmq.Socket) -> None:
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.touch()
            try:
                command = protocol.check_envelope(frames, 2)
            except ProtocolError as exc:
                log.warning("dropped a malformed message on the heartbeat socket: %s", exc)
                continue
            if command != protocol.W_HEARTBEAT:
                log.debug("ignored command %r on the heartbeat socket", command)

    def _declare_lost(self, reason: str) -> None:
        self.lost_reason = reason
        log.error("broker lost: %s", reason)
        self.lost.set()
