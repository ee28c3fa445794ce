"""The latency histogram against exact percentiles of the same values."""

import json
import math
import random

import pytest

from benchmarks.histogram import HIGHEST_TRACKABLE_US, Histogram


def exact(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile, the definition Histogram.percentile follows."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def filled(values: list[int]) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    return histogram


@pytest.mark.parametrize("seed", range(4))
def test_percentiles_within_a_tenth_of_a_percent(seed):
    rng = random.Random(seed)
    # log-normal around 2 ms with a long tail, plus a few microsecond and second values
    values = [int(rng.lognormvariate(7.5, 1.5)) + 1 for _ in range(20_000)]
    values += [rng.randint(1, 50) for _ in range(50)] + [rng.randint(10**6, 10**8)
                                                          for _ in range(20)]
    histogram = filled(values)
    values.sort()
    for q in (0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100):
        want = exact(values, q)
        got = histogram.percentile(q)
        assert abs(got - want) <= want / 1000 + 1e-9, (q, got, want)
    assert histogram.count == len(values)
    assert histogram.min == values[0]
    assert histogram.max == values[-1]
    assert histogram.mean == pytest.approx(sum(values) / len(values))


def test_small_values_are_exact():
    values = list(range(0, 2048))
    histogram = filled(values)
    for q in (1, 33.3, 50, 99):
        assert histogram.percentile(q) == exact(values, q)


def test_out_of_range_values_are_clamped_not_fatal():
    histogram = filled([-5, 10 * HIGHEST_TRACKABLE_US])
    assert histogram.count == 2
    assert histogram.min == 0
    assert histogram.max == HIGHEST_TRACKABLE_US
    assert histogram.percentile(100) == HIGHEST_TRACKABLE_US


def test_empty_histogram_reports_nan():
    histogram = Histogram()
    assert math.isnan(histogram.percentile(50))
    summary = histogram.summary_ms()
    assert summary["count"] == 0
    assert math.isnan(summary["p99"])
    with pytest.raises(ValueError):
        histogram.percentile(101)


def test_merge_equals_recording_everything_in_one():
    rng = random.Random(7)
    a_values = [rng.randint(1, 10**6) for _ in range(5000)]
    b_values = [rng.randint(1, 10**4) for _ in range(3000)]
    merged = filled(a_values)
    merged.merge(filled(b_values))
    merged.merge(Histogram())
    whole = filled(a_values + b_values)
    assert merged.to_dict() == whole.to_dict()
    for q in (50, 90, 99, 99.9):
        assert merged.percentile(q) == whole.percentile(q)


def test_dict_round_trip_through_json():
    rng = random.Random(3)
    histogram = filled([rng.randint(1, 10**7) for _ in range(10_000)])
    data = json.loads(json.dumps(histogram.to_dict()))
    back = Histogram.from_dict(data)
    assert back.to_dict() == histogram.to_dict()
    assert back.summary_ms() == histogram.summary_ms()
    assert len(data["buckets"]) < 10_000  # sparse: only the non-empty counters
    assert Histogram.from_dict(Histogram().to_dict()).count == 0


def test_summary_is_in_milliseconds():
    histogram = filled([1000] * 99 + [250_000])
    summary = histogram.summary_ms()
    assert summary["p50"] == pytest.approx(1.0, rel=1e-3)
    assert summary["p999"] == pytest.approx(250.0, rel=1e-3)
    assert summary["max"] == 250.0
    assert summary["count"] == 100
    assert set(summary) == {"p50", "p90", "p99", "p999", "mean", "max", "count"}
