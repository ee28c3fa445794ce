"""The autoscaling policy (broker/autoscale.py), rule by rule, at explicit now_ns values: a
burst does nothing, a lasting backlog adds one worker at a time up to the maximum and the CPU
cap, idleness removes one at a time down to the minimum, each stretch ends the other, and
`next_decision_ns` says when the next step could come."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerobatch.broker.autoscale import Autoscaler

MS = 1_000_000
S = 1_000_000_000
UP = 1 * S
DOWN = 60 * S
B = 8  # batch size
BACKLOG = B + 1
IDLE = 0


class Model:
    """Drives one Autoscaler as broker/core.py does: keeps the worker count it asked for."""

    def __init__(self, minimum: int, maximum: int, workers: int | None = None,
                 cpu_limit: int | None = None) -> None:
        self.scaler = Autoscaler(UP, DOWN, cpu_limit)
        self.minimum = minimum
        self.maximum = maximum
        self.workers = minimum if workers is None else workers
        self.steps: list[tuple[int, int]] = []

    def at(self, now_ns: int, queued: int) -> int | None:
        n = self.scaler.decide(now_ns, queued=queued, batch_size=B, workers=self.workers,
                               minimum=self.minimum, maximum=self.maximum)
        if n is not None:
            self.workers = n
            self.steps.append((now_ns, n))
        return n

    def next_ns(self, now_ns: int = 0) -> int | None:
        return self.scaler.next_decision_ns(now_ns)


# ---------------------------------------------------------------------- no range, no action

@pytest.mark.parametrize("queued", [BACKLOG, 100, IDLE])
def test_maximum_equal_to_minimum_never_acts(queued):
    model = Model(minimum=2, maximum=2)
    for t in range(0, 200 * S, S // 2):
        assert model.at(t, queued) is None
        assert model.next_ns(t) is None
    assert model.workers == 2


def test_maximum_below_minimum_never_acts():
    model = Model(minimum=3, maximum=1)
    for t in range(0, 5 * S, S // 2):
        assert model.at(t, BACKLOG) is None
    assert model.next_ns() is None


@pytest.mark.parametrize("workers", [0, 5])
def test_a_count_outside_the_range_is_left_alone(workers):
    model = Model(minimum=1, maximum=4, workers=workers)
    for t in range(0, 200 * S, S):
        assert model.at(t, BACKLOG if workers == 0 else IDLE) is None
    assert model.next_ns() is None


# ---------------------------------------------------------------------- scaling up

def test_a_burst_shorter_than_the_threshold_does_nothing():
    model = Model(minimum=1, maximum=4)
    assert model.at(0, BACKLOG) is None
    assert model.at(UP - 1, 50) is None          # a backlog 1 ns short of the threshold
    assert model.at(UP - 1 + MS, B) is None     # a full batch is not a backlog: it ends
    assert model.at(UP + 10 * MS, BACKLOG) is None   # a new backlog starts here
    assert model.at(2 * UP, BACKLOG) is None
    assert model.at(UP + 10 * MS + UP, BACKLOG) == 2  # ... and lasts UP
    assert model.steps == [(2 * UP + 10 * MS, 2)]


def test_one_sample_of_a_backlog_never_steps_however_late():
    model = Model(minimum=1, maximum=4)
    assert model.at(100 * S, 1000) is None
    assert model.workers == 1


def test_a_batch_size_waiting_is_not_a_backlog_one_more_is():
    model = Model(minimum=1, maximum=4)
    for t in range(0, 10 * S, S // 4):
        assert model.at(t, B) is None
    assert model.next_ns() is None
    model.at(10 * S, B + 1)
    assert model.at(11 * S, B + 1) == 2


def test_a_lasting_backlog_adds_one_worker_at_a_time_up_to_the_maximum():
    model = Model(minimum=1, maximum=3)
    for t in range(0, 10 * S + 1, 100 * MS):
        model.at(t, 40)
    # one step per UP of backlog: the new worker gets UP to load before the next step
    assert model.steps == [(UP, 2), (2 * UP, 3)]
    assert model.workers == 3
    assert model.next_ns(10 * S) is None  # at the maximum: nothing pending


def test_no_step_up_before_another_threshold_after_a_step():
    model = Model(minimum=1, maximum=5)
    model.at(0, BACKLOG)
    assert model.at(UP, BACKLOG) == 2
    assert model.at(UP + UP // 2, BACKLOG) is None
    assert model.at(2 * UP - 1, BACKLOG) is None
    assert model.at(2 * UP, BACKLOG) == 3


@pytest.mark.parametrize("cpu_limit, top", [(2, 2), (1, 1), (8, 4), (None, 4)])
def test_the_cpu_cap_stops_scaling_up(cpu_limit, top):
    model = Model(minimum=1, maximum=4, cpu_limit=cpu_limit)
    for t in range(0, 20 * S, 100 * MS):
        model.at(t, 100)
    assert model.workers == top
    assert [n for _, n in model.steps] == list(range(2, top + 1))
    assert model.next_ns(20 * S) is None


def test_a_cpu_cap_below_the_minimum_keeps_the_minimum_and_still_scales_down():
    model = Model(minimum=3, maximum=8, cpu_limit=2)
    for t in range(0, 20 * S, 100 * MS):
        assert model.at(t, 100) is None
    assert model.workers == 3
    # a count above the cap (left by an earlier larger cap) still comes down when idle
    above = Model(minimum=1, maximum=8, workers=5, cpu_limit=2)
    above.at(0, IDLE)
    assert above.at(DOWN, IDLE) == 4
    assert above.at(DOWN, 100) is None and above.at(DOWN + 2 * UP, 100) is None


# ---------------------------------------------------------------------- scaling down

def test_idleness_removes_one_worker_at_a_time_down_to_the_minimum():
    model = Model(minimum=1, maximum=4, workers=3)
    assert model.at(0, IDLE) is None
    assert model.at(DOWN - 1, IDLE) is None
    assert model.at(DOWN, IDLE) == 2
    assert model.at(2 * DOWN - 1, IDLE) is None
    assert model.at(2 * DOWN, IDLE) == 1
    for t in range(2 * DOWN, 10 * DOWN, S):
        assert model.at(t, IDLE) is None
    assert model.workers == 1
    assert model.next_ns() is None


def test_scaling_down_waits_for_idleness_while_requests_wait():
    model = Model(minimum=1, maximum=4, workers=4)
    for t in range(0, 10 * DOWN, S):
        assert model.at(t, 1 + t // S % B) is None  # always something waiting, never a backlog
    assert model.next_ns() is None


# ---------------------------------------------------------------------- one stretch ends the other

def test_a_backlog_resets_the_idle_clock():
    model = Model(minimum=1, maximum=4, workers=2)
    model.at(0, IDLE)
    model.at(50 * S, BACKLOG)
    assert model.at(51 * S, IDLE) is None   # idle again from here
    assert model.at(DOWN, IDLE) is None
    assert model.at(51 * S + DOWN - 1, IDLE) is None
    assert model.at(51 * S + DOWN, IDLE) == 1


def test_a_few_requests_waiting_reset_the_idle_clock():
    model = Model(minimum=1, maximum=4, workers=2)
    model.at(0, IDLE)
    model.at(30 * S, 1)
    model.at(31 * S, IDLE)
    assert model.at(DOWN, IDLE) is None
    assert model.at(31 * S + DOWN, IDLE) == 1


def test_idleness_resets_the_backlog_clock():
    model = Model(minimum=1, maximum=4)
    model.at(0, BACKLOG)
    model.at(UP // 2, IDLE)
    model.at(UP // 2 + MS, BACKLOG)
    assert model.at(UP, BACKLOG) is None
    assert model.at(UP // 2 + MS + UP, BACKLOG) == 2


def test_an_explicit_scale_restarts_the_clocks():
    model = Model(minimum=1, maximum=4)
    model.at(0, BACKLOG)
    model.at(UP // 2, BACKLOG)
    model.minimum, model.workers = 2, 2     # a `scale` call: min 2, max 4, two workers
    assert model.at(UP, BACKLOG) is None    # the backlog is counted from here again
    assert model.next_ns(UP) == 2 * UP
    assert model.at(2 * UP, BACKLOG) == 3
    # a new maximum alone also restarts them
    model.maximum = 6
    assert model.at(3 * UP, BACKLOG) is None
    assert model.at(4 * UP, BACKLOG) == 4


def test_the_clocks_restart_after_the_range_closes_and_opens_again():
    model = Model(minimum=1, maximum=4)
    model.at(0, BACKLOG)
    model.maximum = 1
    assert model.at(UP // 2, BACKLOG) is None
    model.maximum = 4
    assert model.at(UP, BACKLOG) is None    # not UP since 0: the stretch restarted at UP
    assert model.at(2 * UP, BACKLOG) == 2


# ---------------------------------------------------------------------- next_decision_ns

def test_next_decision_ns_values():
    model = Model(minimum=1, maximum=3, workers=2)
    assert model.next_ns() is None                    # nothing seen yet
    model.at(5 * S, BACKLOG)
    assert model.next_ns(5 * S) == 5 * S + UP         # the backlog would cross its threshold
    model.at(5 * S + UP // 2, BACKLOG)
    assert model.next_ns(5 * S + UP // 2) == 5 * S + UP  # it does not move as time passes
    assert model.at(5 * S + UP, BACKLOG) == 3
    assert model.next_ns(5 * S + UP) is None          # at the maximum
    model.at(10 * S, 3)
    assert model.next_ns(10 * S) is None              # neither a backlog nor idle
    model.at(11 * S, IDLE)
    assert model.next_ns(11 * S) == 11 * S + DOWN
    assert model.at(11 * S + DOWN, IDLE) == 2
    assert model.next_ns() == 11 * S + 2 * DOWN
    assert model.at(11 * S + 2 * DOWN, IDLE) == 1
    assert model.next_ns() is None                    # at the minimum
    model.at(200 * S, BACKLOG)
    assert model.next_ns() == 200 * S + UP
    model.maximum = model.minimum
    model.at(200 * S + 1, BACKLOG)
    assert model.next_ns() is None                    # no range: nothing pending


def test_waking_at_next_decision_ns_steps_exactly_there():
    """A loop that sleeps until next_decision_ns (or a 1 s heartbeat) steps at each threshold."""
    model = Model(minimum=1, maximum=3)
    now_ns = 0
    model.at(now_ns, 100)
    for _ in range(10):
        wake = model.next_ns(now_ns)
        now_ns = min(wake, now_ns + S) if wake is not None else now_ns + S
        model.at(now_ns, 100)
    assert model.steps == [(UP, 2), (2 * UP, 3)]


def test_constructor_checks():
    with pytest.raises(ValueError):
        Autoscaler(0, DOWN)
    with pytest.raises(ValueError):
        Autoscaler(UP, -1)
    with pytest.raises(ValueError):
        Autoscaler(UP, DOWN, cpu_limit=0)
    assert Autoscaler(UP, DOWN).cpu_limit is None


# ---------------------------------------------------------------------- property

_calls = st.lists(
    st.tuples(st.integers(0, 3 * DOWN // 2),      # time step
              st.sampled_from([0, 1, B, B + 1, 5 * B]),  # queued
              st.booleans(),                      # the core applies the last result
              st.integers(-1, 7)),                # else: a count set by someone else
    min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(minimum=st.integers(0, 4), extra=st.integers(-1, 4),
       cpu_limit=st.none() | st.integers(1, 6), calls=_calls)
def test_decisions_stay_within_the_range_one_step_at_a_time(minimum, extra, cpu_limit, calls):
    maximum = minimum + extra
    cap = maximum if cpu_limit is None else max(minimum, min(maximum, cpu_limit))
    scaler = Autoscaler(UP, DOWN, cpu_limit)
    now_ns, workers = 0, minimum
    for step_ns, queued, applies, other in calls:
        now_ns += step_ns
        if not applies:
            workers = other
        n = scaler.decide(now_ns, queued=queued, batch_size=B, workers=workers,
                          minimum=minimum, maximum=maximum)
        if n is not None:
            assert minimum <= n <= maximum
            assert abs(n - workers) == 1
            if n > workers:
                assert queued > B and n <= cap
            else:
                assert queued == 0
            workers = n
        wake = scaler.next_decision_ns(now_ns)
        assert wake is None or wake > now_ns  # a loop that wakes then never spins
