"""The broker-side batching policy of one model version: the rules around the aggregator.

The aggregator twins (broker/aggregator.py) decide which waiting requests form a batch when a
worker is free. The rules that also need the workers and the answers live here, in one class
over integers and the aggregator's queue state: whether a free worker waits for returning
callers, whether full batches go ahead to a busy worker or together in one message, and
which requests are refused at arrival (counted, and logged as a rate-limited summary). The
clock is always passed in and nothing here sends anything: broker/core.py asks, then acts.

Spec. B = batch_size, D = max_batch_delay_ns, n = the requests waiting, R(m) = the learned run
time of a batch of m requests (`aggregator.expected_run_ns`, 0 before any batch ran),
earliest = the earliest deadline waiting.

Hold for returns (`holds`). Callers often send their next request as soon as they have an
answer (a client at concurrency N, a pipeline). A free worker taking the n < B already waiting
would leave such callers' batches split for good (3 + 5 instead of 8). So each answered
request counts as returning for D after its answer (each arrival counts one back), and a free
worker waits while: some are expected, the window is open, 0 < n < B, the policy is adaptive,
and earliest - R(n) > the window's end. D = 0 never holds; a lone caller is never held (its
own next request is the one that returns, and nothing waits meanwhile).

Send ahead (`may_send_ahead`). While no worker is free and n >= B, a full batch goes to a busy
worker that has none queued, so it starts the moment the running batch ends; only while
earliest - now > 2 R(B) (a request sent ahead can no longer expire in the queue).

Grouping (`may_grow_group`). After a full first batch, further full batches join its message
while n >= B, R(B) is known, the group stays within GROUP_RUN_BUDGET_NS of expected run and
MAX_GROUP_BATCHES batches, and earliest - now > 2 (k + 1) R(B) for a group of k batches.

Admission (`lateness_ns`, only with admission "deadline"). A request arriving now is refused
when the queue would answer it after its deadline: the n waiting requests run B at a time on
each of the W workers, after the batches running (one whole round when no worker is idle)
and the batches sent ahead (one more round), then its own batch; half of that wait again is
added as slack (ADMISSION_SLACK_DIVISOR). Never refused: before any run time is learned,
while no worker serves the model, and when nothing waits and a worker is idle (it runs at
once; a refusal would spare no one, and a run that never happens cannot correct the
estimate). The batch delay is not counted: rule 3 of the aggregator sends a partial batch
in time for its earliest deadline whatever the delay. Run times for admission are the
learned estimate, or the last run of that size where it was shorter: a worker's first
batches run cold (lazy initialisation, empty caches), often ten times longer than later
ones, and the estimate (each run weighs 1/8) would refuse on that past for dozens of batches.

Refusals (`Refusals`). Each refusal (deadline_unreachable, queue_full) is counted for
`describe`, and logged at INFO as one summary line per model at most every
REFUSAL_LOG_INTERVAL_NS: how many, and why, since the last line. Requests that expired in the
queue (answered deadline_exceeded, 504, without reaching a worker) are counted and summarized
the same way, in a line of their own written with the refusals' (same interval, same
wakeup): never one line per request, whatever the load.
"""

from __future__ import annotations

import logging
from typing import Any

from zerobatch.errors import DeadlineExceeded, DeadlineUnreachable, QueueFull

log = logging.getLogger("zerobatch.broker")

#: Full batches share one message to a worker while their expected run together stays within
#: this budget, which bounds how long the first batch's answers wait for the others. Only
#: models whose batches take well under a millisecond group at all (a cheap handler at batch
#: size 1, where the message costs more than the work).
GROUP_RUN_BUDGET_NS = 1_000_000
#: The most batches in one message, whatever the run time.
MAX_GROUP_BATCHES = 16
#: Admission pads the wait it expects by wait // ADMISSION_SLACK_DIVISOR: run times vary, and
#: together when the machine slows down, so the error of a sum of rounds grows with their
#: number; the caller also waits for the front end and the network. A half kept the accepted
#: requests answered in time under twice the capacity (benchmarks.cpu_under_overload) where a
#: quarter did not, accepting about the same share.
ADMISSION_SLACK_DIVISOR = 2
#: At most one refusal summary line per model in this time.
REFUSAL_LOG_INTERVAL_NS = 10_000_000_000

_REFUSAL_REASONS = {
    DeadlineUnreachable.code: "the queue ahead would answer them after their deadline",
    QueueFull.code: "max_queue requests waited",
}


class Refusals:
    """Requests of one model refused at arrival, counted by error code, and those that expired
    in its queue; logged as summary lines at most once per interval (the clock passed in)."""

    __slots__ = ("model_key", "interval_ns", "counts", "expired", "_unlogged",
                 "_first_unlogged_ns", "_next_line_ns", "_unlogged_expired",
                 "_first_expired_ns")

    def __init__(self, model_key: str, interval_ns: int = REFUSAL_LOG_INTERVAL_NS) -> None:
        self.model_key = model_key
        self.interval_ns = interval_ns
        #: error code -> refusals since the start
        self.counts = dict.fromkeys(_REFUSAL_REASONS, 0)
        self._unlogged = dict.fromkeys(_REFUSAL_REASONS, 0)
        self._first_unlogged_ns = 0
        self._next_line_ns = 0
        #: requests that expired in the queue since the start (deadline_exceeded)
        self.expired = 0
        self._unlogged_expired = 0
        self._first_expired_ns = 0

    def add(self, code: str, now_ns: int) -> None:
        """Count one refusal with this error code (DeadlineUnreachable or QueueFull)."""
        if not any(self._unlogged.values()):
            self._first_unlogged_ns = now_ns
        self.counts[code] += 1
        self._unlogged[code] += 1
        self.log_due(now_ns)

    def add_expired(self, count: int, now_ns: int) -> None:
        """Count `count` requests that expired in the queue (answered deadline_exceeded)."""
        if not self._unlogged_expired:
            self._first_expired_ns = now_ns
        self.expired += count
        self._unlogged_expired += count
        self.log_due(now_ns)

    def log_due(self, now_ns: int) -> None:
        """Log the refusals and expirations not yet logged, if any and if the last lines are
        an interval old."""
        if now_ns < self._next_line_ns:
            return
        expired = self._unlogged_expired
        if expired:
            log.info("model %s: %d request%s expired in the queue in %.1f s: %s (their "
                     "deadline passed before they reached a worker)", self.model_key,
                     expired, "" if expired == 1 else "s",
                     (now_ns - self._first_expired_ns) / 1e9, DeadlineExceeded.code)
            self._unlogged_expired = 0
            self._next_line_ns = now_ns + self.interval_ns
        if not any(self._unlogged.values()):
            return
        unlogged = self._unlogged
        reasons = "; ".join(f"{count} {code} ({_REFUSAL_REASONS[code]})"
                            for code, count in unlogged.items() if count)
        total = sum(unlogged.values())
        log.info("model %s refused %d request%s in %.1f s: %s", self.model_key, total,
                 "" if total == 1 else "s", (now_ns - self._first_unlogged_ns) / 1e9, reasons)
        self._unlogged = dict.fromkeys(_REFUSAL_REASONS, 0)
        self._next_line_ns = now_ns + self.interval_ns

    def next_line_ns(self) -> int:
        """When `log_due` has a line to write; -1 when nothing waits to be logged."""
        return (self._next_line_ns if self._unlogged_expired or any(self._unlogged.values())
                else -1)


class BatchingPolicy:
    """The broker-side rules of one model version over its aggregator; see the module
    docstring for the spec of each."""

    __slots__ = ("aggregator", "batch_size", "return_window_ns", "refuses_late", "returning",
                 "hold_until_ns", "refusals", "_last_run_ns")

    def __init__(self, aggregator: Any, model_key: str, *, refuses_late: bool,
                 refusal_log_interval_ns: int = REFUSAL_LOG_INTERVAL_NS) -> None:
        self.aggregator = aggregator
        self.batch_size = aggregator.batch_size
        self.return_window_ns = aggregator.max_batch_delay_ns
        self.refuses_late = refuses_late
        #: answered requests whose callers have not sent a new one yet (see `holds`)
        self.returning = 0
        self.hold_until_ns = 0
        self.refusals = Refusals(model_key, refusal_log_interval_ns)
        #: batch size -> the run time of the last batch of that size
        self._last_run_ns: dict[int, int] = {}

    # ------------------------------------------------------------------ hold for returns

    def holds(self, now_ns: int) -> bool:
        """Whether a free worker should wait for the callers of the batches just answered."""
        if not self.returning or now_ns >= self.hold_until_ns:
            return False
        aggregator = self.aggregator
        waiting = len(aggregator)
        if not waiting or waiting >= self.batch_size or not aggregator.adaptive:
            return False
        earliest_deadline_ns = aggregator.next_wakeup_ns(now_ns, False)
        return earliest_deadline_ns - aggregator.expected_run_ns(waiting) > self.hold_until_ns

    def worker_free(self, idle_workers: int, now_ns: int) -> bool:
        """Whether the aggregator may hand a batch to one of the idle workers now."""
        return idle_workers > 0 and not self.holds(now_ns)

    def arrived(self) -> None:
        """A request was queued: one returning caller fewer to wait for."""
        if self.returning:
            self.returning -= 1

    def answered(self, sizes: list[int], run_ns: int, now_ns: int) -> None:
        """A batch message of these batch sizes was answered after run_ns: learn the run time
        (each batch of a group ran one after another: each took a share) and expect its
        callers back."""
        share_ns = run_ns // len(sizes)
        self.aggregator.observe(sizes[0], share_ns)
        self._last_run_ns[sizes[0]] = share_ns
        if self.return_window_ns:
            if now_ns >= self.hold_until_ns:
                self.returning = 0
            self.returning += sum(sizes)
            self.hold_until_ns = now_ns + self.return_window_ns

    def next_wakeup_ns(self, now_ns: int, idle_workers: int) -> int:
        """When the queue next needs a poll (a dispatch, an expiry, a hold's end, a refusal
        summary due); -1 when nothing is due."""
        holds = self.holds(now_ns)
        at = self.aggregator.next_wakeup_ns(now_ns, idle_workers > 0 and not holds)
        if holds and self.hold_until_ns < at:
            at = self.hold_until_ns
        line_ns = self.refusals.next_line_ns()
        if line_ns >= 0 and (at < 0 or line_ns < at):
            at = max(line_ns, now_ns)
        return at

    # ------------------------------------------------------------------ send ahead, group

    def may_send_ahead(self, now_ns: int) -> bool:
        """Whether a full batch may go to a busy worker now (no worker being free)."""
        aggregator = self.aggregator
        if len(aggregator) < self.batch_size:
            return False
        earliest_deadline_ns = aggregator.next_wakeup_ns(now_ns, False)
        return earliest_deadline_ns - now_ns > 2 * aggregator.expected_run_ns(self.batch_size)

    def may_grow_group(self, now_ns: int, first_len: int, batches: int) -> bool:
        """Whether one more full batch may join a message that holds `batches` batches, the
        first of first_len requests."""
        aggregator = self.aggregator
        batch_size = self.batch_size
        if first_len < batch_size or len(aggregator) < batch_size:
            return False
        run_ns = aggregator.expected_run_ns(batch_size)
        if not run_ns or batches >= min(MAX_GROUP_BATCHES, GROUP_RUN_BUDGET_NS // run_ns):
            return False
        earliest_deadline_ns = aggregator.next_wakeup_ns(now_ns, False)
        return earliest_deadline_ns - now_ns > 2 * (batches + 1) * run_ns

    # ------------------------------------------------------------------ admission

    def lateness_ns(self, now_ns: int, deadline_ns: int, workers: int, idle_workers: int,
                    sent_ahead: bool) -> int:
        """How long after deadline_ns a request arriving now is expected to be answered; 0
        admits it. workers: those serving the model; idle_workers: those free now;
        sent_ahead: whether a batch waits in some worker behind its running one."""
        if not self.refuses_late or not workers:
            return 0
        waiting = len(self.aggregator)
        if idle_workers and not waiting:
            return 0
        batch_size = self.batch_size
        full_run_ns = self._run_ns(batch_size)
        if not full_run_ns:
            return 0
        rounds_ahead = waiting // (batch_size * workers) + (0 if idle_workers else 1)
        if sent_ahead:
            rounds_ahead += 1
        wait_ns = rounds_ahead * full_run_ns + self._run_ns(min(waiting + 1, batch_size))
        finish_ns = now_ns + wait_ns + wait_ns // ADMISSION_SLACK_DIVISOR
        return max(0, finish_ns - deadline_ns)

    def _run_ns(self, size: int) -> int:
        """The run time admission counts for a batch of `size`: the learned estimate, or the
        last run of that size where it was shorter."""
        estimate_ns = self.aggregator.expected_run_ns(size)
        last_ns = self._last_run_ns.get(size)
        return estimate_ns if last_ns is None or last_ns >= estimate_ns else last_ns
