"""The worker's data loop: one DEALER socket to the broker, one batch at a time.

`WorkerLoop.start()` loads the model, connects the data DEALER (identity = worker id) to the
broker's worker address, says READY and starts the heartbeat thread. `run_once(timeout_ms)`
waits for one message and answers it: a BATCH (or BATCHES) runs through the Service and goes
back as one W_REPLY (chunks the handler streams meanwhile go out as W_PARTIAL, before it); a
HEARTBEAT only proves the broker alive; a DISCONNECT dismisses the worker (the broker serves
no such model); anything malformed is logged and dropped. `run(stop_event)` repeats that
until the stop event is set or the broker dismisses it (then it says DISCONNECT: STOPPED), or
the heartbeat thread declares the broker lost (BROKER_LOST); it returns which happened.
A remote worker (WorkerConfig.remote: `zerobatch worker`) connects every socket with CURVE
and sends its model's digest in READY; the broker may refuse it with a DISCONNECT that says
why (`dismissed_reason`).

The handler runs on this thread; heartbeats live on their own thread and socket, so a long
forward pass never silences them. Sends never block: a reply the broker cannot take (it is
gone) is dropped, and the broker answers those requests itself.
"""

from __future__ import annotations

import logging
import os
import threading

import zmq

from zerobatch import curve, protocol
from zerobatch.config import WorkerConfig
from zerobatch.errors import ProtocolError
from zerobatch.transport import recv_frames, send_frames
from zerobatch.worker.heartbeat import Heartbeat
from zerobatch.worker.service import Service

log = logging.getLogger(__name__)

#: Longest run() waits for a message before it looks at its stop and lost events again.
POLL_MS = 50
#: How long a clean stop lets queued replies and DISCONNECT reach the broker.
DISCONNECT_LINGER_MS = 500

STOPPED = "stopped"
BROKER_LOST = "broker_lost"


class WorkerLoop:
    """One worker: its model service, its data socket and its heartbeat thread."""

    def __init__(self, config: WorkerConfig, zmq_context: zmq.Context | None = None,
                 service: Service | None = None, digest: str | None = None) -> None:
        self.config = config
        self.service = service
        #: the model directory's digest, sent in READY (remote workers: model_files)
        self.digest = digest
        self._zmq_context = zmq_context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._recv_timeout_ms = -1
        self.heartbeat: Heartbeat | None = None
        #: the broker said DISCONNECT: it will send this worker nothing; run() ends STOPPED
        self.dismissed = False
        #: the reason the broker's DISCONNECT gave, "" for none
        self.dismissed_reason = ""

    @property
    def broker_lost(self) -> bool:
        return self.heartbeat is not None and self.heartbeat.lost.is_set()

    def start(self) -> None:
        """Load the model (unless a service was given), connect, say READY, start heartbeats."""
        config = self.config
        if self.service is None:
            self.service = Service.load(config.model, config.gpu_id)
        socket = self._zmq_context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IDENTITY, config.worker_id.encode("utf-8"))
        secure(socket, config)
        # No IMMEDIATE here (unlike the heartbeat socket): READY is queued until the
        # connection is up instead of being refused while the broker is still starting.
        socket.connect(config.broker_address)
        self._socket = socket
        # Streamed chunks go out at once on this socket: the handler runs on this thread.
        self.service.partial_sink = self._send
        self._send(protocol.encode_ready(config.model.name, config.model.version,
                                         config.worker_id, config.gpu_id, os.getpid(),
                                         self.digest))
        self.heartbeat = Heartbeat(self._zmq_context, config.broker_address, config.worker_id,
                                   config.heartbeat_interval_ms,
                                   parent_pid=0 if config.remote else None,
                                   socket_setup=lambda socket: secure(socket, config))
        self.heartbeat.start()
        log.info("worker %s ready for %s/%s at %s (gpu %s)", config.worker_id,
                 config.model.name, config.model.version, config.broker_address, config.gpu_id)

    def run_once(self, timeout_ms: int) -> bool:
        """Wait up to timeout_ms for one message from the broker and handle it."""
        socket = self._socket
        if timeout_ms != self._recv_timeout_ms:  # a receive timeout instead of a poll: one call
            socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._recv_timeout_ms = timeout_ms
        try:
            frames = recv_frames(socket)
        except zmq.Again:
            return False
        self.heartbeat.touch()
        try:
            batch_id, items, sizes = protocol.parse_batch(frames)
        except ProtocolError as exc:
            if protocol.is_heartbeat(frames):
                return True
            if protocol.is_disconnect(frames):
                self.dismissed_reason = protocol.disconnect_reason(frames)
                if self.dismissed_reason:
                    log.error("worker %s: the broker said DISCONNECT: %s; stopping",
                              self.config.worker_id, self.dismissed_reason)
                else:
                    log.warning("worker %s: the broker said DISCONNECT (it does not serve "
                                "%s); stopping", self.config.worker_id, self.config.model.key)
                self.dismissed = True
                return True
            log.warning("dropped a malformed message from the broker (%d frames): %s",
                        len(frames), exc)
            return True
        self._send(self.service.run_batch(batch_id, items, sizes))
        return True

    def run(self, stop_event: threading.Event) -> str:
        """Serve until stop_event is set (-> STOPPED) or the broker is lost (-> BROKER_LOST)."""
        if self._socket is None:
            self.start()
        reason = None
        try:
            while not (stop_event.is_set() or self.dismissed):
                if self.heartbeat.lost.is_set():
                    reason = BROKER_LOST
                    return reason
                self.run_once(POLL_MS)
            reason = STOPPED
            return reason
        finally:
            self.close(disconnect=reason == STOPPED)

    def close(self, disconnect: bool = True) -> None:
        """Stop heartbeats, say DISCONNECT when asked, and close the data socket."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        socket, self._socket = self._socket, None
        if socket is None:
            return
        linger_ms = 0
        if disconnect:
            self._send(protocol.DISCONNECT_FRAMES, socket)
            linger_ms = DISCONNECT_LINGER_MS
        socket.close(linger=linger_ms)
        log.info("worker %s %s", self.config.worker_id,
                 "disconnected" if disconnect else "closed its sockets")

    def _send(self, frames: list, socket: zmq.Socket | None = None) -> None:
        try:
            send_frames(socket or self._socket, frames)
        except zmq.Again:
            log.warning("broker unreachable: dropped a %r message", frames[1])


def secure(socket: zmq.Socket, config: WorkerConfig) -> None:
    """A remote worker's socket is a CURVE client of the broker (before connect); a local
    worker's stays plain."""
    if config.remote:
        curve.connect_with_curve(socket, config.curve_server_key, config.curve_secret_key)


def report_load_failure(config: WorkerConfig, error: str,
                        zmq_context: zmq.Context | None = None) -> None:
    """Tell the broker why the model did not load (W_LOAD_FAILED), best effort, so that it can
    answer that model's requests with the reason instead of letting them wait."""
    socket = (zmq_context or zmq.Context.instance()).socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, config.worker_id.encode("utf-8"))
    secure(socket, config)
    socket.connect(config.broker_address)
    try:
        send_frames(socket, protocol.encode_load_failed(
            config.model.name, config.model.version, config.worker_id, error))
    except zmq.Again:
        log.warning("could not report the load failure to the broker")
    finally:
        socket.close(linger=DISCONNECT_LINGER_MS)
