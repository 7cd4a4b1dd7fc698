"""The final stage's JobQueue: fair, observable, retrying, and durable behind a Store.

Compared with ``jobqueue.improved``:

- one mutex and a few conditions replace the per-priority ``queue.Queue`` objects, because the
  picker must see every priority at once to be fair, and a job's status must change in the
  same critical section that moves it;
- a weighted picker replaces strict priority order, so LOW is never starved;
- every job has a status, queryable by id, and finished ones are kept up to a retention;
- handlers can learn, cooperatively, that their job timed out or shutdown gave up on them;
- a :class:`~jobqueue.final._store.Store` keeps what must survive the process.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from types import TracebackType

from jobqueue._priority import Priority
from jobqueue.errors import (
    DuplicateJob,
    JobTimeout,
    QueueClosed,
    QueueFull,
    StoreError,
)
from jobqueue.final._latency import LatencyHistogram
from jobqueue.final._model import (
    Config,
    Handler,
    Job,
    JobInfo,
    Metrics,
    PriorityMetrics,
    Status,
)
from jobqueue.final._picker import WeightedPicker
from jobqueue.final._store import JobRecord, MemoryStore, Store

__all__ = ["JobContext", "JobQueue", "current_job"]

logger = logging.getLogger("jobqueue")

_PRIORITIES = tuple(Priority)
_ACTIVE = (Status.QUEUED, Status.PROCESSING, Status.RETRYING)

# After shutdown_timeout has passed and cancellation is signalled, handlers that honour it get
# this long to return before close() reports them as refusing to.
_CANCEL_GRACE = 1.0
_IDS_LOGGED = 20  # a log line names at most this many job ids

_local = threading.local()


class JobContext:
    """What a running handler can learn about its job: see :func:`current_job`."""

    __slots__ = ("job", "attempt", "deadline", "_shutdown")

    def __init__(
        self, job: Job, attempt: int, deadline: float | None, shutdown: threading.Event
    ) -> None:
        self.job = job
        #: 1 for the first run, 2 for the first retry, and so on.
        self.attempt = attempt
        #: ``time.monotonic()`` value after which the attempt counts as timed out, or None.
        self.deadline = deadline
        self._shutdown = shutdown

    def cancelled(self) -> bool:
        """True once the job has timed out or shutdown has stopped waiting for it."""
        if self._shutdown.is_set():
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on cancellation; return :meth:`cancelled`."""
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        self._shutdown.wait(seconds)
        return self.cancelled()


def current_job() -> JobContext:
    """Return the context of the job the calling handler is running.

    Python cannot stop a thread, so timeouts and shutdown are cooperative: a long handler
    checks ``current_job().cancelled()`` or sleeps with ``current_job().wait(seconds)``.
    Raises ``RuntimeError`` outside a handler.
    """
    context: JobContext | None = getattr(_local, "context", None)
    if context is None:
        raise RuntimeError("current_job() called outside a jobqueue handler")
    return context


class _Entry:
    """A live job: queued, processing, or waiting for a retry. Guarded by the queue's mutex."""

    __slots__ = (
        "job",
        "handler",
        "status",
        "attempts",
        "seq",
        "ready_since",
        "started",
        "last_error",
        "due",
    )

    def __init__(self, job: Job, handler: Handler | None, seq: int, now: float) -> None:
        self.job = job
        self.handler = handler  # a closure from enqueue_with_handler, else None: look it up
        self.status = Status.QUEUED
        self.attempts = 0
        self.seq = seq
        self.ready_since = now  # monotonic: when it last became runnable, for queue latency
        self.started: float | None = None  # monotonic
        self.last_error: str | None = None
        self.due: float | None = None  # monotonic: when a RETRYING job runs again


class JobQueue:
    """A pool of worker threads running jobs by weighted priority, with retries and status.

    ``Config.persist_path`` chooses the store: ``None`` keeps everything in memory, a path
    keeps jobs in LMDB so that they survive a crash (at least once). Use as a context manager,
    or call :meth:`close`.
    """

    def __init__(self, config: Config) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a jobqueue.final.Config, not {type(config).__name__}")
        self._config = config
        self._store: Store = self._open_store(config)
        self._durable = self._store.durable
        self._epoch_offset = time.time() - time.monotonic()
        self._picker = WeightedPicker(config.effective_weights)
        self._seq = itertools.count(self._store.last_seq() + 1)
        # Cooperative cancellation for every running handler once close() gives up waiting.
        self._shutdown = threading.Event()

        # _mutex guards every field below. Conditions sharing it:
        #   _work_ready: idle workers wait for a job, or for close() to finish the queue;
        #   _room[p]: producers wait for room in priority p;
        #   _changed: wait(), join() and close() wait for jobs to finish;
        #   _retry_due: the retry thread waits for the earliest due retry;
        #   _feeder_wake: the recovery thread waits for room in a priority with a backlog.
        self._mutex = threading.Lock()
        self._work_ready = threading.Condition(self._mutex)
        self._room = [threading.Condition(self._mutex) for _ in _PRIORITIES]
        self._changed = threading.Condition(self._mutex)
        self._retry_due = threading.Condition(self._mutex)
        self._feeder_wake = threading.Condition(self._mutex)
        self._handlers: dict[str, Handler] = dict(config.handlers or {})
        self._ready: list[deque[_Entry]] = [deque() for _ in _PRIORITIES]
        self._occupied = [0, 0, 0]  # QUEUED + RETRYING per priority: what queue_size bounds
        self._active: dict[str, _Entry] = {}
        self._retry_heap: list[tuple[float, int, _Entry]] = []
        self._backlog = [False, False, False]  # the store holds jobs not yet loaded
        self._parked_kinds: set[str] = set()  # kinds of stored jobs waiting for a handler
        self._idle_workers = 0
        self._room_waiters = [0, 0, 0]
        self._change_waiters = 0
        self._closing = False
        self._abandoning = False
        self._closed = False
        self._abandoned: list[str] = []
        self._queued = [0, 0, 0]
        self._processing = [0, 0, 0]
        self._retrying = [0, 0, 0]
        self._completed = [0, 0, 0]
        self._failed = [0, 0, 0]
        self._retried = [0, 0, 0]
        self._busy_seconds = 0.0
        self._latency = LatencyHistogram()
        self._started_at = time.monotonic()

        self._threads: list[threading.Thread] = []
        self._feeder: threading.Thread | None = None
        try:
            if self._durable:
                self._start_recovery()
            for number in range(config.num_workers):
                self._start_thread(self._work, f"jobqueue-final-worker-{number}")
            self._start_thread(self._schedule_retries, "jobqueue-final-retry")
        except BaseException:
            self.close(timeout=0)
            raise

    @staticmethod
    def _open_store(config: Config) -> Store:
        if config.persist_path is None:
            return MemoryStore(config.status_retention)
        from jobqueue.final._lmdb import LmdbStore  # only persistent queues pay for the import

        return LmdbStore(
            os.fspath(config.persist_path),
            fsync=config.fsync,
            retention=config.status_retention,
        )

    def _start_thread(self, target: object, name: str) -> threading.Thread:
        # Daemon threads: a handler that never returns must not stop the interpreter exiting.
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()
        return thread

    # -- submitting -------------------------------------------------------------------------

    def enqueue(self, job: Job, block: bool = True, timeout: float | None = None) -> None:
        """Accept a job, run by ``handlers[job.kind]`` or else ``handler`` from the config.

        Blocks while the job's priority is full (``queue_size`` jobs queued or waiting for a
        retry); raises ``QueueFull`` at once with ``block=False`` or after ``timeout`` seconds.
        With a persistent store, returns only once the job is committed to it.
        Raises ``QueueClosed`` once :meth:`close` has started, ``DuplicateJob`` if a job with
        this id is queued, processing or retrying, ``ValueError`` if no handler can run it,
        and ``StoreError`` if the store cannot take it (the job is then not accepted).
        """
        self._enqueue((job,), None, block, timeout)

    def enqueue_with_handler(
        self, job: Job, handler: Handler, block: bool = True, timeout: float | None = None
    ) -> None:
        """Like :meth:`enqueue`, with ``handler`` for this job alone.

        A closure cannot be persisted: if the process dies before the job finishes, the job is
        recovered at the next start and runs with ``handlers[job.kind]`` or ``handler``.
        """
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self._enqueue((job,), handler, block, timeout)

    def enqueue_many(
        self, jobs: Iterable[Job], block: bool = True, timeout: float | None = None
    ) -> None:
        """Accept several jobs at once, all or none: one store commit for the whole batch.

        Blocks until the batch fits; raises ``ValueError`` if it holds more jobs of one
        priority than ``queue_size``, since it could never fit. Otherwise as :meth:`enqueue`.
        """
        batch = tuple(jobs)
        if batch:
            self._enqueue(batch, None, block, timeout)

    def _enqueue(
        self,
        jobs: Sequence[Job],
        handler: Handler | None,
        block: bool,
        timeout: float | None,
    ) -> None:
        needed = [0, 0, 0]
        ids = set()
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"job must be a jobqueue.final.Job, not {type(job).__name__}")
            if (
                handler is None
                and job.kind not in self._handlers
                and self._config.handler is None
            ):
                raise ValueError(
                    f"no handler for job {job.id!r}: kind {job.kind!r} is not in "
                    "handlers and the config has no default handler"
                )
            if job.id in ids:
                raise DuplicateJob(f"job id {job.id!r} appears twice in one enqueue_many call")
            ids.add(job.id)
            needed[job.priority] += 1
        for priority in _PRIORITIES:
            if needed[priority] > self._config.queue_size:
                raise ValueError(
                    f"enqueue_many got {needed[priority]} {priority.name} jobs, more than "
                    f"queue_size={self._config.queue_size}: the batch could never fit"
                )
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be a non-negative number")
        if self._durable and (any(self._backlog) or self._parked_kinds):
            self._check_not_stored(ids)

        # Built before taking the mutex, which every producer and worker shares: the less
        # work done holding it, the less they queue up behind each other.
        now = time.monotonic()
        entries = [_Entry(job, handler, next(self._seq), now) for job in jobs]
        with self._mutex:
            self._wait_for_room(jobs, needed, block, timeout)
            active = self._active
            for entry in entries:
                active[entry.job.id] = entry
            for priority in _PRIORITIES:
                if needed[priority]:
                    self._occupied[priority] += needed[priority]
                    self._queued[priority] += needed[priority]
            if not self._durable:
                self._make_ready_locked(entries)
                return

        # Durable: the entries hold their slots and ids while the store commits, outside the
        # mutex so workers keep running; only then can a worker see them.
        try:
            self._store.add([self._record(entry, Status.QUEUED) for entry in entries])
        except BaseException as exc:
            with self._mutex:
                for entry in entries:
                    del self._active[entry.job.id]
                    priority = entry.job.priority
                    self._occupied[priority] -= 1
                    self._queued[priority] -= 1
                    if self._room_waiters[priority]:
                        self._room[priority].notify()
                self._notify_changed_locked()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"could not store the job: {exc}") from exc
        with self._mutex:
            self._make_ready_locked(entries)

    def _check_not_stored(self, ids: Iterable[str]) -> None:
        """Reject ids that are live in the store but not yet loaded (backlog or parked)."""
        for job_id in ids:
            record = self._store.get(job_id)
            if record is not None and record.status in _ACTIVE:
                raise DuplicateJob(f"job {job_id!r} is already {record.status.value}")

    def _wait_for_room(
        self, jobs: Sequence[Job], needed: list[int], block: bool, timeout: float | None
    ) -> None:
        """Wait until the batch fits; raise if it never will. Called with the mutex held."""
        endtime = None if timeout is None else time.monotonic() + timeout
        limit = self._config.queue_size
        while True:
            if self._closing:
                raise QueueClosed("cannot enqueue after close() has started")
            for job in jobs:
                entry = self._active.get(job.id)
                if entry is not None:
                    raise DuplicateJob(f"job {job.id!r} is already {entry.status.value}")
            full = None
            for priority in _PRIORITIES:
                if needed[priority] and (
                    self._occupied[priority] + needed[priority] > limit or self._backlog[priority]
                ):
                    full = priority
                    break
            if full is None:
                return
            if not block:
                raise QueueFull(f"the {full.name} queue is full ({limit} jobs)")
            if endtime is None:
                remaining = None
            else:
                remaining = endtime - time.monotonic()
                if remaining <= 0:
                    raise QueueFull(
                        f"the {full.name} queue stayed full ({limit} jobs) for {timeout} s"
                    )
            self._room_waiters[full] += 1
            try:
                self._room[full].wait(remaining)
            finally:
                self._room_waiters[full] -= 1

    def _make_ready_locked(self, entries: Sequence[_Entry]) -> None:
        for entry in entries:
            self._ready[entry.job.priority].append(entry)
        if self._idle_workers:
            self._work_ready.notify(len(entries))

    # -- running ----------------------------------------------------------------------------

    def _work(self) -> None:
        mutex = self._mutex
        entry: _Entry | None = None
        error: BaseException | None = None
        delay: float | None = None
        elapsed = 0.0
        while True:
            with mutex:
                if entry is not None:
                    self._settle_locked(entry, error, delay, elapsed)
                entry = self._take_locked()
            if entry is None:
                return
            error, elapsed = self._run(entry)
            # Logged before the outcome is visible, outside the mutex: a waiter woken by
            # the failure finds it logged, and a slow log handler holds up no other thread.
            delay = None if error is None else self._log_failure(entry, error)

    def _take_locked(self) -> _Entry | None:
        """Pick the next job, or return None when this worker should exit. Mutex held."""
        ready = self._ready
        while True:
            if self._abandoning:
                return None
            priority = self._picker.pick(ready)  # a deque is truthy when it has work
            if priority is not None:
                break
            if self._closing and self._drained_locked():
                return None
            self._idle_workers += 1
            try:
                self._work_ready.wait()
            finally:
                self._idle_workers -= 1
        entry = ready[priority].popleft()
        self._occupied[priority] -= 1
        if self._room_waiters[priority]:
            self._room[priority].notify()
        if self._backlog[priority]:
            self._feeder_wake.notify()
        self._queued[priority] -= 1
        self._processing[priority] += 1
        now = time.monotonic()
        self._latency.record(now - entry.ready_since)
        entry.status = Status.PROCESSING
        entry.attempts += 1
        entry.started = now
        if self._durable:
            self._store.update(self._record(entry, Status.PROCESSING))
        return entry

    def _run(self, entry: _Entry) -> tuple[BaseException | None, float]:
        """Run one attempt outside the mutex; return its exception (or None) and duration."""
        job = entry.job
        handler = entry.handler or self._handlers.get(job.kind) or self._config.handler
        job_timeout = self._config.job_timeout
        started = entry.started
        assert started is not None
        deadline = None if job_timeout is None else started + job_timeout
        _local.context = JobContext(job, entry.attempts, deadline, self._shutdown)
        error: BaseException | None = None
        try:
            if handler is None:  # its handler was replaced away; keep the job, fail the try
                raise LookupError(f"no handler for kind {job.kind!r}")
            handler(job.payload)
        except BaseException as exc:  # even SystemExit: the worker must live to settle it
            error = exc
        finally:
            _local.context = None
        elapsed = time.monotonic() - started
        if error is None and deadline is not None and elapsed > job_timeout:  # type: ignore[operator]
            error = JobTimeout(f"timed out after {elapsed:.3f} s (job_timeout={job_timeout} s)")
        return error, elapsed

    def _log_failure(self, entry: _Entry, error: BaseException) -> float | None:
        """Log a failed attempt; return the delay before its retry, or None if it is over."""
        job = entry.job
        allowed = self._config.max_retries if job.max_retries is None else job.max_retries
        if self._abandoning:
            logger.warning("job %r failed as close() gave up on it: %s", job.id, error)
            return None
        if entry.attempts <= allowed:
            delay = self._backoff(entry.attempts)
            logger.warning(
                "job %r failed (attempt %d of %d), retrying in %.3f s: %s",
                job.id, entry.attempts, allowed + 1, delay, error,
            )
            return delay
        logger.error("job %r failed after %d attempts", job.id, entry.attempts, exc_info=error)
        return None

    def _settle_locked(
        self, entry: _Entry, error: BaseException | None, delay: float | None, elapsed: float
    ) -> None:
        """Record an attempt's outcome; ``delay`` is when to retry a failure. Mutex held."""
        job = entry.job
        priority = job.priority
        self._processing[priority] -= 1
        self._busy_seconds += elapsed
        now = time.monotonic()
        if error is None:
            entry.status = Status.COMPLETED
            self._completed[priority] += 1
            del self._active[job.id]
            self._store.finish(self._record(entry, Status.COMPLETED, finished=now, payload=b""))
        elif self._abandoning:
            # Shutdown gave up on this job: it is not finished, so it is not failed either.
            entry.last_error = f"{type(error).__name__}: {error}"
            self._requeue_abandoned_locked(entry)
        elif delay is not None:
            entry.last_error = f"{type(error).__name__}: {error}"
            entry.status = Status.RETRYING
            entry.due = now + delay
            self._retrying[priority] += 1
            self._retried[priority] += 1
            self._occupied[priority] += 1
            heapq.heappush(self._retry_heap, (entry.due, entry.seq, entry))
            if self._retry_heap[0][2] is entry:
                self._retry_due.notify()
            if self._durable:
                self._store.update(self._record(entry, Status.RETRYING))
        else:
            entry.last_error = f"{type(error).__name__}: {error}"
            entry.status = Status.FAILED
            self._failed[priority] += 1
            del self._active[job.id]
            self._store.finish(self._record(entry, Status.FAILED, finished=now))
        self._notify_changed_locked()

    def _backoff(self, attempt: int) -> float:
        config = self._config
        delay = min(config.max_delay, config.base_delay * 2 ** (attempt - 1))
        # Jitter only lengthens the delay, so retries are never closer than the backoff.
        return delay + delay * config.jitter * random.random()

    def _requeue_abandoned_locked(self, entry: _Entry) -> None:
        entry.status = Status.QUEUED
        self._queued[entry.job.priority] += 1
        if self._durable:
            self._store.update(self._record(entry, Status.QUEUED))

    def _notify_changed_locked(self) -> None:
        if self._change_waiters:
            self._changed.notify_all()
        if self._closing and self._drained_locked():
            self._work_ready.notify_all()
            self._retry_due.notify()

    def _drained_locked(self) -> bool:
        """True when close() has nothing left to wait for."""
        if self._durable:
            # Retries and the stored backlog stay in the store for the next start.
            return not any(self._queued) and not any(self._processing)
        return not self._active

    def _record(
        self,
        entry: _Entry,
        status: Status,
        finished: float | None = None,
        payload: bytes | None = None,
    ) -> JobRecord:
        job = entry.job
        offset = self._epoch_offset
        return JobRecord(
            job.id,
            job.payload if payload is None else payload,
            job.priority,
            job.kind,
            job.max_retries,
            job.created,
            status,
            entry.attempts,
            entry.last_error,
            None if entry.started is None else entry.started + offset,
            None if finished is None else finished + offset,
            None if entry.due is None else entry.due + offset,
            entry.seq,
        )

    # -- retries ----------------------------------------------------------------------------

    def _schedule_retries(self) -> None:
        heap = self._retry_heap
        with self._mutex:
            while True:
                if self._abandoning or (self._closing and (self._durable or not self._active)):
                    return
                now = time.monotonic()
                due = []
                while heap and heap[0][0] <= now:
                    due.append(heapq.heappop(heap)[2])
                for entry in due:
                    priority = entry.job.priority
                    self._retrying[priority] -= 1
                    self._queued[priority] += 1
                    entry.status = Status.QUEUED
                    entry.due = None
                    entry.ready_since = now
                if due:
                    self._make_ready_locked(due)
                self._retry_due.wait(heap[0][0] - now if heap else None)

    # -- recovery ---------------------------------------------------------------------------

    def _start_recovery(self) -> None:
        self._backlog = [True, True, True]
        self._feeder = self._start_thread(self._feed, "jobqueue-final-recovery")

    def _feed(self, rescan: bool = False) -> None:
        """Load stored jobs into memory as room frees, so a large backlog stays on disk."""
        try:
            for priority in _PRIORITIES:
                for record in self._store.recover(priority, 0):
                    if not self._load(record, rescan):
                        return
                with self._mutex:
                    self._backlog[priority] = False
                    self._room[priority].notify_all()
                    self._notify_changed_locked()
        except Exception:
            logger.exception("recovering stored jobs failed; they stay stored")
            with self._mutex:
                self._backlog = [False, False, False]
                for room in self._room:
                    room.notify_all()
                self._notify_changed_locked()

    def _load(self, record: JobRecord, rescan: bool) -> bool:
        """Put one stored job in memory; return False when loading should stop."""
        priority = record.priority
        with self._mutex:
            while self._occupied[priority] >= self._config.queue_size and not self._closing:
                self._feeder_wake.wait()
            if self._closing:
                return False
            if record.id in self._active:
                return True
            if rescan:
                fresh = self._store.get(record.id)
                if fresh is None or fresh.status not in _ACTIVE:
                    return True
            kind = record.kind
            if kind not in self._handlers and self._config.handler is None:
                if kind not in self._parked_kinds:
                    self._parked_kinds.add(kind)
                    logger.warning(
                        "stored jobs of kind %r have no handler; they stay queued in the "
                        "store until one is registered",
                        kind,
                    )
                return True
            job = Job(
                record.id,
                record.payload,
                priority,
                record.kind,
                record.max_retries,
                record.created_at,
            )
            now = time.monotonic()
            entry = _Entry(job, None, record.seq, now)
            entry.attempts = record.attempts
            entry.last_error = record.last_error
            self._active[job.id] = entry
            self._occupied[priority] += 1
            if record.status is Status.RETRYING and record.due_at is not None:
                entry.status = Status.RETRYING
                entry.due = record.due_at - self._epoch_offset
                self._retrying[priority] += 1
                heapq.heappush(self._retry_heap, (entry.due, entry.seq, entry))
                self._retry_due.notify()
            else:
                self._queued[priority] += 1
                self._make_ready_locked((entry,))
            return True

    # -- asking -----------------------------------------------------------------------------

    def status(self, job_id: str) -> Status | None:
        """Return the job's status, or ``None`` if the queue does not know the id."""
        with self._mutex:
            entry = self._active.get(job_id)
            if entry is not None:
                return entry.status
        record = self._store.get(job_id)
        return None if record is None else record.status

    def info(self, job_id: str) -> JobInfo | None:
        """Return what the queue knows about a job, or ``None`` if it does not know the id."""
        with self._mutex:
            entry = self._active.get(job_id)
            if entry is not None:
                return self._record(entry, entry.status).info()
        record = self._store.get(job_id)
        return None if record is None else record.info()

    def wait(self, job_id: str, timeout: float | None = None) -> Status:
        """Block until the job is COMPLETED or FAILED and return that status.

        Raises ``KeyError`` for an unknown id and ``TimeoutError`` after ``timeout`` seconds.
        """
        endtime = None if timeout is None else time.monotonic() + timeout
        with self._mutex:
            while True:
                entry = self._active.get(job_id)
                if entry is None:
                    record = self._store.get(job_id)
                    if record is None:
                        raise KeyError(job_id)
                    if record.status not in _ACTIVE:
                        return record.status
                remaining = None if endtime is None else endtime - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"job {job_id!r} did not finish within {timeout} s")
                self._wait_changed_locked(remaining)

    def join(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued, processing or waiting for a retry.

        Returns False if ``timeout`` seconds passed first. Stored jobs waiting for a handler
        that was never registered do not count: they cannot run.
        """
        endtime = None if timeout is None else time.monotonic() + timeout
        with self._mutex:
            while self._active or any(self._backlog):
                remaining = None if endtime is None else endtime - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if self._abandoning:
                    return False
                self._wait_changed_locked(remaining)
            return True

    def _wait_changed_locked(self, timeout: float | None) -> None:
        self._change_waiters += 1
        try:
            self._changed.wait(timeout)
        finally:
            self._change_waiters -= 1

    def register(self, kind: str, handler: Handler) -> None:
        """Add or replace the handler for jobs of ``kind``, while the queue runs.

        Stored jobs of that kind that were waiting for a handler start loading.
        """
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a str, not {type(kind).__name__}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        with self._mutex:
            self._handlers[kind] = handler
            if kind not in self._parked_kinds or self._closing:
                return
            self._parked_kinds.discard(kind)
            self._start_thread(lambda: self._feed(rescan=True), "jobqueue-final-recovery")

    def dead_letters(self) -> list[JobInfo]:
        """Return the FAILED jobs still kept (see ``status_retention``), oldest first."""
        records = self._store.dead_letters()
        with self._mutex:  # an id enqueued again since is live, not dead
            return [record.info() for record in records if record.id not in self._active]

    def requeue(self, job_id: str) -> None:
        """Run a FAILED job again from attempt 0.

        Raises ``KeyError`` for an unknown id, ``ValueError`` if the job is not FAILED,
        and otherwise as :meth:`enqueue` (it blocks while the priority is full).
        """
        with self._mutex:
            entry = self._active.get(job_id)
        if entry is not None:
            raise ValueError(f"job {job_id!r} is {entry.status.value}, not failed")
        record = self._store.get(job_id)
        if record is None:
            raise KeyError(job_id)
        if record.status is not Status.FAILED:
            raise ValueError(f"job {job_id!r} is {record.status.value}, not failed")
        job = Job(
            record.id,
            record.payload,
            record.priority,
            record.kind,
            record.max_retries,
            record.created_at,
        )
        self._enqueue((job,), None, True, None)

    def metrics(self) -> Metrics:
        """Return an atomic snapshot of the counters."""
        with self._mutex:
            per_priority = {
                p: PriorityMetrics(
                    self._queued[p],
                    self._processing[p],
                    self._retrying[p],
                    self._completed[p],
                    self._failed[p],
                    self._retried[p],
                )
                for p in _PRIORITIES
            }
            busy = sum(self._processing)
            workers = self._config.num_workers
            elapsed = time.monotonic() - self._started_at
            utilization = min(1.0, self._busy_seconds / (workers * elapsed)) if elapsed else 0.0
            return Metrics(
                queued=sum(self._queued),
                processing=busy,
                retrying=sum(self._retrying),
                completed=sum(self._completed),
                failed=sum(self._failed),
                retried=sum(self._retried),
                abandoned=len(self._abandoned),
                per_priority=per_priority,
                num_workers=workers,
                busy_workers=busy,
                utilization=utilization,
                queue_latency=self._latency.summary(),
            )

    # -- closing ----------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> list[str]:
        """Stop accepting jobs, finish the accepted ones, stop the threads.

        Blocks until queued jobs, running handlers and (in memory) jobs waiting for a retry
        have finished, or ``timeout`` seconds (default ``Config.shutdown_timeout``) have
        passed. Then it signals cancellation to running handlers (see :func:`current_job`),
        waits briefly for them, logs at WARNING what it could not finish and returns those
        ids. In memory they are lost and counted in ``metrics().abandoned``; a persistent
        store keeps them, and jobs waiting for a retry, for the next start.
        Calling it again returns the same list.
        """
        if timeout is None:
            timeout = self._config.shutdown_timeout
        with self._mutex:
            if self._closed:
                return list(self._abandoned)
            self._closing = True
            for room in self._room:
                room.notify_all()
            self._feeder_wake.notify_all()
            self._notify_changed_locked()
            endtime = time.monotonic() + timeout
            while not self._drained_locked():
                remaining = endtime - time.monotonic()
                if remaining <= 0:
                    break
                self._wait_changed_locked(remaining)
            gave_up = not self._drained_locked()
            if gave_up:
                self._abandoning = True
                self._shutdown.set()
                self._work_ready.notify_all()
                self._retry_due.notify()
                self._changed.notify_all()
        grace = _CANCEL_GRACE if gave_up else max(1.0, endtime - time.monotonic())
        join_until = time.monotonic() + grace
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, join_until - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        with self._mutex:
            self._closed = True
            if gave_up:
                self._abandoned = sorted(self._active)
        if gave_up:
            where = "stay stored for the next start" if self._durable else "are lost"
            shown = ", ".join(self._abandoned[:_IDS_LOGGED])
            more = len(self._abandoned) - _IDS_LOGGED
            logger.warning(
                "close() gave up after %s s; %d unfinished jobs %s: %s%s",
                timeout, len(self._abandoned), where, shown,
                f" and {more} more" if more > 0 else "",
            )
        if stuck:
            logger.warning("handlers did not return; threads still running: %s", stuck)
        self._store.close()
        return list(self._abandoned)

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
