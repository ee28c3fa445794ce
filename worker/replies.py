"""The worker's reply socket, and the thread that can encode and send on it.

Everything a worker says after READY (W_REPLY, W_PARTIAL, DISCONNECT) goes out on one DEALER
whose identity is the worker id plus `protocol.REPLY_SUFFIX`, in the order it is handed over:

- `send(frames)` sends now, from the calling thread;
- `send_later(make_frames)` queues a call that builds frames (a batch's encoding); the reply
  thread runs it and sends the result, in submission order.

Why a thread: encoding a batch's answers (TorchServe's JSON, float by float) and sending them
takes the worker about 0.2 ms per MLP batch of 8, and while it does, no handler runs. For a
model that opts in (`overlapReplies: true`), when the next batch already waits and the handler
runs for milliseconds, the worker loop hands that work here and starts the next batch at
once; torch releases the GIL while it computes, so the encoding can run beside the forward
pass (on the development machine the gain was within the noise: docs/architecture.md).
Otherwise the loop sends itself: handing work to a thread and back costs about 50 us on a
2-core machine, more than a short batch would gain.

Order: `send` first waits until everything handed to `send_later` has been sent, so no
message overtakes one handed over before it. Whichever thread sends holds one lock around
the socket; a lock is the memory barrier ZeroMQ asks for when a socket changes threads.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

import zmq

from zerobatch import protocol
from zerobatch.transport import send_frames

log = logging.getLogger(__name__)

#: How long close() waits for queued replies to be encoded and sent.
CLOSE_WAIT_S = 5.0


class ReplyWriter:
    """The reply DEALER of one worker and its (lazily started) reply thread."""

    def __init__(self, zmq_context: zmq.Context, broker_address: str, worker_id: str) -> None:
        socket = zmq_context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IDENTITY, worker_id.encode("utf-8") + protocol.REPLY_SUFFIX)
        socket.connect(broker_address)
        self._socket = socket
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._unsent = 0  # jobs handed to send_later and not sent yet
        self._all_sent = threading.Condition()
        self._thread: threading.Thread | None = None
        self._name = f"replies-{worker_id}"
        #: The exception that ended the reply thread, if one did; the worker loop re-raises it.
        self.error: BaseException | None = None
        #: How many messages the reply thread sent.
        self.sent_later = 0

    def send(self, frames: list) -> None:
        """Send now, after everything queued before (zmq.Again: the broker cannot take it)."""
        self._check()
        if self._unsent:
            self.wait_sent()
        with self._lock:
            send_frames(self._socket, frames)

    def send_later(self, make_frames: Callable[[], list]) -> None:
        """Have the reply thread call make_frames() and send what it returns."""
        self._check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        with self._all_sent:
            self._unsent += 1
        self._jobs.put(make_frames)

    def wait_sent(self, timeout_s: float | None = None) -> bool:
        """Wait until everything handed to send_later was sent; False on timeout."""
        with self._all_sent:
            return self._all_sent.wait_for(lambda: not self._unsent, timeout_s)

    def close(self, linger_ms: int = 0) -> None:
        """Send what is queued (bounded by CLOSE_WAIT_S), end the thread, close the socket."""
        if self._thread is not None:
            self.wait_sent(CLOSE_WAIT_S)
            self._jobs.put(None)
            self._thread.join(CLOSE_WAIT_S)
        with self._lock:
            self._socket.close(linger=linger_ms)

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError("the reply thread failed") from self.error

    def _run(self) -> None:
        while True:
            make_frames = self._jobs.get()
            if make_frames is None:
                return
            try:
                frames = make_frames()
                with self._lock:
                    send_frames(self._socket, frames)
                self.sent_later += 1
            except zmq.Again:
                log.warning("broker unreachable: dropped a reply")
            except BaseException as exc:  # the loop re-raises it: a worker never goes mute
                log.exception("the reply thread failed")
                self.error = exc
            finally:
                with self._all_sent:
                    self._unsent -= 1
                    if not self._unsent:
                        self._all_sent.notify_all()
            if self.error is not None:
                self._drop_the_rest()
                return

    def _drop_the_rest(self) -> None:
        """After a failure: count every queued job as done, so nobody waits on them."""
        while True:
            try:
                make_frames = self._jobs.get_nowait()
            except queue.Empty:
                return
            if make_frames is None:
                return
            with self._all_sent:
                self._unsent -= 1
                if not self._unsent:
                    self._all_sent.notify_all()
