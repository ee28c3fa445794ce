"""The broker's sockets and its one poll loop.

Owns the three ROUTER sockets ("front" for clients and front ends, "back" for workers,
"control" for control calls, in the private run directory), the poll set (the ROUTERs, a
pidfd per child process, the signal wake-up socket), and the order of work in one turn:
receive, let `BrokerCore` decide, send what it decided, reap children. The poll timeout is
the core's next wake-up (the aggregator's, a heartbeat, a worker's expiry), so the loop sleeps
exactly until something can change.

A turn's work is bounded in requests, not messages: one client message may carry
MAX_BATCH_ITEMS requests, so a turn takes at most TURN_BUDGET_ITEMS items from each socket
and then runs the timers (heartbeats, expiries) and sends what was decided. A client that
floods the endpoint therefore delays the others by a few turns (ZeroMQ's ROUTER takes
messages from its peers in turn; a request, its batch's reply and the answer are three
turns), and the workers keep hearing the broker's heartbeats.

What a client can make the broker hold is bounded before it is buffered: libzmq drops a
connection that sends a frame over the configured maximum (ZMQ_MAXMSGSIZE) as it reads the
frame's length, at most CLIENT_REQUEST_HWM messages are read ahead from a client, and
replies wait for a client in a queue of at most CLIENT_REPLY_HWM messages; a reply to a
client whose queue is full is dropped and counted in the log.
With CURVE configured, the client endpoint (TCP) accepts only the authorized keys (a ZAP
handler in a thread of this process); the front ends' local endpoint stays plain. The remote
workers' endpoint (--worker-address) is CURVE too, with the same server key pair and its own
directory of authorized worker keys (ZAP domain WORKER_ZAP_DOMAIN, so a client key never
opens it); the local workers' IPC endpoint stays plain (docs/remote-workers.md).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from zerobatch import protocol as p
from zerobatch.broker.core import BrokerCore
from zerobatch.broker.supervisor import Supervisor
from zerobatch.protocol import coalesce_client_messages
from zerobatch.transport import has_message, peer_of, recv_frames, send_frames

log = logging.getLogger("zerobatch.broker")

#: items (requests, replies; a message costs at least one) taken from one socket per turn:
#: one full client message, a few milliseconds of the broker's time
TURN_BUDGET_ITEMS = p.MAX_BATCH_ITEMS
#: messages a client's replies may queue in the broker before new ones to it are dropped.
#: A client's own libzmq takes replies off the connection into its own queue whether or not
#: the client reads (its RCVHWM: 100,000 messages for ours), so this queue fills only behind
#: a client whose own queue is full: one that does not read.
CLIENT_REPLY_HWM = 100
#: messages libzmq reads ahead from one client before the broker takes them; beyond, the
#: client's own queue holds them (TCP pushes back), so a client that sends faster than the
#: broker serves fills its own memory, not the broker's. A bound in messages, not bytes (a
#: message may carry MAX_BATCH_ITEMS requests). Lower bounds cost throughput: at 32 (either
#: queue), 64 requests in flight from one client ran 15% slower (benchmarks.ab).
CLIENT_REQUEST_HWM = 256
#: a frame may exceed the largest body by this much (heads, metas) before libzmq drops the
#: connection that sends it; between the two, the broker answers 413
FRAME_SLACK_BYTES = p.MAX_HEADER_BYTES
_WORKER_HWM = 100_000
_MAX_POLL_MS = 1000
_SHUTDOWN_GRACE_S = 3.0
_DROP_LOG_INTERVAL_S = 10.0
_LOAD_CHECK_INTERVAL_NS = 1_000_000_000
#: the ZAP domain of the remote workers' endpoint: its keys are the authorized worker keys
WORKER_ZAP_DOMAIN = "zerobatch-workers"


@dataclass(frozen=True)
class Endpoints:
    """Where the broker listens, and what its client-facing sockets accept."""

    #: the client endpoint (TCP, or IPC); CURVE applies here when configured
    client: str
    #: the HTTP front ends' endpoint (IPC in the run directory)
    front_ipc: str
    #: the workers' endpoints
    back: tuple[str, ...]
    #: the control socket (IPC in the run directory), or "" for none
    control: str = ""
    #: the largest frame a client may send (libzmq drops the connection beyond it)
    max_frame_bytes: int = p.DEFAULT_MAX_BODY_BYTES + FRAME_SLACK_BYTES
    #: CURVE on the client endpoint: the server's (public, secret) keys and the directory of
    #: the authorized clients' public key files; None and "" for none
    curve_keys: tuple[bytes, bytes] | None = None
    curve_authorized_keys: str = ""
    #: the remote workers' endpoint, CURVE with curve_keys, accepting the public keys in
    #: curve_worker_keys; "" for none
    remote_back: str = ""
    curve_worker_keys: str = ""

    @property
    def client_curve(self) -> bool:
        """Whether the client endpoint requires CURVE."""
        return self.curve_keys is not None and bool(self.curve_authorized_keys)


def _router(context: zmq.Context, send_hwm: int, receive_hwm: int,
            handover: bool = True) -> zmq.Socket:
    """A ROUTER; with handover, a peer that connects under an identity in use takes it over
    (a client reconnecting), without it such a peer is refused (the workers' ROUTER: every
    worker has an identity of its own, and one that could take another's would get its
    batches)."""
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, send_hwm)
    socket.setsockopt(zmq.RCVHWM, receive_hwm)
    socket.setsockopt(zmq.ROUTER_HANDOVER, int(handover))
    return socket


def _client_router(context: zmq.Context, endpoints: Endpoints) -> zmq.Socket:
    """The front ROUTER: the client endpoint (with CURVE when configured) and the front ends'
    IPC endpoint, frames limited before they are buffered, replies queued per client up to
    CLIENT_REPLY_HWM (ROUTER_MANDATORY: a full queue raises instead of dropping silently)."""
    socket = _router(context, CLIENT_REPLY_HWM, CLIENT_REQUEST_HWM)
    socket.setsockopt(zmq.MAXMSGSIZE, endpoints.max_frame_bytes)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if endpoints.client_curve:
        public, secret = endpoints.curve_keys
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        socket.bind(endpoints.client)
        socket.curve_server = False  # libzmq takes the options at bind: the IPC stays plain
    else:
        socket.bind(endpoints.client)
    socket.bind(endpoints.front_ipc)
    return socket


def _worker_router(context: zmq.Context, endpoints: Endpoints) -> zmq.Socket:
    """The back ROUTER: the local workers' plain endpoints, then the remote workers' CURVE
    endpoint (libzmq takes the security options at bind, so only that one requires them)."""
    socket = _router(context, _WORKER_HWM, _WORKER_HWM, handover=False)
    for address in endpoints.back:
        socket.bind(address)
    if endpoints.remote_back:
        if endpoints.curve_keys is None or not endpoints.curve_worker_keys:
            raise ValueError("a remote worker endpoint needs the server's CURVE keys and the "
                             "authorized worker keys")
        public, secret = endpoints.curve_keys
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        socket.zap_domain = WORKER_ZAP_DOMAIN.encode()
        socket.bind(endpoints.remote_back)  # last: nothing bound after it takes its options
    return socket


class BrokerLoop:
    """Sockets around a BrokerCore; `run(stop_event)` or `run_once(timeout_ms)`."""

    def __init__(self, core: BrokerCore, endpoints: Endpoints,
                 supervisor: Supervisor | None = None, wakeup_fd: int | None = None,
                 context: zmq.Context | None = None) -> None:
        self.core = core
        self.supervisor = supervisor
        self.context = context or zmq.Context.instance()
        self.authenticator = None
        if endpoints.client_curve or endpoints.remote_back:
            self.authenticator = ThreadAuthenticator(self.context, log=log)
            self.authenticator.start()
        if endpoints.client_curve:
            self.authenticator.configure_curve(domain="*",
                                               location=endpoints.curve_authorized_keys)
        if endpoints.remote_back:
            self.authenticator.configure_curve(domain=WORKER_ZAP_DOMAIN,
                                               location=endpoints.curve_worker_keys)
        self.front = _client_router(self.context, endpoints)
        self.back = _worker_router(self.context, endpoints)
        self.control = None
        self.poller = zmq.Poller()
        self.poller.register(self.front, zmq.POLLIN)
        self.poller.register(self.back, zmq.POLLIN)
        if endpoints.control:
            self.control = _router(self.context, CLIENT_REPLY_HWM, CLIENT_REPLY_HWM)
            self.control.bind(endpoints.control)
            self.poller.register(self.control, zmq.POLLIN)
        core.peer_of = lambda frames: peer_of(frames[1])
        self.wakeup_fd = wakeup_fd
        if wakeup_fd is not None:
            self.poller.register(wakeup_fd, zmq.POLLIN)
        self._watched_pidfds: set[int] = set()
        self._synced_changes = -1
        self.stop_signalled = False
        #: called after a control call changed the models or their worker counts (the
        #: broker saves a snapshot)
        self.on_registry_change: Callable[[], None] | None = None
        #: when the workers' startup timeouts are next checked
        self._next_load_check_ns = 0
        #: replies dropped since the last log line (a client's queue was full), and when
        #: that line may next be written
        self._dropped_replies = 0
        self._drop_log_at_s = 0.0

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
            elif source is self.control:
                self._drain(self.control, core.on_control, now_ns)
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
        if supervisor is not None and now_ns >= self._next_load_check_ns:
            self._check_loads(now_ns)
        if now_ns >= wakeup_ns:
            core.on_tick(now_ns)
        self._flush()
        if core.lost_worker_ids:
            if supervisor is not None:
                for worker_id in core.lost_worker_ids:
                    supervisor.kill_worker(worker_id)
            core.lost_worker_ids.clear()
        if core.scale_requests or core.retired_worker_ids:
            self._apply_scaling()
        if core.registry_changed:
            core.registry_changed = False
            if self.on_registry_change is not None:
                self.on_registry_change()

    def _apply_scaling(self) -> None:
        """What `scale` calls decided: the supervisor adds or retires worker slots; a retired
        worker that is connected finishes what it was sent before it is stopped (the core
        says when), one that is not yet connected is stopped at once."""
        core = self.core
        supervisor = self.supervisor
        for model, workers in core.scale_requests:
            if supervisor is None:
                continue
            for worker_id in supervisor.scale(model, workers):
                if not core.retire(worker_id):
                    supervisor.stop_worker(worker_id)
        core.scale_requests.clear()
        if supervisor is not None:
            for worker_id in core.retired_worker_ids:
                supervisor.stop_worker(worker_id)
        core.retired_worker_ids.clear()

    def _check_loads(self, now_ns: int) -> None:
        """Kill the workers that overran their model's startup timeout (once a second)."""
        self._next_load_check_ns = now_ns + _LOAD_CHECK_INTERVAL_NS
        workers = self.core.workers
        for child in self.supervisor.overdue_loads(
                time.monotonic(), lambda worker_id: worker_id.encode() in workers):
            self.core.load_timed_out(child.model, child.worker_id)
            self.supervisor.kill_worker(child.worker_id)

    def _timeout_ms(self, now_ns: int, wakeup_ns: int) -> int:
        timeout_ms = max(0, -(-(wakeup_ns - now_ns) // 1_000_000))  # ceil
        if self.supervisor is not None:
            restart_s = self.supervisor.next_wakeup_s
            if restart_s is not None:
                timeout_ms = min(timeout_ms, max(0, int((restart_s - time.monotonic()) * 1000)))
        return min(timeout_ms, _MAX_POLL_MS)

    @staticmethod
    def _drain(socket: zmq.Socket, handle, now_ns: int) -> None:
        """Handle what waits on a socket that poll found readable, up to TURN_BUDGET_ITEMS
        items (a message counts its (head, body) pairs, at least one), asking after each
        message whether another waits (`has_message`) rather than ending on a failed
        receive. What is left waits for the next turn, after the timers have run."""
        budget = TURN_BUDGET_ITEMS
        while True:
            try:
                frames = recv_frames(socket, block=False)
            except zmq.Again:
                return
            handle(frames, now_ns)
            budget -= (len(frames) >> 1) or 1
            if budget <= 0 or not has_message(socket):
                return

    def _flush(self) -> None:
        core = self.core
        if core.out_front:
            self._send_to_clients(self.front, coalesce_client_messages(core.out_front))
            core.out_front.clear()
        if core.out_control:
            self._send_to_clients(self.control, core.out_control)
            core.out_control.clear()
        if core.out_back:
            for frames in core.out_back:
                try:
                    send_frames(self.back, frames)
                except zmq.Again:  # a worker's queue is full: it is gone or stuck
                    log.warning("dropped a message to a worker whose queue is full")
            core.out_back.clear()

    def _send_to_clients(self, socket: zmq.Socket, messages: list[list]) -> None:
        """Send replies; one to a client whose reply queue is full (it does not read) is
        dropped and counted, one to a client that has gone is dropped silently."""
        for frames in messages:
            try:
                send_frames(socket, frames)
            except zmq.Again:
                self._dropped_replies += (len(frames) - 2) >> 1
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
        if self._dropped_replies and time.monotonic() >= self._drop_log_at_s:
            log.warning("dropped %d replies to clients that do not read them (their queue of "
                        "%d messages was full)", self._dropped_replies, CLIENT_REPLY_HWM)
            self._dropped_replies = 0
            self._drop_log_at_s = time.monotonic() + _DROP_LOG_INTERVAL_S

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
        if self.control is not None:
            self.control.close(linger=200)
        if self.authenticator is not None:
            self.authenticator.stop()
