"""Retries: when a failed attempt runs again, and the schedule of jobs waiting for it.

Both take what varies as arguments, as :class:`sched.scheduler` takes its ``timefunc``: the
policy its random source, the schedule its clock, so tests check exact delays and due times
without waiting. Neither has a lock or a thread; the queue calls them under its mutex, and
its retry thread sleeps until :meth:`RetrySchedule.next_due`.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RetryPolicy", "RetrySchedule"]

_T = TypeVar("_T")

# Past this many doublings every delay is max_delay anyway; stops 2**n growing without end.
_MAX_DOUBLINGS = 64


class RetryPolicy:
    """Exponential backoff: retry *n* waits ``min(max_delay, base_delay * 2**(n-1))``, plus up
    to ``jitter`` of that. Jitter only lengthens a delay, so retries are never closer than the
    backoff."""

    def __init__(
        self,
        max_retries: int,
        base_delay: float,
        max_delay: float,
        jitter: float,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.max_retries = max_retries
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._jitter = jitter
        self._random_fraction = random_fraction

    def delay(self, failed_attempts: int) -> float:
        """Seconds before the retry that follows ``failed_attempts`` failed attempts (>= 1)."""
        doublings = failed_attempts - 1
        if doublings >= _MAX_DOUBLINGS:
            backoff = self._max_delay
        else:
            backoff = min(self._max_delay, self._base_delay * 2.0**doublings)
        return backoff + backoff * self._jitter * self._random_fraction()

    def next_delay(self, failed_attempts: int, job_max_retries: int | None) -> float | None:
        """The delay before the next attempt, or None when the job has used its retries."""
        allowed = self.max_retries if job_max_retries is None else job_max_retries
        return self.delay(failed_attempts) if failed_attempts <= allowed else None


class RetrySchedule(Generic[_T]):
    """Items waiting for a due time, earliest first; equal times keep their arrival order."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, _T]] = []
        self._order = itertools.count()  # ties never compare the items themselves

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: _T, due: float) -> bool:
        """Schedule ``item``; True if it is now the earliest, so whoever sleeps must wake."""
        heapq.heappush(self._heap, (due, next(self._order), item))
        return self._heap[0][2] is item

    def remove(self, item: _T) -> None:
        """Unschedule ``item`` (by identity); O(n), for the rare cancel."""
        self._heap = [queued for queued in self._heap if queued[2] is not item]
        heapq.heapify(self._heap)

    def pop_due(self, now: float | None = None) -> list[_T]:
        """Remove and return the items due at ``now`` (default: the clock), earliest first."""
        if now is None:
            now = self.clock()
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def next_due(self) -> float | None:
        """The earliest due time, or None when nothing waits."""
        return self._heap[0][0] if self._heap else None
