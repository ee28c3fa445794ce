"""The broker's sockets and its one poll loop.

Owns the two ROUTER sockets ("front" for clients and front ends, "back" for workers), the
poll set (both ROUTERs, a pidfd per child process, the signal wake-up socket), and the order
of work in one turn: receive, let `BrokerCore` decide, send what it decided, reap children.
The poll timeout is the core's next wake-up (the aggregator's, a heartbeat, a worker's
expiry), so the loop sleeps exactly until something can change.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import zmq

from zerobatch.broker.core import BrokerCore
from zerobatch.broker.supervisor import Supervisor
from zerobatch.protocol import coalesce_client_messages
from zerobatch.transport import has_message, recv_frames, send_frames

log = logging.getLogger("zerobatch.broker")

#: messages taken from one socket per turn, so neither side can starve the other
_DRAIN_LIMIT = 512
_MAX_POLL_MS = 1000
_SHUTDOWN_GRACE_S = 3.0
_HWM = 100_000


def _router(context: zmq.Context, addresses: list[str]) -> zmq.Socket:
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, _HWM)
    socket.setsockopt(zmq.RCVHWM, _HWM)
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
    for address in addresses:
        socket.bind(address)
    return socket


class BrokerLoop:
    """Sockets around a BrokerCore; `run(stop_event)` or `run_once(timeout_ms)`."""

    def __init__(self, core: BrokerCore, front_addresses: list[str], back_addresses: list[str],
                 supervisor: Supervisor | None = None, wakeup_fd: int | None = None,
                 context: zmq.Context | None = None) -> None:
        self.core = core
        self.supervisor = supervisor
        self.context = context or zmq.Context.instance()
        self.front = _router(self.context, front_addresses)
        self.back = _router(self.context, back_addresses)
        self.poller = zmq.Poller()
        self.poller.register(self.front, zmq.POLLIN)
        self.poller.register(self.back, zmq.POLLIN)
        self.wakeup_fd = wakeup_fd
        if wakeup_fd is not None:
            self.poller.register(wakeup_fd, zmq.POLLIN)
        self._watched_pidfds: set[int] = set()
        self._synced_changes = -1
        self.stop_signalled = False

    # ------------------------------------------------------------------ one turn

    def run_once(self, timeout_ms: int | None = None) -> None:
        core = self.core
        supervisor = self.supervisor
        now_ns = time.monotonic_ns()
        wakeup_ns = core.next_wakeup_ns(now_ns)
        if timeout_ms is None:
            timeout_ms = self._timeout_ms(now_ns, wakeup_ns)
        if supervisor is not None and supervisor.changes != self._synced_changes:
            self._sync_pidfds()
        events = self.poller.poll(timeout_ms)
        now_ns = time.monotonic_ns()
        child_exited = False
        for source, _event in events:
            if source is self.front:
                self._drain(self.front, core.on_front, now_ns)
            elif source is self.back:
                self._drain(self.back, core.on_back, now_ns)
            elif source == self.wakeup_fd:
                try:
                    os.read(self.wakeup_fd, 512)
                except BlockingIOError:
                    pass
            else:  # a child's pidfd: it exited
                child_exited = True
        if supervisor is not None and (child_exited or supervisor.due(time.monotonic())):
            for worker_id in supervisor.reap():
                core.worker_lost(worker_id, now_ns, "its process exited")
            supervisor.restart_due()
        if now_ns >= wakeup_ns:
            core.on_tick(now_ns)
        self._flush()
        if core.lost_worker_ids:
            if supervisor is not None:
                for worker_id in core.lost_worker_ids:
                    supervisor.kill_worker(worker_id)
            core.lost_worker_ids.clear()

    def _timeout_ms(self, now_ns: int, wakeup_ns: int) -> int:
        timeout_ms = max(0, -(-(wakeup_ns - now_ns) // 1_000_000))  # ceil
        if self.supervisor is not None:
            restart_s = self.supervisor.next_wakeup_s
            if restart_s is not None:
                timeout_ms = min(timeout_ms, max(0, int((restart_s - time.monotonic()) * 1000)))
        return min(timeout_ms, _MAX_POLL_MS)

    def _drain(self, socket: zmq.Socket, handle, now_ns: int) -> None:
        """Handle what waits on a socket that poll found readable, at most _DRAIN_LIMIT
        messages, asking after each whether another waits (`has_message`) rather than
        ending on a failed receive."""
        for _ in range(_DRAIN_LIMIT):
            try:
                frames = recv_frames(socket, block=False)
            except zmq.Again:
                return
            handle(frames, now_ns)
            if not has_message(socket):
                return

    def _flush(self) -> None:
        core = self.core
        for socket, out in ((self.front, core.out_front), (self.back, core.out_back)):
            if out:
                messages = coalesce_client_messages(out) if socket is self.front else out
                for frames in messages:
                    try:
                        send_frames(socket, frames)
                    except zmq.Again:  # a peer's queue is full: it is gone or stuck
                        log.warning("dropped a message to a peer whose queue is full")
                out.clear()

    def _sync_pidfds(self) -> None:
        """Watch exactly the pidfds of the children now running."""
        self._synced_changes = self.supervisor.changes
        current = set(self.supervisor.pidfds())
        if current == self._watched_pidfds:
            return
        for fd in self._watched_pidfds - current:
            self.poller.unregister(fd)
        for fd in current - self._watched_pidfds:
            self.poller.register(fd, zmq.POLLIN)
        self._watched_pidfds = current

    # ------------------------------------------------------------------ run and stop

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Serve until the stop event is set, a stop signal arrives, or a `stop` control call."""
        stop_event = stop_event or threading.Event()
        while not (stop_event.is_set() or self.stop_signalled or self.core.stop_requested):
            self.run_once()
        self.shutdown()

    def shutdown(self) -> None:
        """Refuse new work, let in-flight batches finish briefly, stop children, close sockets."""
        core = self.core
        core.begin_shutdown(time.monotonic_ns())
        self._flush()
        deadline = time.monotonic() + _SHUTDOWN_GRACE_S
        while core.batches and time.monotonic() < deadline:
            self.run_once(timeout_ms=50)
        if self.supervisor is not None:
            self.supervisor.stop_all()
            for worker_id in self.supervisor.reap():
                core.worker_lost(worker_id, time.monotonic_ns(), "the server stopped")
        self._flush()
        self.front.close(linger=200)
        self.back.close(linger=0)
