"""A bounded histogram of queue latencies: fixed memory however many jobs run."""

from __future__ import annotations

import math
from bisect import bisect_left

from jobqueue.final._model import LatencySummary

__all__ = ["LatencyHistogram"]

# Buckets are an eighth of a power of two wide (at most 12.5 %), from 2**-20 s (about 1 us) to
# 2**7 s; anything outside is clamped to the first or last bucket.
_SUB_BUCKETS = 8
_MIN_EXPONENT = -19
_MAX_EXPONENT = 8
_BUCKETS = (_MAX_EXPONENT - _MIN_EXPONENT) * _SUB_BUCKETS


def _upper_bound(index: int) -> float:
    exponent, sub = divmod(index, _SUB_BUCKETS)
    return math.ldexp(0.5 + (sub + 1) / (2 * _SUB_BUCKETS), exponent + _MIN_EXPONENT)


# A bucket holds the latencies up to its bound. Found by bisection, in C: half the cost of
# working the index out from math.frexp, on a path every job takes.
_UPPER_BOUNDS = [_upper_bound(index) for index in range(_BUCKETS)]
_LAST = _BUCKETS - 1


class LatencyHistogram:
    """Counts latencies into log-spaced buckets. Not thread-safe: the queue's mutex guards it."""

    __slots__ = ("_counts", "_total", "_max", "_sum")

    def __init__(self) -> None:
        self._counts = [0] * _BUCKETS
        self._total = 0
        self._max = 0.0
        self._sum = 0.0

    def record(self, seconds: float) -> None:
        index = bisect_left(_UPPER_BOUNDS, seconds)
        self._counts[index if index < _BUCKETS else _LAST] += 1
        self._total += 1
        self._sum += seconds
        if seconds > self._max:
            self._max = seconds

    def cumulative(self, bounds: list[float]) -> tuple[list[int], int, float]:
        """For each of ``bounds`` (ascending), the latencies counted in buckets whose upper
        bound is at most it (as Prometheus's ``le``; a bucket straddling a bound counts
        above it); with the count and the sum of every latency."""
        counts = []
        seen = 0
        index = 0
        for bound in bounds:
            while index < _BUCKETS and _UPPER_BOUNDS[index] <= bound:
                seen += self._counts[index]
                index += 1
            counts.append(seen)
        return counts, self._total, self._sum

    def summary(self) -> LatencySummary:
        """Percentiles as bucket upper bounds (never above the largest latency seen)."""
        if not self._total:
            return LatencySummary(0.0, 0.0, 0.0, 0.0)
        ranks = [math.ceil(self._total * q) for q in (0.50, 0.90, 0.99)]
        found: list[float] = []
        seen = 0
        for index, count in enumerate(self._counts):
            seen += count
            while len(found) < len(ranks) and seen >= ranks[len(found)]:
                found.append(min(_UPPER_BOUNDS[index], self._max))
            if len(found) == len(ranks):
                break
        return LatencySummary(found[0], found[1], found[2], self._max)
