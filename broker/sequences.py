"""Sequence batching for stateful handlers: which worker and which request next, per sequence.

TorchServe's `sequenceBatching` (a model-config.yaml key) serves handlers that keep state per
sequence (a session) in the worker, as pytorch/serve's examples/stateful does: the handler
reads `context.get_sequence_id(i)` and keeps what it learned under that id. For that to work
the broker must give the handler each sequence's requests one at a time, in order, always in
the same worker. A `Sequences` keeps that book for one model version, over integers (request
ids, deadlines, the clock passed in) and worker keys (anything hashable); BrokerCore routes and
sends, this module decides:

- A request names its sequence with the `ts_request_sequence_id` header. Without one it starts
  a new sequence, whose id the broker makes (`ts-seq-<uuid4>`) and adds to the request's
  headers with `ts_request_sequence_start: true`, as TorchServe's front end does; an id this
  model has no open sequence under starts a new sequence under that id (the client chose it).
- A sequence is pinned to the worker that runs its first request, for its whole life: its
  state lives in that worker's handler. A worker takes new sequences up to its share of the
  open ones (ceil(open / workers)), so sequences spread over the workers.
- At most one request of a sequence is in flight; the others wait in arrival order. A batch
  holds at most one request per sequence; different sequences batch together, up to
  `batch_size`. A free worker takes what is ready at once (no batch delay).
- Bounds, as TorchServe has them: a sequence holds one request running (or next) and up to
  `maxSequenceJobQueueSize` more waiting; at most max(`maxNumSequence`, batchSize × maxWorkers)
  sequences are open at once. Beyond either, a request is refused (503, QueueFull).
- A sequence expires once it has had nothing waiting or running for `sequenceMaxIdleMSec`, or
  once it has nothing waiting or running after `sequenceTimeoutMSec` from its start (0:
  never; until then it still takes requests, as TorchServe's JobGroup does). A later request
  naming its id starts a new sequence under that id, as in TorchServe 0.12 (its
  SequenceBatching drops an expired JobGroup, and Model.addJob makes a new one).
- The `ts_request_sequence_end` header is the handler's business: TorchServe 0.12's plain
  sequence batching never reads it (only SequenceContinuousBatching does), so the sequence
  goes on.
- When its worker is lost, the request it ran is answered `worker_lost` (BrokerCore) and the
  sequence goes on without its state: its waiting and later requests go to whichever worker
  takes it next. (TorchServe 0.12 has no answer to copy there: it never restarts a lost
  sequence-batching worker, and the sequence's later requests wait for ever.)

`strict` (zerobatch's own answers, `--zerobatch-answers`) changes the last three, so that no
request runs without the state its client expects:

- a sequence ends after the answer to a request carrying `ts_request_sequence_end: true`;
- a timed-out sequence takes no new request; a lost worker's sequences close, and their
  waiting requests are answered `worker_lost`;
- an ended, expired or lost sequence's id is remembered (at most GONE_REMEMBERED ids, for
  GONE_REMEMBERED_NS): a request naming it is refused rather than silently starting over.
  After that the id is free again.

(BrokerCore, with `strict`, also answers each request with its sequence id as the
`ts_request_sequence_id` response header unless the handler set one; TorchServe leaves that to
the handler.)

Each waiting request also keeps its deadline: one that passes in the queue is answered
`deadline_exceeded`, as the aggregator does for other models.
"""

from __future__ import annotations

import heapq
import uuid
from collections import deque
from typing import Callable, Hashable

from zerobatch.errors import BadRequest, QueueFull, ServingError, WorkerLost

#: the request headers TorchServe's context reads (TS_REQUEST_SEQUENCE_* rename them there)
SEQUENCE_ID_HEADER = "ts_request_sequence_id"
SEQUENCE_START_HEADER = "ts_request_sequence_start"
SEQUENCE_END_HEADER = "ts_request_sequence_end"
#: the longest sequence id a client may choose
MAX_SEQUENCE_ID_CHARS = 256
#: how many ended, expired or lost sequence ids a model remembers, and for how long
GONE_REMEMBERED = 4096
GONE_REMEMBERED_NS = 300 * 1_000_000_000

ENDED = "ended"
EXPIRED = "expired"
LOST = "lost"
QUEUE_FULL = "queue_full"
TOO_MANY = "too_many"


def new_sequence_id() -> str:
    """A fresh id, in TorchServe's form."""
    return f"ts-seq-{uuid.uuid4()}"


class SequenceRefused(Exception):
    """A request this model's sequences cannot take; `reason` says why (see refusal_error)."""

    def __init__(self, reason: str, sequence_id: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sequence_id = sequence_id


def refusal_error(refused: SequenceRefused, model: str) -> ServingError:
    """The answer to a refused request, in zerobatch's words: the HTTP front end answers a
    QueueFull with TorchServe's own 503 message (api/http_helpers.py), a WorkerLost with its
    "Worker died.", unless zerobatch's answers are on (--zerobatch-answers)."""
    reason = refused.reason
    sequence = f'Sequence "{refused.sequence_id}" of model "{model}"'
    if reason == LOST:
        return WorkerLost(f"{sequence}: the worker that held it was lost, and the sequence's "
                          "state with it; start a new sequence")
    if reason == ENDED:
        return QueueFull(f"{sequence} has ended ({SEQUENCE_END_HEADER}); start a new sequence")
    if reason == EXPIRED:
        return QueueFull(f"{sequence} has expired (idle past sequenceMaxIdleMSec, or past "
                         "sequenceTimeoutMSec); start a new sequence")
    if reason == TOO_MANY:
        return QueueFull(f'Model "{model}" has as many open sequences as it may have '
                         "(maxNumSequence, or batchSize x maxWorkers when that is more); end "
                         "one or let it expire")
    return QueueFull(f"{sequence} has as many requests waiting as it may hold "
                     "(maxSequenceJobQueueSize); wait for its answers")


class _Sequence:
    __slots__ = ("sequence_id", "waiting", "worker", "running", "ending", "timed_out", "gone")

    def __init__(self, sequence_id: str) -> None:
        self.sequence_id = sequence_id
        #: (request id, deadline ns) in arrival order
        self.waiting: deque[tuple[int, int]] = deque()
        #: the worker key it is pinned to; None until its first request is dispatched
        self.worker: Hashable | None = None
        #: the request id in flight, or None
        self.running: int | None = None
        #: an accepted request carries the end header: nothing more is taken
        self.ending = False
        #: past sequenceTimeoutMSec: nothing more is taken
        self.timed_out = False
        #: why it closed (ENDED, EXPIRED, LOST), or None while open
        self.gone: str | None = None


class Sequences:
    """The sequences of one model version; see the module docstring."""

    def __init__(self, *, batch_size: int, max_sequences: int, max_queued: int,
                 max_idle_ns: int, timeout_ns: int = 0, strict: bool = False,
                 new_id: Callable[[], str] = new_sequence_id) -> None:
        self.batch_size = batch_size
        #: zerobatch's stricter rules (see the module docstring); TorchServe's when False
        self.strict = strict
        self.max_sequences = max_sequences
        self.max_queued = max_queued
        self.max_idle_ns = max_idle_ns
        self.timeout_ns = timeout_ns
        self._new_id = new_id
        #: open sequences by id
        self._open: dict[str, _Sequence] = {}
        #: closed ids -> (why, when), oldest first
        self._gone: dict[str, tuple[str, int]] = {}
        #: sequences with nothing waiting or running -> since when, oldest first
        self._quiet: dict[_Sequence, int] = {}
        #: open sequences not yet timed out -> start time, oldest first (timeout_ns only)
        self._by_start: dict[_Sequence, int] = {}
        #: worker -> its sequences that may have a request ready (checked when taken)
        self._ready: dict[Hashable, dict[_Sequence, None]] = {}
        #: sequences with a request ready and no worker yet, oldest first
        self._unpinned: dict[_Sequence, None] = {}
        #: worker -> open sequences pinned to it
        self._pinned: dict[Hashable, int] = {}
        #: worker -> the sequences of the batch it runs, in batch order
        self._running: dict[Hashable, list[_Sequence]] = {}
        #: waiting request id -> its sequence; and (deadline, request id), a heap whose
        #: entries for requests no longer waiting are dropped when met
        self._waiting_in: dict[int, _Sequence] = {}
        self._deadlines: list[tuple[int, int]] = []

    def __len__(self) -> int:
        """Requests waiting (not running)."""
        return len(self._waiting_in)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def __contains__(self, sequence_id: object) -> bool:
        """Whether a sequence is open under this id."""
        return sequence_id in self._open

    # ------------------------------------------------------------------ arrivals

    def admit(self, sequence_id: str | None, request_id: int, deadline_ns: int, ends: bool,
              now_ns: int) -> tuple[str, bool]:
        """Queue a request in its sequence: (sequence id, whether this request started a
        sequence whose id the broker made). SequenceRefused when it cannot be taken;
        BadRequest for an id longer than MAX_SEQUENCE_ID_CHARS. `ends` (the end header) is
        read only when strict."""
        made = not sequence_id
        if made:
            sequence_id = self._new_id()
            sequence = self._start(sequence_id, now_ns)
        else:
            if len(sequence_id) > MAX_SEQUENCE_ID_CHARS:
                raise BadRequest(f"{SEQUENCE_ID_HEADER} is longer than "
                                 f"{MAX_SEQUENCE_ID_CHARS} characters")
            sequence = self._open.get(sequence_id)
            if sequence is not None:
                self._expire_sequences(now_ns)  # it may have just run out of time
                sequence = self._open.get(sequence_id)
            if sequence is None:
                if self.strict:
                    self._forget_gone(now_ns)
                    gone = self._gone.get(sequence_id)
                    if gone is not None:
                        raise SequenceRefused(gone[0], sequence_id)
                sequence = self._start(sequence_id, now_ns)
            elif sequence.ending:
                raise SequenceRefused(ENDED, sequence_id)
            elif sequence.timed_out and self.strict:
                raise SequenceRefused(EXPIRED, sequence_id)
            elif len(sequence.waiting) + (sequence.running is not None) > self.max_queued:
                raise SequenceRefused(QUEUE_FULL, sequence_id)
        sequence.waiting.append((request_id, deadline_ns))
        self._waiting_in[request_id] = sequence
        heapq.heappush(self._deadlines, (deadline_ns, request_id))
        if ends and self.strict:
            sequence.ending = True
        self._quiet.pop(sequence, None)
        if sequence.running is None:
            self._mark_ready(sequence)
        return sequence_id, made

    def _start(self, sequence_id: str, now_ns: int) -> _Sequence:
        if len(self._open) >= self.max_sequences:
            self._expire_sequences(now_ns)
            if len(self._open) >= self.max_sequences:
                raise SequenceRefused(TOO_MANY, sequence_id)
        sequence = _Sequence(sequence_id)
        self._open[sequence_id] = sequence
        if self.timeout_ns:
            self._by_start[sequence] = now_ns
        return sequence

    def _mark_ready(self, sequence: _Sequence) -> None:
        if sequence.worker is None:
            self._unpinned[sequence] = None
        else:
            self._ready.setdefault(sequence.worker, {})[sequence] = None

    # ------------------------------------------------------------------ dispatch and answers

    def next_batch(self, worker: Hashable, workers: int) -> list[int]:
        """The request ids a free `worker` should run now, one per sequence, at most
        batch_size: its own sequences' next requests first (oldest ready first), then new
        sequences up to its share of the open ones among `workers` serving workers. [] when
        it has nothing to do. The worker runs them until `answered` or `worker_lost`."""
        if worker in self._running:
            return []
        batch: list[int] = []
        taken: list[_Sequence] = []
        ready = self._ready.get(worker)
        if ready:
            for sequence in list(ready):
                del ready[sequence]
                if sequence.waiting and sequence.running is None and sequence.gone is None:
                    self._take(sequence, batch, taken)
                    if len(batch) == self.batch_size:
                        break
        if len(batch) < self.batch_size and self._unpinned:
            share = -(-len(self._open) // max(workers, 1))
            pinned = self._pinned.get(worker, 0)
            for sequence in list(self._unpinned):
                if pinned >= share or len(batch) == self.batch_size:
                    break
                del self._unpinned[sequence]
                if sequence.gone is not None or not sequence.waiting:
                    continue
                sequence.worker = worker
                pinned += 1
                self._take(sequence, batch, taken)
            self._pinned[worker] = pinned
        if taken:
            self._running[worker] = taken
        if len(self._deadlines) > 2 * len(self._waiting_in) + 64:
            self._deadlines = [(deadline_ns, request_id) for deadline_ns, request_id
                               in self._deadlines if request_id in self._waiting_in]
            heapq.heapify(self._deadlines)
        return batch

    def _take(self, sequence: _Sequence, batch: list[int], taken: list[_Sequence]) -> None:
        request_id, _deadline_ns = sequence.waiting.popleft()
        del self._waiting_in[request_id]
        sequence.running = request_id
        batch.append(request_id)
        taken.append(sequence)

    def running_ids(self, worker: Hashable) -> list[str]:
        """The sequence ids of the batch `worker` runs, in batch order."""
        return [sequence.sequence_id for sequence in self._running.get(worker, ())]

    def answered(self, worker: Hashable, now_ns: int) -> list[str]:
        """The worker answered its batch: each sequence's next request may go (to this same
        worker), an ending or timed-out sequence with nothing more closes, the others turn
        quiet. The sequence ids of the batch, in batch order."""
        ids = []
        for sequence in self._running.pop(worker, ()):
            ids.append(sequence.sequence_id)
            sequence.running = None
            if sequence.gone is not None:
                continue
            if sequence.waiting:
                self._ready.setdefault(worker, {})[sequence] = None
            else:
                self._settle(sequence, now_ns)
        return ids

    def _settle(self, sequence: _Sequence, now_ns: int) -> None:
        """A sequence with nothing waiting or running: closed when it was told to end or ran
        out of time, else quiet from now."""
        if sequence.ending:
            self._close(sequence, ENDED, now_ns)
        elif sequence.timed_out:
            self._close(sequence, EXPIRED, now_ns)
        else:
            self._quiet.pop(sequence, None)  # kept oldest first: a re-entry goes last
            self._quiet[sequence] = now_ns

    # ------------------------------------------------------------------ losses and timers

    def worker_lost(self, worker: Hashable, now_ns: int) -> list[int]:
        """The worker is gone, and the state of every sequence pinned to it (the caller
        answers the batch it ran). Strict: those sequences close (LOST) and their waiting
        request ids are returned, to be answered `worker_lost`. Else they go on, unpinned:
        the next worker free takes them; [] is returned."""
        self._running.pop(worker, None)
        self._ready.pop(worker, None)
        self._pinned.pop(worker, None)
        failed: list[int] = []
        for sequence in [s for s in self._open.values() if s.worker == worker]:
            sequence.running = None
            if not self.strict:
                sequence.worker = None
                if sequence.waiting:
                    self._unpinned[sequence] = None
                else:
                    self._settle(sequence, now_ns)
                continue
            for request_id, _deadline_ns in sequence.waiting:
                del self._waiting_in[request_id]
                failed.append(request_id)
            sequence.waiting.clear()
            self._close(sequence, LOST, now_ns)
        return failed

    def expire(self, now_ns: int) -> list[int]:
        """Waiting requests whose deadline has passed (taken out; the caller answers them
        `deadline_exceeded`); sequences idle past sequenceMaxIdleMSec or older than
        sequenceTimeoutMSec close on the way."""
        expired = []
        heap = self._deadlines
        while heap and heap[0][0] <= now_ns:
            deadline_ns, request_id = heapq.heappop(heap)
            sequence = self._waiting_in.pop(request_id, None)
            if sequence is None:
                continue
            sequence.waiting.remove((request_id, deadline_ns))
            expired.append(request_id)
            if not sequence.waiting and sequence.running is None:
                self._settle(sequence, now_ns)
        self._expire_sequences(now_ns)
        self._forget_gone(now_ns)
        return expired

    def _expire_sequences(self, now_ns: int) -> None:
        quiet = self._quiet
        while quiet:
            sequence, since_ns = next(iter(quiet.items()))
            if since_ns + self.max_idle_ns > now_ns:
                break
            self._close(sequence, EXPIRED, now_ns)
        by_start = self._by_start
        while by_start:
            sequence, started_ns = next(iter(by_start.items()))
            if started_ns + self.timeout_ns > now_ns:
                break
            del by_start[sequence]
            sequence.timed_out = True
            if sequence in quiet:
                self._close(sequence, EXPIRED, now_ns)

    def _forget_gone(self, now_ns: int) -> None:
        gone = self._gone
        while gone:
            sequence_id, (_why, at_ns) = next(iter(gone.items()))
            if len(gone) <= GONE_REMEMBERED and at_ns + GONE_REMEMBERED_NS > now_ns:
                break
            del gone[sequence_id]

    def next_wakeup_ns(self) -> int:
        """When `expire` next has something to do; -1 when nothing is due."""
        heap = self._deadlines
        while heap and heap[0][1] not in self._waiting_in:
            heapq.heappop(heap)
        at = heap[0][0] if heap else -1
        if self._quiet:
            idle_at = next(iter(self._quiet.values())) + self.max_idle_ns
            if at < 0 or idle_at < at:
                at = idle_at
        if self._by_start:
            timeout_at = next(iter(self._by_start.values())) + self.timeout_ns
            if at < 0 or timeout_at < at:
                at = timeout_at
        return at

    def _close(self, sequence: _Sequence, why: str, now_ns: int) -> None:
        sequence.gone = why
        sequence_id = sequence.sequence_id
        del self._open[sequence_id]
        self._quiet.pop(sequence, None)
        self._by_start.pop(sequence, None)
        self._unpinned.pop(sequence, None)
        worker = sequence.worker
        if worker is not None and worker in self._pinned:
            self._pinned[worker] -= 1
        if self.strict:
            self._gone.pop(sequence_id, None)
            self._gone[sequence_id] = (why, now_ns)

    def drain(self) -> list[int]:
        """Every waiting request id, taken out (the model stops: shutdown, unregistration, a
        failed load); the sequences with nothing running are forgotten."""
        waiting = list(self._waiting_in)
        self._waiting_in.clear()
        self._deadlines.clear()
        self._unpinned.clear()
        self._ready.clear()
        for sequence in list(self._open.values()):
            sequence.waiting.clear()
            if sequence.running is None:
                del self._open[sequence.sequence_id]
                self._quiet.pop(sequence, None)
                self._by_start.pop(sequence, None)
                if sequence.worker in self._pinned:
                    self._pinned[sequence.worker] -= 1
                sequence.gone = EXPIRED
        return waiting
