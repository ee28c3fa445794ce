"""An HDR-style latency histogram: every latency of a run kept in constant memory at 0.1%.

Why not a list of latencies: a run at 20,000 requests/s for a minute is 1.2 million floats
per histogram, and merging runs or writing them to JSON would carry every one. Why not fixed
buckets: latencies here span microseconds (a refusal) to seconds (a backlog), and a linear
bucket loses the short ones while a coarse log bucket loses the percentiles.

The layout is HdrHistogram's log-linear one: values in microseconds, a first bucket of 2,048
unit-wide sub-buckets, then one bucket per power of two, each split into 1,024 sub-buckets of
equal width. A sub-bucket's width is at most 1/1024 of the values in it, so any reported value
is within 0.1% of a recorded one (3 significant digits) from 1 µs to one hour, in about 23,000
counters. `record` is a few integer operations: no search, no allocation.
"""

from __future__ import annotations

import math
from typing import Any

_SUB_BUCKET_HALF_MAGNITUDE = 10                    # 1,024 sub-buckets per bucket: 3 digits
_SUB_BUCKET_HALF_COUNT = 1 << _SUB_BUCKET_HALF_MAGNITUDE
_SUB_BUCKET_MASK = (_SUB_BUCKET_HALF_COUNT << 1) - 1
_SHIFT = _SUB_BUCKET_HALF_MAGNITUDE + 1

HIGHEST_TRACKABLE_US = 3_600_000_000               # one hour
SIGNIFICANT_DIGITS = 3


def _index_of(value: int) -> int:
    """The counter index of a value (HdrHistogram's countsArrayIndex, unit magnitude 0)."""
    bucket = (value | _SUB_BUCKET_MASK).bit_length() - _SHIFT
    return ((bucket + 1) << _SUB_BUCKET_HALF_MAGNITUDE) + (value >> bucket) \
        - _SUB_BUCKET_HALF_COUNT


def _lowest_of(index: int) -> int:
    """The smallest value that falls into a counter."""
    bucket = (index >> _SUB_BUCKET_HALF_MAGNITUDE) - 1
    sub_bucket = (index & (_SUB_BUCKET_HALF_COUNT - 1)) + _SUB_BUCKET_HALF_COUNT
    if bucket < 0:
        sub_bucket -= _SUB_BUCKET_HALF_COUNT
        bucket = 0
    return sub_bucket << bucket


def _highest_of(index: int) -> int:
    """The largest value that falls into a counter."""
    return _lowest_of(index + 1) - 1


_LENGTH = _index_of(HIGHEST_TRACKABLE_US) + 1


class Histogram:
    """Latencies in integer microseconds, 1 µs .. 1 hour, 3 significant digits.

    Values below 0 count as 0 and values above an hour as an hour (a benchmark must not die
    on one absurd latency); min, max and mean are exact over the values as recorded.
    """

    __slots__ = ("_counts", "count", "_min", "_max", "_sum")

    def __init__(self) -> None:
        self._counts = [0] * _LENGTH
        self.count = 0
        self._min = HIGHEST_TRACKABLE_US
        self._max = 0
        self._sum = 0

    def record(self, value_us: int) -> None:
        """Count one value (µs). O(1)."""
        value = int(value_us)
        if value < 0:
            value = 0
        elif value > HIGHEST_TRACKABLE_US:
            value = HIGHEST_TRACKABLE_US
        bucket = (value | _SUB_BUCKET_MASK).bit_length() - _SHIFT
        self._counts[((bucket + 1) << _SUB_BUCKET_HALF_MAGNITUDE) + (value >> bucket)
                     - _SUB_BUCKET_HALF_COUNT] += 1
        self.count += 1
        self._sum += value
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value

    def merge(self, other: Histogram) -> None:
        """Add every value of another histogram to this one."""
        if not other.count:
            return
        counts = self._counts
        for index, n in enumerate(other._counts):
            if n:
                counts[index] += n
        self.count += other.count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    @property
    def min(self) -> int:
        return self._min if self.count else 0

    @property
    def max(self) -> int:
        return self._max

    @property
    def mean(self) -> float:
        return self._sum / self.count if self.count else math.nan

    def percentile(self, q: float) -> float:
        """The value at or below which q percent of the values lie (nearest rank), within
        0.1%; NaN when empty. q=0 is the minimum, q=100 the maximum."""
        if not 0 <= q <= 100:
            raise ValueError(f"a percentile is in [0, 100], not {q}")
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(q / 100 * self.count))
        if rank >= self.count:
            return float(self._max)
        seen = 0
        for index, n in enumerate(self._counts):
            if n:
                seen += n
                if seen >= rank:
                    # HdrHistogram reports the highest value of the sub-bucket, kept inside
                    # the range of what was actually recorded
                    return float(max(self._min, min(self._max, _highest_of(index))))
        return float(self._max)  # unreachable: counts sum to count

    def summary_ms(self) -> dict[str, Any]:
        """p50, p90, p99, p99.9, mean and max in milliseconds, and the count; NaN when empty."""
        empty = not self.count
        return {"p50": self.percentile(50) / 1000, "p90": self.percentile(90) / 1000,
                "p99": self.percentile(99) / 1000, "p999": self.percentile(99.9) / 1000,
                "mean": self.mean / 1000, "max": math.nan if empty else self._max / 1000,
                "count": self.count}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the non-empty counters as [lowest value in µs, count] pairs."""
        return {"unit": "us", "significant_digits": SIGNIFICANT_DIGITS,
                "highest_trackable_us": HIGHEST_TRACKABLE_US, "count": self.count,
                "min": self.min, "max": self._max, "sum": self._sum,
                "buckets": [[_lowest_of(index), n] for index, n in enumerate(self._counts) if n]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        """The histogram that to_dict() described."""
        if data.get("unit", "us") != "us":
            raise ValueError(f"histogram unit {data['unit']!r} is not 'us'")
        histogram = cls()
        counts = histogram._counts
        for value, n in data["buckets"]:
            counts[_index_of(min(int(value), HIGHEST_TRACKABLE_US))] += int(n)
        histogram.count = sum(n for _, n in data["buckets"])
        if histogram.count:
            histogram._min = int(data["min"])
            histogram._max = int(data["max"])
            histogram._sum = int(data["sum"])
        return histogram

    def __repr__(self) -> str:
        if not self.count:
            return "<Histogram empty>"
        return (f"<Histogram n={self.count} p50={self.percentile(50):.0f}us "
                f"p99={self.percentile(99):.0f}us max={self._max}us>")
