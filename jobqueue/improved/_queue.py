"""The improved stage: bounded priorities, retries with backoff, a graceful close.

Read it next to ``jobqueue/naive/_queue.py``; what changed, and why:

- backpressure: one bounded ``queue.Queue`` per priority, so ``enqueue`` blocks (or raises
  ``QueueFull``) instead of growing memory without limit;
- priorities: workers take the most urgent non-empty queue first;
- retries: a failed job runs again after ``base_delay * 2**(attempt-1)`` seconds, scheduled
  by one timer thread so that waiting jobs do not hold workers;
- a graceful close: ``close`` refuses new jobs, then waits for every accepted job;
- exact counters, kept under one lock and read as a snapshot.

What it still gets wrong, fixed in ``jobqueue.final``: a steady flood of HIGH jobs starves LOW
ones forever; there is no way to ask about a job by id; nothing survives a restart.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from jobqueue._priority import Priority
from jobqueue.errors import QueueClosed, QueueFull

__all__ = ["Job", "JobQueue", "Metrics", "Priority", "QueueClosed", "QueueFull"]

logger = logging.getLogger("jobqueue")


@dataclass(frozen=True)
class Job:
    """A unit of work: ``handler()`` returns for success and raises for failure."""

    id: str
    handler: Callable[[], object]
    priority: Priority = Priority.MEDIUM

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TypeError(f"id must be a str, not {type(self.id).__name__}")
        if not self.id:
            raise ValueError("id must be a non-empty str")
        if not callable(self.handler):
            raise TypeError(f"handler must be callable, not {type(self.handler).__name__}")
        if not isinstance(self.priority, Priority):
            raise TypeError(f"priority must be a Priority, not {self.priority!r}")


@dataclass(frozen=True)
class Metrics:
    """A snapshot of the counters, taken under the queue's lock.

    ``failed`` counts jobs that ran out of retries; ``retried`` counts retry attempts.
    """

    queued: int
    processing: int
    completed: int
    failed: int
    retried: int


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


class _Attempt:
    """A job with the number of times it has run. Owned by one thread at a time."""

    __slots__ = ("job", "attempts")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.attempts = 0


class JobQueue:
    """Runs jobs on ``num_workers`` threads, most urgent priority first, retrying failures."""

    def __init__(
        self,
        num_workers: int,
        queue_size: int = 1000,
        max_retries: int = 3,
        base_delay: float = 1.0,
    ) -> None:
        _check_int("num_workers", num_workers, 1)
        _check_int("queue_size", queue_size, 1)
        _check_int("max_retries", max_retries, 0)
        if isinstance(base_delay, bool) or not isinstance(base_delay, (int, float)):
            raise TypeError(f"base_delay must be a number, not {type(base_delay).__name__}")
        if not base_delay >= 0:
            raise ValueError(f"base_delay must be >= 0, got {base_delay}")
        self._max_retries = max_retries
        self._base_delay = base_delay
        self._queues: list[queue.Queue[_Attempt | None]] = [
            queue.Queue(maxsize=queue_size) for _ in Priority
        ]
        # One release per job put in any queue, and one per worker to stop it: a worker
        # acquires it, then takes from the most urgent non-empty queue. Python has no
        # select() over queues; a counting semaphore is the honest wake-up.
        self._available = threading.Semaphore(0)

        # _lock guards the counters, _closed, _stopping and the retry heap. Conditions:
        #   _idle: close() waits for _unfinished to reach 0;
        #   _retry_due: the retry thread waits for the earliest retry, or for close.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._retry_due = threading.Condition(self._lock)
        self._queued = 0
        self._processing = 0
        self._completed = 0
        self._failed = 0
        self._retried = 0
        self._unfinished = 0  # accepted and not yet completed or failed
        self._retries: list[tuple[float, int, _Attempt]] = []
        self._order = itertools.count()  # ties in the heap keep their order
        self._closed = False
        self._stopping = False

        self._workers = [
            threading.Thread(target=self._work, name=f"jobqueue-improved-worker-{n}", daemon=True)
            for n in range(num_workers)
        ]
        self._scheduler = threading.Thread(
            target=self._schedule_retries, name="jobqueue-improved-retry", daemon=True
        )
        for thread in (*self._workers, self._scheduler):
            thread.start()

    def enqueue(self, job: Job, *, block: bool = True, timeout: float | None = None) -> None:
        """Add a job to its priority's queue.

        Blocks while that queue is full; raises ``QueueFull`` at once with ``block=False``
        or after ``timeout`` seconds, and ``QueueClosed`` once ``close()`` has started.
        """
        if not isinstance(job, Job):
            raise TypeError(f"job must be a jobqueue.improved.Job, not {type(job).__name__}")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be a non-negative number")
        with self._lock:
            if self._closed:
                raise QueueClosed("cannot enqueue after close() has started")
            # Counted before the put, so a worker never sees a job the counters do not.
            self._queued += 1
            self._unfinished += 1
        try:
            self._queues[job.priority].put(_Attempt(job), block=block, timeout=timeout)
        except queue.Full:
            with self._lock:
                self._queued -= 1
                self._finish_locked()
            raise QueueFull(f"the {job.priority.name} queue is full") from None
        self._available.release()

    def metrics(self) -> Metrics:
        """Return an atomic snapshot of the counters."""
        with self._lock:
            return Metrics(
                self._queued, self._processing, self._completed, self._failed, self._retried
            )

    def _take(self) -> _Attempt | None:
        """Wait for a job and take the most urgent one; None tells the worker to stop."""
        self._available.acquire()
        for jobs in self._queues:
            try:
                attempt = jobs.get_nowait()
            except queue.Empty:
                continue
            return attempt
        return None  # the release was a stop signal

    def _work(self) -> None:
        while True:
            attempt = self._take()
            if attempt is None:
                return
            with self._lock:
                self._queued -= 1
                if self._stopping:  # close() timed out: what is left is dropped
                    self._finish_locked()
                    continue
                self._processing += 1
            attempt.attempts += 1
            try:
                attempt.job.handler()
            except Exception as exc:
                self._failed_attempt(attempt, exc)
            else:
                with self._lock:
                    self._processing -= 1
                    self._completed += 1
                    self._finish_locked()

    def _failed_attempt(self, attempt: _Attempt, exc: Exception) -> None:
        job = attempt.job
        with self._lock:
            self._processing -= 1
            if attempt.attempts <= self._max_retries:
                delay = self._base_delay * 2 ** (attempt.attempts - 1)
                self._retried += 1
                due = time.monotonic() + delay
                heapq.heappush(self._retries, (due, next(self._order), attempt))
                self._retry_due.notify()
            else:
                self._failed += 1
                self._finish_locked()
                delay = None
        if delay is not None:
            logger.warning(
                "job %r failed (attempt %d), retrying in %.3f s: %s",
                job.id, attempt.attempts, delay, exc,
            )
        else:
            logger.error("job %r failed after %d attempts", job.id, attempt.attempts,
                         exc_info=exc)

    def _finish_locked(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle.notify_all()

    def _schedule_retries(self) -> None:
        with self._lock:
            while True:
                if self._stopping:
                    return
                now = time.monotonic()
                if self._retries and self._retries[0][0] <= now:
                    _, _, attempt = heapq.heappop(self._retries)
                    self._queued += 1
                    self._lock.release()
                    try:
                        self._requeue(attempt)
                    finally:
                        self._lock.acquire()
                    continue
                timeout = self._retries[0][0] - now if self._retries else None
                self._retry_due.wait(timeout)

    def _requeue(self, attempt: _Attempt) -> None:
        """Put a due retry back in its queue, waiting for room like any producer.

        It cannot wait forever: workers keep emptying the queues, and after a close() that
        gave up they drain them without running anything before they stop.
        """
        self._queues[attempt.job.priority].put(attempt)
        self._available.release()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, wait for every accepted one to finish, then stop the threads.

        Accepted jobs include those queued, running, or waiting for a retry. With a
        ``timeout``, returns after at most about that long and logs what was left undone;
        the threads then finish the job they are running and stop. Calling it twice is
        harmless.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._closed = True
            while self._unfinished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._idle.wait(remaining)
            left = self._unfinished
            first_close = not self._stopping
            self._stopping = True
            self._retry_due.notify()
        if first_close:
            for _ in self._workers:
                self._available.release()  # one stop signal per worker
        if left:
            logger.warning("close() timed out with %d jobs unfinished; they are dropped", left)
        for thread in (*self._workers, self._scheduler):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
