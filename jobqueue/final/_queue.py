"""The final stage's JobQueue: fair, observable, retrying, and durable behind a Store.

Compared with ``jobqueue/improved/_queue.py``:

- one mutex and a few conditions replace the per-priority ``queue.Queue`` objects, because the
  picker must see every priority at once to be fair, and a job's status must change in the
  same critical section that moves it;
- a job table (:mod:`._table`) moves every job through one state machine (:mod:`._states`),
  so statuses, counts, metrics and what the store is told cannot drift apart;
- a weighted picker replaces strict priority order, so LOW is never starved;
- every job has a status, queryable by id, and finished ones are kept up to a retention;
- handlers can learn, cooperatively, that their job timed out or shutdown gave up on them;
- a :class:`~._store.Store` keeps what must outlive the process, and hands stored jobs back.

Threads: ``jobqueue-final-worker-N`` run jobs; ``jobqueue-final-retry`` returns retries to the
ready queues when due; ``jobqueue-final-claimer`` claims jobs from the store (a backlog left
by an earlier run) as room frees. None is started per job.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from types import TracebackType

from jobqueue._priority import Priority
from jobqueue.errors import (
    DuplicateJob,
    JobQueueError,
    JobTimeout,
    QueueClosed,
    QueueFull,
    StoreError,
)
from jobqueue.final._context import JobContext, worker_local
from jobqueue.final._model import Config, Handler, Job, JobInfo, Metrics
from jobqueue.final._retry import RetryPolicy
from jobqueue.final._states import (
    COMPLETED,
    FAILED,
    GONE,
    LIVE,
    NEW,
    PROCESSING,
    QUEUED,
    RETRYING,
    State,
    Status,
)
from jobqueue.final._store import Store, open_store
from jobqueue.final._table import Entry, JobTable

__all__ = ["JobQueue"]

logger = logging.getLogger("jobqueue")

_PRIORITIES = tuple(Priority)
# After shutdown_timeout has passed and cancellation is signalled, handlers that honour it get
# this long to return before close() reports them as refusing to.
_CANCEL_GRACE = 1.0
_IDS_LOGGED = 20  # a log line names at most this many job ids

#: An attempt's outcome, worked out outside the mutex: None for success, else the error as
#: text and the delay before a retry (None: no retry).
_Outcome = tuple[str, float | None] | None


def _describe_state(state: State) -> str:
    return "being enqueued" if state is NEW else str(state.value)


def _describe_error(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:  # its __str__ raised: the type must do
        return type(error).__name__


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
        self._store: Store = open_store(config)
        self._clock = time.monotonic
        self._policy = RetryPolicy(
            config.max_retries, config.base_delay, config.max_delay, config.jitter
        )
        self._seq = itertools.count(self._store.last_seq() + 1)
        # Cooperative cancellation for every running handler once close() gives up waiting.
        self._shutdown = threading.Event()
        self._close_lock = threading.Lock()  # one close() at a time; a second one waits

        # _mutex guards the table and every field below. Conditions sharing it:
        #   _work_ready: idle workers wait for a job, or for close() to finish the queue;
        #   _room[p]: producers wait for room in priority p;
        #   _changed: wait(), join(), close() and the claimer wait for jobs to move;
        #   _retry_due: the retry thread waits for the earliest retry;
        #   _claim_wake: the claimer waits for room in a priority the store may hold jobs of.
        self._mutex = threading.Lock()
        self._work_ready = threading.Condition(self._mutex)
        self._room = [threading.Condition(self._mutex) for _ in _PRIORITIES]
        self._changed = threading.Condition(self._mutex)
        self._retry_due = threading.Condition(self._mutex)
        self._claim_wake = threading.Condition(self._mutex)
        self._table = JobTable(self._store, config.effective_weights, self._clock)
        self._handlers: dict[str, Handler] = dict(config.handlers or {})
        self._unclaimed = [True, True, True]  # the store may hold jobs of p for this queue
        self._idle_workers = 0
        self._room_waiters = [0, 0, 0]
        self._batch_waiters = [0, 0, 0]  # room waiters needing more than one slot
        self._change_waiters = 0
        self._version = 0  # counts changes, so a waiter that read the store misses none
        self._closing = False  # close() has started: no new jobs
        self._stopping = False  # close() gave up waiting: workers stop
        self._closed = False
        self._abandoned: list[str] = []
        self._started_at = self._clock()

        self._threads: list[threading.Thread] = []
        try:
            for number in range(config.num_workers):
                self._start_thread(self._work, f"jobqueue-final-worker-{number}")
            self._start_thread(self._schedule_retries, "jobqueue-final-retry")
            self._start_thread(self._claim, "jobqueue-final-claimer")
        except BaseException:
            self.close(timeout=0)
            raise

    def _start_thread(self, target: object, name: str) -> None:
        # Daemon threads: a handler that never returns must not stop the interpreter exiting.
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    # -- submitting -------------------------------------------------------------------------

    def enqueue(self, job: Job, block: bool = True, timeout: float | None = None) -> None:
        """Accept a job, run by ``handlers[job.kind]`` or else ``handler`` from the config.

        Blocks while the job's priority is full (``queue_size`` jobs queued or waiting for a
        retry); raises ``QueueFull`` at once with ``block=False`` or after ``timeout`` seconds.
        With a persistent store, returns only once the job is committed to it.
        Raises ``QueueClosed`` once :meth:`close` has started, ``DuplicateJob`` if a job with
        this id is queued, processing or retrying, ``ValueError`` if no handler can run it,
        and ``StoreError`` if the store cannot take it. A call that raises leaves no trace.
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
        self, jobs: Sequence[Job], handler: Handler | None, block: bool, timeout: float | None
    ) -> None:
        if len(jobs) == 1:
            job = jobs[0]
            if not isinstance(job, Job):
                raise TypeError(f"job must be a jobqueue.final.Job, not {type(job).__name__}")
            needed: tuple[tuple[Priority, int], ...] = ((job.priority, 1),)
        else:
            needed = self._batch_needs(jobs)
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be a non-negative number")

        # Built before taking the mutex, which every producer and worker shares: the less
        # work done holding it, the less they queue up behind each other.
        now = self._clock()
        entries = []
        records = []
        for job in jobs:
            entry = Entry(job, handler, next(self._seq), now)
            entries.append(entry)
            records.append(entry.record())
        table = self._table
        prepared = self._store.prepare(records)
        with self._mutex:
            now = self._admit_locked(jobs, needed, handler, block, timeout, now)
            ticket = self._store.add(prepared)  # raises with nothing held
            table.reserve(entries)
            if ticket is None:
                self._accept_locked(entries, now)
                return
        # The entries hold their ids and room while the store finishes, outside the mutex so
        # workers keep running; only then can a worker see them.
        try:
            self._store.commit(ticket)
        except BaseException as exc:
            with self._mutex:
                now = self._clock()
                for entry in entries:
                    table.transition(entry, GONE, now)
                for priority, count in needed:
                    self._room_freed_locked(priority, count)
                self._changed_locked()
            if isinstance(exc, JobQueueError) or not isinstance(exc, Exception):
                raise
            raise StoreError(f"could not store the job: {exc!r}") from exc
        with self._mutex:
            self._accept_locked(entries, self._clock())

    def _batch_needs(self, jobs: Sequence[Job]) -> tuple[tuple[Priority, int], ...]:
        """Check a batch; return how many jobs of each priority it holds."""
        counts = [0, 0, 0]
        ids = set()
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"job must be a jobqueue.final.Job, not {type(job).__name__}")
            if job.id in ids:
                raise DuplicateJob(f"job id {job.id!r} appears twice in one enqueue_many call")
            ids.add(job.id)
            counts[job.priority] += 1
        limit = self._config.queue_size
        for priority in _PRIORITIES:
            if counts[priority] > limit:
                raise ValueError(
                    f"enqueue_many got {counts[priority]} {priority.name} jobs, more than "
                    f"queue_size={limit}: the batch could never fit"
                )
        return tuple((p, counts[p]) for p in _PRIORITIES if counts[p])

    def _admit_locked(
        self,
        jobs: Sequence[Job],
        needed: tuple[tuple[Priority, int], ...],
        handler: Handler | None,
        block: bool,
        timeout: float | None,
        now: float,
    ) -> float:
        """Wait until the jobs may be accepted; raise if they never will. Mutex held.

        Returns ``now``, or the time after waiting.
        """
        endtime = None if timeout is None else now + timeout
        limit = self._config.queue_size
        table = self._table
        while True:
            if self._closing:
                raise QueueClosed("cannot enqueue after close() has started")
            needs_handler = handler is None and self._config.handler is None
            for job in jobs:
                entry = table.get(job.id)
                if entry is not None:
                    state = _describe_state(entry.state)
                    raise DuplicateJob(f"job {job.id!r} is already {state}")
                if needs_handler and job.kind not in self._handlers:
                    raise ValueError(
                        f"no handler for job {job.id!r}: kind {job.kind!r} is not in "
                        "handlers and the config has no default handler"
                    )
            for full, count in needed:
                # While the store may hold jobs of a priority, they come first: they are
                # queued too, and older.
                if self._unclaimed[full] or table.occupied(full) + count > limit:
                    break
            else:
                return now
            if not block:
                raise QueueFull(f"the {full.name} queue is full ({limit} jobs)")
            remaining = None
            if endtime is not None:
                remaining = endtime - self._clock()
                if remaining <= 0:
                    raise QueueFull(
                        f"the {full.name} queue stayed full ({limit} jobs) for {timeout} s"
                    )
            batch = count > 1
            self._room_waiters[full] += 1
            self._batch_waiters[full] += batch
            try:
                self._room[full].wait(remaining)
            finally:
                self._room_waiters[full] -= 1
                self._batch_waiters[full] -= batch
            now = self._clock()

    def _accept_locked(self, entries: Sequence[Entry], now: float) -> None:
        for entry in entries:
            self._table.transition(entry, QUEUED, now)
        if self._idle_workers:
            self._work_ready.notify(len(entries))

    def _room_freed_locked(self, priority: Priority, slots: int = 1) -> None:
        if self._room_waiters[priority]:
            if self._batch_waiters[priority]:
                # One notify could go to a batch that does not fit while a single job would:
                # let every waiter look.
                self._room[priority].notify_all()
            else:
                self._room[priority].notify(slots)
        if self._unclaimed[priority]:
            self._claim_wake.notify()

    def _changed_locked(self) -> None:
        self._version += 1
        if self._change_waiters:
            self._changed.notify_all()
        if self._closing and self._drained_locked():
            self._work_ready.notify_all()
            self._retry_due.notify()

    def _drained_locked(self) -> bool:
        """True when close() has nothing left to wait for.

        A persistent store keeps jobs waiting for a retry for the next start; in memory they
        would be lost, so close() waits for them too.
        """
        table = self._table
        for priority in _PRIORITIES:
            if table.count(NEW, priority) or table.count(QUEUED, priority):
                return False
            if table.count(PROCESSING, priority):
                return False
            if table.count(RETRYING, priority) and not self._store.persistent:
                return False
        return True

    # -- running ----------------------------------------------------------------------------

    def _work(self) -> None:
        mutex = self._mutex
        entry: Entry | None = None
        outcome: _Outcome = None
        clock = self._clock
        while True:
            with mutex:
                now = clock()
                if entry is not None:
                    self._settle_locked(entry, outcome, now)
                entry = self._next_locked(now)
            if entry is None:
                return
            outcome = self._run(entry)

    def _next_locked(self, now: float) -> Entry | None:
        """Pick the next job, or return None when this worker should exit. Mutex held."""
        table = self._table
        while True:
            if self._stopping:
                return None
            entry = table.take(now)
            if entry is not None:
                priority = entry.job.priority
                if self._room_waiters[priority] or self._unclaimed[priority]:
                    self._room_freed_locked(priority)
                return entry
            if self._closing and self._drained_locked():
                return None
            self._idle_workers += 1
            try:
                self._work_ready.wait()
            finally:
                self._idle_workers -= 1
            now = self._clock()

    def _run(self, entry: Entry) -> _Outcome:
        """Run one attempt outside the mutex; log a failure and decide its retry."""
        job = entry.job
        handler = entry.handler or self._handlers.get(job.kind) or self._config.handler
        job_timeout = self._config.job_timeout
        started = entry.started
        assert started is not None
        deadline = None if job_timeout is None else started + job_timeout
        worker_local.context = JobContext(job, entry.attempts, deadline, self._shutdown)
        error: BaseException | None = None
        try:
            if handler is None:  # its handler was replaced away; keep the job, fail the try
                raise LookupError(f"no handler for kind {job.kind!r}")
            handler(job.payload)
        except BaseException as exc:  # even SystemExit: the worker must live to settle it
            error = exc
        finally:
            worker_local.context = None
        if error is None:
            if deadline is None:
                return None
            elapsed = self._clock() - started
            if elapsed <= job_timeout:  # type: ignore[operator]
                return None
            error = JobTimeout(f"timed out after {elapsed:.3f} s (job_timeout={job_timeout} s)")
        # Logged before the outcome is visible, outside the mutex: a waiter woken by the
        # failure finds it logged, and a slow log handler holds up no other thread.
        message = _describe_error(error)
        if self._stopping:
            logger.warning("job %r failed as close() gave up on it: %s", job.id, message)
            return message, None
        delay = self._policy.next_delay(entry.attempts, job.max_retries)
        if delay is not None:
            allowed = self._policy.max_retries if job.max_retries is None else job.max_retries
            logger.warning(
                "job %r failed (attempt %d of %d), retrying in %.3f s: %s",
                job.id, entry.attempts, allowed + 1, delay, message,
            )
        else:
            logger.error("job %r failed after %d attempts", job.id, entry.attempts,
                         exc_info=error)
        return message, delay

    def _settle_locked(self, entry: Entry, outcome: _Outcome, now: float) -> None:
        """Record an attempt's outcome. Mutex held."""
        table = self._table
        if self._stopping and table.get(entry.job.id) is not entry:
            return  # close() gave up on it and forgot it; the store keeps it as it was
        if outcome is None:
            table.transition(entry, COMPLETED, now)
        else:
            entry.last_error, delay = outcome
            if self._stopping:
                # Shutdown gave up on this job: it is not finished, so it is not failed
                # either. Back to the store, for the next start.
                table.transition(entry, QUEUED, now)
            elif delay is not None:
                entry.due = now + delay
                if table.transition(entry, RETRYING, now):
                    self._retry_due.notify()
            else:
                table.transition(entry, FAILED, now)
        self._changed_locked()

    def _schedule_retries(self) -> None:
        table = self._table
        with self._mutex:
            while True:
                if self._stopping or (self._closing and self._drained_locked()):
                    return
                now = self._clock()
                due = table.come_due(now)
                if due and self._idle_workers:
                    self._work_ready.notify(len(due))
                next_due = table.retries.next_due()
                wait = None if next_due is None else min(next_due - now, threading.TIMEOUT_MAX)
                self._retry_due.wait(wait)

    def _claim(self) -> None:
        """Claim jobs the store holds for this queue, each priority up to its room."""
        table = self._table
        limit = self._config.queue_size
        while True:
            with self._mutex:
                while True:
                    if self._closing:
                        return
                    priority = self._claimable_locked()
                    if priority is not None:
                        break
                    self._claim_wake.wait()
                room = limit - table.occupied(priority)
                kinds = None if self._config.handler is not None else frozenset(self._handlers)
            try:
                records = self._store.claim(priority, room, kinds)
            except Exception:
                logger.exception("claiming stored jobs failed; they stay stored")
                records = None
            with self._mutex:
                if self._closing:
                    return  # the store keeps them for the next start
                if records is None:
                    self._unclaimed = [False, False, False]
                    for condition in self._room:
                        condition.notify_all()
                    self._changed_locked()
                    return
                self._take_claimed_locked(records)
                if len(records) < room:
                    self._unclaimed[priority] = False
                    self._room[priority].notify_all()
                self._changed_locked()

    def _claimable_locked(self) -> Priority | None:
        for priority in _PRIORITIES:
            room = self._table.occupied(priority) < self._config.queue_size
            if room and self._unclaimed[priority]:
                return priority
        return None

    def _take_claimed_locked(self, records: Sequence) -> None:
        table = self._table
        for record in records:
            # A producer may be enqueueing the same id: the store will refuse it (the
            # record is live there), so wait for its reservation to go.
            while (held := table.get(record.id)) is not None and held.state is NEW:
                self._change_waiters += 1
                try:
                    self._changed.wait()
                finally:
                    self._change_waiters -= 1
            if held is not None:
                logger.error("the store handed out job %r, which this queue holds", record.id)
                continue
            if table.claim(record, self._clock()).state is RETRYING:
                self._retry_due.notify()
            elif self._idle_workers:
                self._work_ready.notify()

    # -- asking -----------------------------------------------------------------------------

    def status(self, job_id: str) -> Status | None:
        """Return the job's status, or ``None`` if the queue does not know the id."""
        with self._mutex:
            entry = self._table.get(job_id)
            if entry is not None and entry.state is not NEW:
                return entry.state  # type: ignore[return-value]
        record = self._store.get(job_id)
        return None if record is None else record.status

    def info(self, job_id: str) -> JobInfo | None:
        """Return what the queue knows about a job, or ``None`` if it does not know the id."""
        with self._mutex:
            entry = self._table.get(job_id)
            if entry is not None and entry.state is not NEW:
                return entry.record().info()
        record = self._store.get(job_id)
        return None if record is None else record.info()

    def wait(self, job_id: str, timeout: float | None = None) -> Status:
        """Block until the job is COMPLETED or FAILED and return that status.

        Raises ``KeyError`` for an unknown id, ``TimeoutError`` after ``timeout`` seconds, and
        ``QueueClosed`` if close() left the job unfinished.
        """
        endtime = None if timeout is None else self._clock() + timeout
        with self._mutex:
            entry = self._table.get(job_id)
            version = self._version
        while entry is None:
            record = self._store.get(job_id)  # outside the mutex: it may read the disk
            with self._mutex:
                entry = self._table.get(job_id)
                if entry is not None:
                    break
                if record is None:
                    raise KeyError(job_id)
                if record.status not in LIVE:
                    return record.status
                # Stored and not claimed yet: look again after the next change.
                if self._version == version:
                    self._wait_changed_locked(job_id, endtime, timeout)
                version = self._version
        with self._mutex:
            while entry.state is NEW or entry.state in LIVE:
                self._wait_changed_locked(job_id, endtime, timeout)
        if entry.state is GONE:
            raise KeyError(job_id)
        return entry.state  # type: ignore[return-value]

    def _wait_changed_locked(
        self, job_id: str, endtime: float | None, timeout: float | None
    ) -> None:
        if self._closed or self._stopping:
            raise QueueClosed(f"job {job_id!r} was left unfinished by close()")
        remaining = None if endtime is None else endtime - self._clock()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"job {job_id!r} did not finish within {timeout} s")
        self._change_waiters += 1
        try:
            self._changed.wait(remaining)
        finally:
            self._change_waiters -= 1

    def join(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued, processing or waiting for a retry.

        Returns False if ``timeout`` seconds passed first, or if close() left work unfinished.
        Stored jobs whose kind has no handler do not count: they cannot run.
        """
        endtime = None if timeout is None else self._clock() + timeout
        with self._mutex:
            while len(self._table) or any(self._unclaimed):
                remaining = None if endtime is None else endtime - self._clock()
                if self._stopping or self._closed or (remaining is not None and remaining <= 0):
                    return False
                self._change_waiters += 1
                try:
                    self._changed.wait(remaining)
                finally:
                    self._change_waiters -= 1
            return True

    def register(self, kind: str, handler: Handler) -> None:
        """Add or replace the handler for jobs of ``kind``, while the queue runs.

        Stored jobs of that kind that were waiting for a handler are claimed as room frees.
        """
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a str, not {type(kind).__name__}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        with self._mutex:
            new_kind = kind not in self._handlers
            self._handlers[kind] = handler
            if new_kind and self._config.handler is None and not self._closing:
                self._unclaimed = [True, True, True]
                self._claim_wake.notify()

    def dead_letters(self) -> list[JobInfo]:
        """Return the FAILED jobs still kept (see ``status_retention``), oldest first."""
        records = self._store.dead_letters()
        with self._mutex:  # an id enqueued again since is live, not dead
            return [r.info() for r in records if self._table.get(r.id) is None]

    def requeue(self, job_id: str) -> None:
        """Run a FAILED job again from attempt 0.

        Raises ``KeyError`` for an unknown id, ``ValueError`` if the job is not FAILED,
        and otherwise as :meth:`enqueue` (it blocks while the priority is full).
        """
        with self._mutex:
            entry = self._table.get(job_id)
            if entry is not None:
                raise ValueError(f"job {job_id!r} is {_describe_state(entry.state)}, not failed")
        record = self._store.get(job_id)
        if record is None:
            raise KeyError(job_id)
        if record.status is not Status.FAILED:
            raise ValueError(f"job {job_id!r} is {record.status.value}, not failed")
        job = Job(record.id, record.payload, record.priority, record.kind, record.max_retries,
                  record.created_at)
        self._enqueue((job,), None, True, None)

    def metrics(self) -> Metrics:
        """Return an atomic snapshot of the counters."""
        with self._mutex:
            elapsed = self._clock() - self._started_at
            return self._table.metrics(self._config.num_workers, elapsed, len(self._abandoned))

    # -- closing ----------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> list[str]:
        """Stop accepting jobs, finish the accepted ones, stop the threads.

        Blocks until queued jobs, running handlers and (in memory) jobs waiting for a retry
        have finished, or ``timeout`` seconds (default ``Config.shutdown_timeout``) have
        passed. Then it signals cancellation to running handlers (see :func:`current_job`),
        waits briefly for them, logs at WARNING what it could not finish and returns those
        ids. In memory they are lost and counted in ``metrics().abandoned``; a persistent
        store keeps them, and jobs waiting for a retry, for the next start.
        A second call, even from another thread at the same time, returns the same list.
        """
        if timeout is None:
            timeout = self._config.shutdown_timeout
        with self._close_lock:
            if not self._closed:
                self._close(timeout)
            return list(self._abandoned)

    def _close(self, timeout: float) -> None:
        endtime = self._clock() + timeout
        with self._mutex:
            self._closing = True
            for room in self._room:
                room.notify_all()
            self._claim_wake.notify_all()
            self._retry_due.notify()
            self._changed_locked()
            while not self._drained_locked():
                remaining = endtime - self._clock()
                if remaining <= 0:
                    break
                self._change_waiters += 1
                try:
                    self._changed.wait(remaining)
                finally:
                    self._change_waiters -= 1
            gave_up = not self._drained_locked()
            if gave_up:
                self._stopping = True
                self._shutdown.set()
                self._work_ready.notify_all()
                self._retry_due.notify()
                self._changed.notify_all()
        grace = _CANCEL_GRACE if gave_up else max(_CANCEL_GRACE, endtime - self._clock())
        join_until = self._clock() + grace
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, join_until - self._clock()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        with self._mutex:
            if gave_up:
                self._abandoned = self._table.drop_all()
            self._closed = True
            self._changed_locked()  # waiters whose jobs will not finish now must know
        if gave_up:
            where = "stay stored for the next start" if self._store.persistent else "are lost"
            shown = ", ".join(self._abandoned[:_IDS_LOGGED])
            more = len(self._abandoned) - _IDS_LOGGED
            logger.warning(
                "close() gave up after %s s; %d unfinished jobs %s: %s%s",
                timeout, len(self._abandoned), where, shown,
                f" and {more} more" if more > 0 else "",
            )
        if stuck:
            logger.warning("handlers did not return; threads still running: %s", stuck)
        self._store.close(max(_CANCEL_GRACE, endtime - self._clock()))

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
