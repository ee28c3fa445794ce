"""The batching core in pure Python: the specification that the compiled twin must match.

An `Aggregator` holds the request ids waiting for one model version and decides, each time the
broker polls it, which requests have expired and which ones go to a free worker as a batch.
It is a decision function over integers: the caller passes every time stamp in (nanoseconds),
the aggregator never reads a clock and never sees a payload. `broker/aggregator.py` picks this
twin or the compiled one (`csrc/_aggregator.pyx`); both take the same calls and give the same
answers, decision for decision, which `tests/unit/test_aggregator*.py` check.

Order. Waiting requests are ordered by (deadline_ns, push order). Request ids must rise
strictly from one push to the next (the broker uses a counter), so push order is id order
and the id itself breaks deadline ties.

Dispatch rules, tried in order by `poll` when a worker is free and n > 0 requests wait
(B = batch_size, D = max_batch_delay_ns, oldest = earliest push time among the waiting,
earliest = smallest deadline among them, E = expected_run_ns(n)):
  1. n >= B: dispatch the B requests with the earliest deadlines;
  2. now - oldest >= D: dispatch all;
  3. earliest - now <= E: dispatch all (waiting longer would make the earliest deadline miss);
  4. adaptive: dispatch all. Batching is then work-conserving: a free worker never idles while
     requests wait, so a lone request (concurrency 1) runs at once, and under load batches fill
     by themselves while the workers are busy. Without adaptive (TorchServe's behaviour) a
     partial batch waits for rule 2 or 3.
Otherwise no batch. Expired requests (deadline <= now) are removed by every poll.

Domain. Time stamps (`now_ns`, `deadline_ns`) and `max_batch_delay_ns` lie in 0..MAX_TIME_NS
(2**62 - 1 ns, some 146 years), so that the compiled twin's int64 sums never overflow;
request ids are any int64. A value outside int64 raises OverflowError and a non-integer
TypeError, as the compiled twin's argument conversion does; a value inside int64 but outside
the domain raises ValueError.
"""

from __future__ import annotations

import heapq
import operator

#: Largest time stamp (and max_batch_delay_ns) the aggregator accepts, in nanoseconds.
MAX_TIME_NS = (1 << 62) - 1
#: Largest max_queue: the compiled twin allocates its tables for max_queue requests up front.
MAX_QUEUE_LIMIT = 1 << 24

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


class Aggregator:
    """Waiting request ids of one model version, and the rules that batch them."""

    __slots__ = ("_batch_size", "_max_batch_delay_ns", "_max_queue", "_adaptive",
                 "_by_deadline", "_by_arrival", "_waiting", "_last_id", "_run_ns")

    def __init__(self, batch_size: int, max_batch_delay_ns: int, max_queue: int,
                 adaptive: bool = True) -> None:
        batch_size = _int64("batch_size", batch_size)
        max_batch_delay_ns = _int64("max_batch_delay_ns", max_batch_delay_ns)
        max_queue = _int64("max_queue", max_queue)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= max_batch_delay_ns <= MAX_TIME_NS:
            raise ValueError(f"max_batch_delay_ns must be within 0..{MAX_TIME_NS}, "
                             f"got {max_batch_delay_ns}")
        if max_queue < batch_size:
            raise ValueError(f"max_queue ({max_queue}) must be at least batch_size "
                             f"({batch_size}); raise max_queue")
        if max_queue > MAX_QUEUE_LIMIT:
            raise ValueError(f"max_queue ({max_queue}) must be at most {MAX_QUEUE_LIMIT}; "
                             "lower max_queue")
        self._batch_size = batch_size
        self._max_batch_delay_ns = max_batch_delay_ns
        self._max_queue = max_queue
        self._adaptive = bool(adaptive)
        # Exactly the waiting requests, as a heap of (deadline_ns, request_id): removals only
        # ever take its smallest entries (expiry, a full batch) or all of it.
        self._by_deadline: list[tuple[int, int]] = []
        # The waiting requests by (enqueue_ns, request_id), for `oldest`. Deleted lazily:
        # entries whose id left `_waiting` are skipped, and the heap is rebuilt when stale
        # entries outnumber live ones.
        self._by_arrival: list[tuple[int, int]] = []
        self._waiting: set[int] = set()
        # The id of the last push that passed validation, accepted or refused.
        self._last_id: int | None = None
        # _run_ns[m]: estimated run time of a batch of m requests (index 0 unused), None until
        # the broker observed one.
        self._run_ns: list[int | None] = [None] * (batch_size + 1)

    # ------------------------------------------------------------------ read-only settings

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def max_batch_delay_ns(self) -> int:
        return self._max_batch_delay_ns

    @property
    def max_queue(self) -> int:
        return self._max_queue

    @property
    def adaptive(self) -> bool:
        return self._adaptive

    def __len__(self) -> int:
        return len(self._by_deadline)

    def __repr__(self) -> str:
        return (f"Aggregator(batch_size={self._batch_size}, "
                f"max_batch_delay_ns={self._max_batch_delay_ns}, max_queue={self._max_queue}, "
                f"adaptive={self._adaptive}, waiting={len(self._by_deadline)})")

    # ------------------------------------------------------------------ arrivals

    def push(self, request_id: int, now_ns: int, deadline_ns: int) -> bool:
        """Queue a request; False (nothing stored) when max_queue requests already wait.

        request_id must exceed the id of every earlier push, refused ones included."""
        request_id = _int64("request_id", request_id)
        now_ns = _int64("now_ns", now_ns)
        deadline_ns = _int64("deadline_ns", deadline_ns)
        _check_time("now_ns", now_ns)
        _check_time("deadline_ns", deadline_ns)
        if self._last_id is not None and request_id <= self._last_id:
            raise ValueError(f"request_id {request_id} must be greater than the last pushed "
                             f"id {self._last_id}")
        self._last_id = request_id
        if len(self._by_deadline) == self._max_queue:
            return False
        heapq.heappush(self._by_deadline, (deadline_ns, request_id))
        heapq.heappush(self._by_arrival, (now_ns, request_id))
        self._waiting.add(request_id)
        return True

    # ------------------------------------------------------------------ decisions

    def poll(self, now_ns: int, worker_free: bool) -> tuple[list[int], list[int]]:
        """Remove and return (expired, batch); batch is [] unless a worker is free and a rule
        says go. Both lists are ordered by (deadline_ns, push order)."""
        now_ns = _int64("now_ns", now_ns)
        _check_time("now_ns", now_ns)
        by_deadline = self._by_deadline
        expired: list[int] = []
        while by_deadline and by_deadline[0][0] <= now_ns:
            expired.append(self._pop_earliest())
        batch: list[int] = []
        if worker_free and by_deadline:
            n = len(by_deadline)
            if n >= self._batch_size:  # rule 1
                batch = [self._pop_earliest() for _ in range(self._batch_size)]
            elif self._dispatch_all(now_ns, n):  # rules 2, 3 and 4
                batch = self.drain()
        if len(self._by_arrival) > 2 * len(by_deadline) + 16:
            self._compact_arrivals()
        return expired, batch

    def _dispatch_all(self, now_ns: int, n: int) -> bool:
        """Rules 2-4, for 0 < n < batch_size waiting requests (none of them expired)."""
        if now_ns - self._oldest_ns() >= self._max_batch_delay_ns:  # rule 2: waited the delay
            return True
        if self._by_deadline[0][0] - now_ns <= self.expected_run_ns(n):  # rule 3: no time left
            return True
        return self._adaptive  # rule 4: a free worker takes what waits

    def next_wakeup_ns(self, now_ns: int, worker_free: bool) -> int:
        """The earliest time at which `poll` could answer differently, -1 when nothing waits.

        Never less than now_ns: now_ns itself means "poll now". Without new arrivals, polling
        at any time before the answer finds nothing to do, and polling at it finds something.
        """
        now_ns = _int64("now_ns", now_ns)
        _check_time("now_ns", now_ns)
        by_deadline = self._by_deadline
        if not by_deadline:
            return -1
        earliest_ns = by_deadline[0][0]
        wakeup_ns = earliest_ns  # expiry of the earliest deadline
        if worker_free:
            n = len(by_deadline)
            if n >= self._batch_size or self._adaptive:  # rule 1 or rule 4 holds already
                return now_ns
            wakeup_ns = min(wakeup_ns,
                            self._oldest_ns() + self._max_batch_delay_ns,  # rule 2
                            earliest_ns - self.expected_run_ns(n))  # rule 3
        return max(wakeup_ns, now_ns)

    # ------------------------------------------------------------------ run-time estimates

    def observe(self, batch_len: int, run_ns: int) -> None:
        """Record that a batch of batch_len requests took run_ns from dispatch to reply."""
        batch_len = _int64("batch_len", batch_len)
        run_ns = max(0, _int64("run_ns", run_ns))
        if not 1 <= batch_len <= self._batch_size:
            raise ValueError(f"batch_len must be within 1..{self._batch_size}, got {batch_len}")
        estimate_ns = self._run_ns[batch_len]
        self._run_ns[batch_len] = run_ns if estimate_ns is None else (7 * estimate_ns + run_ns) >> 3

    def expected_run_ns(self, n: int) -> int:
        """Estimated run time of a batch of min(n, batch_size) requests: its own estimate, else
        the nearest known larger size, else the nearest known smaller size, else 0."""
        n = _int64("n", n)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        size = min(n, self._batch_size)
        run_ns = self._run_ns
        for candidate in (size, *range(size + 1, self._batch_size + 1), *range(size - 1, 0, -1)):
            if run_ns[candidate] is not None:
                return run_ns[candidate]
        return 0

    # ------------------------------------------------------------------ shutdown

    def drain(self) -> list[int]:
        """Remove and return every waiting request id, ordered by (deadline_ns, push order)."""
        request_ids = [request_id for _deadline_ns, request_id in sorted(self._by_deadline)]
        self._by_deadline.clear()
        self._by_arrival.clear()
        self._waiting.clear()
        return request_ids

    # ------------------------------------------------------------------ helpers

    def _pop_earliest(self) -> int:
        """Remove the waiting request with the smallest (deadline_ns, push order)."""
        _deadline_ns, request_id = heapq.heappop(self._by_deadline)
        self._waiting.discard(request_id)
        return request_id

    def _oldest_ns(self) -> int:
        """The earliest push time among the waiting requests (some must wait)."""
        by_arrival = self._by_arrival
        while by_arrival[0][1] not in self._waiting:
            heapq.heappop(by_arrival)
        return by_arrival[0][0]

    def _compact_arrivals(self) -> None:
        waiting = self._waiting
        self._by_arrival = [entry for entry in self._by_arrival if entry[1] in waiting]
        heapq.heapify(self._by_arrival)


def _int64(name: str, value: object) -> int:
    """value as an int, rejected as the compiled twin's int64 arguments reject it."""
    if value.__class__ is not int:
        value = operator.index(value)  # TypeError for floats and strings, as in C
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError(f"{name} {value} does not fit in int64")
    return value


def _check_time(name: str, value: int) -> None:
    if not 0 <= value <= MAX_TIME_NS:
        raise ValueError(f"{name} must be within 0..{MAX_TIME_NS}, got {value}")
