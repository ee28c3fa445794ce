"""The autoscaling policy of one model version: how many workers it should run now, between
its minimum (`ModelConfig.workers`, TorchServe's minWorkers) and its maximum (maxWorkers).

A decision function over integers, as the batching policy is: the clock and the queue state
are passed in, nothing here reads a clock or sends anything; broker/core.py asks on each tick,
keeps the count it asked the supervisor for, and asks the supervisor for the new one.

Spec. B = batch_size, n = the requests waiting (not those in flight), W = the worker count the
supervisor was last asked for, cap = min(maximum, cpu_limit) but never below minimum
(cpu_limit: the machine's CPUs, for a model whose workers run on the CPU; None = no cap).

- Acts only while maximum > minimum and minimum <= W <= maximum; otherwise it answers None,
  forgets its clocks, and so never fights an explicit `scale` (which sets the minimum).
- Backlog: n > B. Up by one when a backlog has been seen at every call for scale_up_after_ns
  and W < cap (a backlog that persists, not a burst). The backlog clock then restarts, so the
  next step up waits another scale_up_after_ns (time for the new worker to load).
- Idle: n == 0. Down by one when the model has been idle at every call for
  scale_down_after_ns and W > minimum; the idle clock then restarts, so each further step down
  waits another scale_down_after_ns of idleness.
- A backlog ends an idle stretch and idleness ends a backlog; 0 < n <= B ends both.
- A W that is not the count last seen or returned, or a new minimum or maximum, was set by
  someone else (an explicit `scale`): both clocks restart from that call.

`next_decision_ns` is the earliest time a stretch seen so far would cross its threshold while
a step is possible (None when none would): the broker's poll sleeps until then. After each
`decide` it is strictly later than that call's now_ns, so a loop that calls `decide` at the
time it gets never spins.
"""

from __future__ import annotations

_NONE = -1


class Autoscaler:
    """Worker-count decisions for one model version; see the module docstring."""

    __slots__ = ("scale_up_after_ns", "scale_down_after_ns", "cpu_limit", "_backlog_since_ns",
                 "_idle_since_ns", "_workers_seen", "_minimum_seen", "_maximum_seen", "_up_at_ns",
                 "_down_at_ns")

    def __init__(self, scale_up_after_ns: int, scale_down_after_ns: int,
                 cpu_limit: int | None = None) -> None:
        if scale_up_after_ns <= 0 or scale_down_after_ns <= 0:
            raise ValueError("scale_up_after_ns and scale_down_after_ns must be > 0, got "
                             f"{scale_up_after_ns} and {scale_down_after_ns}")
        if cpu_limit is not None and cpu_limit < 1:
            raise ValueError(f"cpu_limit must be None or >= 1, got {cpu_limit}")
        self.scale_up_after_ns = scale_up_after_ns
        self.scale_down_after_ns = scale_down_after_ns
        self.cpu_limit = cpu_limit
        self._backlog_since_ns = _NONE
        self._idle_since_ns = _NONE
        #: the worker count seen at the last call, or returned by it, and the bounds seen
        self._workers_seen = self._minimum_seen = self._maximum_seen = _NONE
        #: when the running backlog / idle stretch would step, where a step is possible
        self._up_at_ns = _NONE
        self._down_at_ns = _NONE

    def decide(self, now_ns: int, *, queued: int, batch_size: int, workers: int,
               minimum: int, maximum: int) -> int | None:
        """The worker count the model should have now, or None for no change."""
        if maximum <= minimum or workers < minimum or workers > maximum:
            self._forget()
            return None
        if (workers != self._workers_seen or minimum != self._minimum_seen
                or maximum != self._maximum_seen):  # the first call, or after a `scale`
            self._workers_seen = workers
            self._minimum_seen = minimum
            self._maximum_seen = maximum
            self._backlog_since_ns = self._idle_since_ns = _NONE
        cap = maximum
        if self.cpu_limit is not None and self.cpu_limit < cap:
            cap = self.cpu_limit if self.cpu_limit > minimum else minimum
        result = None
        if queued > batch_size:
            self._idle_since_ns = _NONE
            if self._backlog_since_ns == _NONE:
                self._backlog_since_ns = now_ns
            elif workers < cap and now_ns - self._backlog_since_ns >= self.scale_up_after_ns:
                result = workers + 1
                self._backlog_since_ns = now_ns
        elif queued == 0:
            self._backlog_since_ns = _NONE
            if self._idle_since_ns == _NONE:
                self._idle_since_ns = now_ns
            elif workers > minimum and now_ns - self._idle_since_ns >= self.scale_down_after_ns:
                result = workers - 1
                self._idle_since_ns = now_ns
        else:
            self._backlog_since_ns = self._idle_since_ns = _NONE
        if result is not None:
            self._workers_seen = workers = result
        self._up_at_ns = (self._backlog_since_ns + self.scale_up_after_ns
                          if self._backlog_since_ns != _NONE and workers < cap else _NONE)
        self._down_at_ns = (self._idle_since_ns + self.scale_down_after_ns
                            if self._idle_since_ns != _NONE and workers > minimum else _NONE)
        return result

    def next_decision_ns(self, now_ns: int) -> int | None:
        """When the next `decide` could step, as of the last one; None when nothing is pending.
        (now_ns is accepted for symmetry with the other timers; the answer does not move.)"""
        if self._up_at_ns != _NONE:
            return self._up_at_ns
        if self._down_at_ns != _NONE:
            return self._down_at_ns
        return None

    def _forget(self) -> None:
        self._backlog_since_ns = self._idle_since_ns = _NONE
        self._workers_seen = self._minimum_seen = self._maximum_seen = _NONE
        self._up_at_ns = self._down_at_ns = _NONE
