"""The worker's data loop: batches in on one DEALER, answers out on another, one batch at a time.

`WorkerLoop.start()` loads the model, connects the data DEALER (identity = worker id) and the
reply DEALER (worker.replies) to the broker's worker address, says READY and starts the
heartbeat thread. `run_once(timeout_ms)` waits for one message and answers it: a BATCH (or
BATCHES) runs through the Service and goes back as one W_REPLY (chunks the handler streams
meanwhile go out as W_PARTIAL, before it); a HEARTBEAT only proves the broker alive;
anything malformed is logged and dropped. `run(stop_event)` repeats that until the stop event
is set (then it says DISCONNECT) or the heartbeat thread declares the broker lost; it
returns which of the two happened.

Overlap, for a model whose model-config.yaml says `overlapReplies: true` (it is off by
default: on the 2-core development machine its gain was within the noise, see
docs/architecture.md): when a batch's handler ran for at least OVERLAP_MIN_HANDLER_NS and the
next batch already waits in the socket (the broker sends a full batch ahead to a busy
worker), its answers are held, and handed to the reply thread right before the next handler
call, once the next batch is decoded: the encoding and sending then run beside that handler
instead of before it. Otherwise this thread encodes and sends them itself, at once.

The handler runs on this thread; heartbeats live on their own thread and socket, so a long
forward pass never silences them. Sends never block: a reply the broker cannot take (it is
gone) is dropped, and the broker answers those requests itself.
"""

from __future__ import annotations

import logging
import os
import threading

import zmq
from zerobatch.worker.heartbeat import Heartbeat
from zerobatch.worker.replies import ReplyWriter
from zerobatch.worker.service import Computed, Service

from zerobatch import protocol
from zerobatch.config import WorkerConfig
from zerobatch.errors import ProtocolError
from zerobatch.transport import has_message, recv_frames, send_frames

log = logging.getLogger(__name__)

#: Longest run() waits for a message before it looks at its stop and lost events again.
POLL_MS = 50
#: How long a clean stop lets queued replies and DISCONNECT reach the broker.
DISCONNECT_LINGER_MS = 500
#: A batch whose handler calls took at least this long, with the next batch already waiting,
#: is answered by the reply thread (see Overlap above): some 20 times what handing it over
#: costs (about 50 us there and back on the 2-core development machine, measured by hand).
OVERLAP_MIN_HANDLER_NS = 1_000_000

STOPPED = "stopped"
BROKER_LOST = "broker_lost"


class WorkerLoop:
    """One worker: its model service, its data socket and its heartbeat thread."""

    def __init__(self, config: WorkerConfig, zmq_context: zmq.Context | None = None,
                 service: Service | None = None) -> None:
        self.config = config
        self.service = service
        self._zmq_context = zmq_context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._replies: ReplyWriter | None = None
        self._recv_timeout_ms = -1
        #: A batch answered but not encoded yet: it goes to the reply thread (see Overlap).
        self._held: Computed | None = None
        self.heartbeat: Heartbeat | None = None
        #: How many batches were answered by the reply thread, beside the next handler call.
        self.overlapped = 0

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
        # No IMMEDIATE here (unlike the heartbeat socket): READY is queued until the
        # connection is up instead of being refused while the broker is still starting.
        socket.connect(config.broker_address)
        self._replies = ReplyWriter(self._zmq_context, config.broker_address, config.worker_id)
        self._socket = socket
        # Streamed chunks go out at once, after any answers still queued on the reply thread.
        self.service.partial_sink = self._send
        # READY from the data socket: the broker sends batches to the identity it came from.
        try:
            send_frames(socket, protocol.encode_ready(config.model.name, config.model.version,
                                                      config.worker_id, config.gpu_id,
                                                      os.getpid()))
        except zmq.Again:
            log.warning("broker unreachable: could not say READY")
        self.heartbeat = Heartbeat(self._zmq_context, config.broker_address, config.worker_id,
                                   config.heartbeat_interval_ms)
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
            self._release_held()
            return False
        self.heartbeat.touch()
        try:
            batch_id, items, sizes = protocol.parse_batch(frames)
        except ProtocolError as exc:
            self._release_held()
            if len(frames) == 2 and frames[1].bytes == protocol.W_HEARTBEAT:
                return True
            log.warning("dropped a malformed message from the broker (%d frames): %s",
                        len(frames), exc)
            return True
        service = self.service
        handler_ns = service.handler_ns
        try:
            computed = service.compute(batch_id, items, sizes, self._release_held)
        finally:
            self._release_held()
        if (service.overlap_replies and service.handler_ns - handler_ns >= OVERLAP_MIN_HANDLER_NS
                and has_message(socket)):
            self._held = computed
        else:
            self._send(service.encode(computed))
        return True

    def _release_held(self) -> None:
        """Hand the held batch's answers, if any, to the reply thread."""
        held = self._held
        if held is not None:
            self._held = None
            self.overlapped += 1
            self._replies.send_later(lambda: Service.encode(held))

    def run(self, stop_event: threading.Event) -> str:
        """Serve until stop_event is set (-> STOPPED) or the broker is lost (-> BROKER_LOST)."""
        if self._socket is None:
            self.start()
        reason = None
        try:
            replies = self._replies
            while not stop_event.is_set():
                if self.heartbeat.lost.is_set():
                    reason = BROKER_LOST
                    return reason
                if replies.error is not None:
                    raise RuntimeError("the reply thread failed") from replies.error
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
        try:
            self._release_held()
            if disconnect:
                self._send(protocol.DISCONNECT_FRAMES)
                linger_ms = DISCONNECT_LINGER_MS
        finally:
            self._replies.close(linger_ms)
            socket.close(linger=0)
        log.info("worker %s %s", self.config.worker_id,
                 "disconnected" if disconnect else "closed its sockets")

    def _send(self, frames: list) -> None:
        """Send on the reply socket, after anything the reply thread still holds."""
        try:
            self._replies.send(frames)
        except zmq.Again:
            log.warning("broker unreachable: dropped a %r message", frames[1])


def report_load_failure(config: WorkerConfig, error: str,
                        zmq_context: zmq.Context | None = None) -> None:
    """Tell the broker why the model did not load (W_LOAD_FAILED), best effort, so that it can
    answer that model's requests with the reason instead of letting them wait."""
    socket = (zmq_context or zmq.Context.instance()).socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, config.worker_id.encode("utf-8"))
    socket.connect(config.broker_address)
    try:
        send_frames(socket, protocol.encode_load_failed(
            config.model.name, config.model.version, config.worker_id, error))
    except zmq.Again:
        log.warning("could not report the load failure to the broker")
    finally:
        socket.close(linger=DISCONNECT_LINGER_MS)
