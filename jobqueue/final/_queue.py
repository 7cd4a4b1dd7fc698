"""The final stage's JobQueue: fair, observable, retrying, and durable behind a Store.

Compared with ``jobqueue/improved/_queue.py``:

- one mutex and a few conditions (:mod:`._core`) replace the per-priority ``queue.Queue``
  objects, because the picker must see every priority at once to be fair, and a job's status
  must change in the same critical section that moves it;
- a job table (:mod:`._table`) moves every job through one state machine (:mod:`._states`),
  so statuses, counts, metrics and what the store is told cannot drift apart;
- a weighted picker replaces strict priority order, so LOW is never starved;
- every job has a status, queryable by id, and finished ones are kept up to a retention;
- handlers can learn, cooperatively, that their job timed out or shutdown gave up on them;
- a :class:`~._store.Store` keeps what must outlive the process, and hands stored jobs back.

This module is the public face: it starts the threads (:mod:`._workers`, :mod:`._claimer`),
lets jobs in through :mod:`._admission`, answers questions, and closes.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from jobqueue._priority import Priority
from jobqueue.errors import JobCancelled, JobFailed, QueueClosed, StoreError
from jobqueue.final import _admission, _claimer, _closing, _periodic, _workers
from jobqueue.final._checks import MAX_DELAY, check_handler, check_timeout
from jobqueue.final._context import JobContext, on_hook, own_thread, running_in, worker_local
from jobqueue.final._core import Core
from jobqueue.final._model import Config, Handler, Job, JobInfo, Metrics
from jobqueue.final._retry import RetryPolicy
from jobqueue.final._states import (
    CANCELLABLE,
    CANCELLED,
    GONE,
    LIVE,
    NEW,
    PROCESSING,
    QUEUED,
    SCHEDULED,
    Status,
)
from jobqueue.final._tasks import Exceptions, Task, decode_result, make_task
from jobqueue.final.stores import open_store
from jobqueue.final.stores.base import JobRecord, JsonResult, QueueStats, SharedStore

if TYPE_CHECKING:
    from jobqueue.final._app import App

__all__ = ["JobQueue"]

logger = logging.getLogger("jobqueue")

P = ParamSpec("P")
R = TypeVar("R")

#: How long cancel() waits for its store to keep the cancel before it raises StoreError.
_CANCEL_WAIT = 30.0


# Every queue of this process, so that a forked child can mark them unusable (Core.forked).
_queues: weakref.WeakSet[JobQueue] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for queue in list(_queues):
        queue._core.forked = True  # its calls refuse, and a worker that forked stops


os.register_at_fork(after_in_child=_after_fork_in_child)


def _eager_backlogs() -> dict[Core, collections.deque[str]]:
    """This thread's backlog of eager jobs per queue, while an eager enqueue runs them."""
    backlogs = getattr(worker_local, "eager_backlogs", None)
    if backlogs is None:
        backlogs = worker_local.eager_backlogs = {}
    return backlogs


def _whose(context: JobContext | None) -> str:
    if context is not None:
        return f"the handler of job {context.job.id!r} (or a log handler it ran)"
    return "one of this queue's own threads (a log handler it ran)"


def _check_id(job_id: object) -> None:
    if not isinstance(job_id, str):
        raise TypeError(f"job_id must be a str, not {type(job_id).__name__}")


def _unknown(job_id: str) -> KeyError:
    return KeyError(f"no job {job_id!r} in this queue (never enqueued, or finished longer "
                    "ago than status_retention keeps)")


class JobQueue:
    """A pool of worker threads running jobs by weighted priority, with retries and status.

    ``Config.persist_path`` chooses the store: ``None`` keeps everything in memory, a path
    keeps jobs in LMDB so that they survive a crash (at least once); ``Config.database_url``
    keeps them in PostgreSQL, in a queue every process naming it shares. Use as a context
    manager, or call :meth:`close`.

    Threads: ``jobqueue-final-worker-N`` run jobs; ``jobqueue-final-retry`` brings retries
    back when due; ``jobqueue-final-claimer`` claims jobs from the store as room frees; in
    PostgreSQL, ``jobqueue-final-pg-writer`` writes moves and heartbeats and
    ``jobqueue-final-pg-listener`` hears other processes. None is started per job, and none
    outlives :meth:`close` unless a handler never returns.
    """

    def __init__(
        self, config: Config, *, app: App | None = None,
        _clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a jobqueue.final.Config, not {type(config).__name__}")
        if app is not None and not hasattr(app, "_bind"):
            raise TypeError(f"app must be a jobqueue.final.App, not {type(app).__name__}")
        # A forked child has none of the threads and must not touch the parent's store:
        # every call there raises (close() does nothing). See Core.forked.
        self._pid = os.getpid()
        self._config = config
        # _clock: a monotonic clock for tests, which move it and wake the timers themselves
        # (tests/clock.py); the timers still sleep in real time. A shared store's due times
        # are compared against the same clock, in epoch seconds.
        clock = _clock or time.monotonic
        epoch_offset = time.time() - clock()
        store = open_store(config, lambda: clock() + epoch_offset)
        try:
            self._core = core = Core(config, store, clock, epoch_offset)
        except BaseException:
            store.close(0)
            raise
        self._policy = policy = RetryPolicy(
            config.max_retries, config.base_delay, config.max_delay, config.jitter
        )
        # One close() at a time; a second one waits. Reentrant: close() logs, and a log
        # handler may call close() again on the same thread.
        self._close_lock = threading.RLock()
        self._abandoned: list[str] = []  # set by close(), under _close_lock
        self._started_at = core.clock()
        self._threads: list[threading.Thread] = []
        self._app = app
        try:
            if app is not None:  # its tasks, before a claimer claims what they run
                app._bind(self)
            if core.shared is not None:  # other processes' news: new jobs, jobs finished
                core.shared.listen(core.jobs_ready, core.jobs_changed)
            # Eager mode runs every job in the thread that enqueues it: no threads to start,
            # and no claimer to find stored jobs (eager queues keep none). A queue with no
            # workers only enqueues, for the processes that run its jobs: it claims nothing.
            if config.eager or not config.num_workers:
                core.unclaimed = [False, False, False]
            for number in range(0 if config.eager else config.num_workers):
                self._start_thread(
                    lambda: _workers.work(core, policy, self._finish_close),
                    f"jobqueue-final-worker-{number}",
                )
            if not config.eager and config.num_workers:
                self._start_thread(lambda: _workers.retry_timer(core), "jobqueue-final-retry")
                self._start_thread(lambda: _claimer.claim(core, policy),
                                   "jobqueue-final-claimer")
        except BaseException:
            self.close(timeout=0)
            raise
        _queues.add(self)

    def _refuse_if_forked(self) -> None:
        if self._core.forked:
            raise RuntimeError(
                f"this JobQueue belongs to process {self._pid}, and this process is a fork of "
                "it: its threads and its store are the parent's. Make a new JobQueue here "
                "(after the fork), or fork before making one"
            )

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        core = self._core

        def run() -> None:
            worker_local.owner = core  # calls from this thread are calls from the queue's own
            target()

        # Daemon threads: a handler that never returns must not stop the interpreter exiting.
        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- submitting -------------------------------------------------------------------------

    def enqueue(
        self,
        job: Job,
        block: bool = True,
        timeout: float | None = None,
        *,
        connection: object = None,
        delay: float | None = None,
    ) -> None:
        """Accept a job, run by ``handlers[job.kind]`` or else ``handler`` from the config.

        Blocks while the job's priority is full (``queue_size`` jobs queued or waiting for a
        retry); raises ``QueueFull`` at once with ``block=False`` or after ``timeout`` seconds.
        With ``delay`` seconds (or a ``Job.run_at`` to come) the job is SCHEDULED until
        then: it takes no room until it is due, but past ``max_scheduled`` jobs scheduled
        ``QueueFull`` is raised at once, as room there frees only as they come due.
        With a persistent store, returns only once the job is committed to it.
        Raises ``QueueClosed`` once :meth:`close` has started, ``DuplicateJob`` if a job with
        this id is queued, processing or retrying, ``ValueError`` if no handler can run it,
        and ``StoreError`` if the store cannot take it. A call that raises leaves no trace.

        In PostgreSQL (``Config.database_url``) the job goes into the shared queue, for
        whichever process claims it first: the call never waits for room (the database
        holds the backlog; ``queue_size`` bounds what each process claims), and a kind no
        handler here runs is accepted, for the processes that run it. ``connection``, an
        open psycopg connection, inserts it inside that connection's transaction: the job
        exists, and may run, only once the transaction commits.
        """
        if self._core.forked:
            self._refuse_if_forked()
        if delay is not None:
            delay = _admission.check_delay(delay)
        if self._config.eager:
            self._run_eagerly((job,), None, block, timeout)
            return
        _admission.enqueue(self._core, (job,), None, block, timeout, connection, delay)

    def enqueue_with_handler(
        self, job: Job, handler: Handler, block: bool = True, timeout: float | None = None
    ) -> None:
        """Like :meth:`enqueue`, with ``handler`` for this job alone.

        A closure cannot be persisted: if the process dies before the job finishes, the job is
        recovered at the next start and runs with ``handlers[job.kind]`` or ``handler``.
        In PostgreSQL the job is held by this process from the start, as the closure runs
        only here; should it die, the process that takes the job over runs it so too.
        """
        self._refuse_if_forked()
        check_handler("handler", handler)
        if self._config.eager:
            self._run_eagerly((job,), handler, block, timeout)
            return
        if not self._config.num_workers:
            raise ValueError("enqueue_with_handler() runs the job in this process, and this "
                             "queue has no workers (num_workers=0): use a handler in the "
                             "config of the processes that run it")
        _admission.enqueue(self._core, (job,), handler, block, timeout)

    def enqueue_many(
        self,
        jobs: Iterable[Job],
        block: bool = True,
        timeout: float | None = None,
        *,
        connection: object = None,
        delay: float | None = None,
    ) -> None:
        """Accept several jobs at once, all or none: one store commit for the whole batch.

        Blocks until the batch fits; raises ``ValueError`` if it holds more jobs of one
        priority than ``queue_size``, since it could never fit. Otherwise as :meth:`enqueue`,
        ``connection`` and ``delay`` included.
        """
        self._refuse_if_forked()
        if delay is not None:
            delay = _admission.check_delay(delay)
        batch = tuple(jobs)
        if batch and self._config.eager:
            self._run_eagerly(batch, None, block, timeout)
        elif batch:
            _admission.enqueue(self._core, batch, None, block, timeout, connection, delay)

    def _run_eagerly(
        self, jobs: tuple[Job, ...], handler: Handler | None, block: bool,
        timeout: float | None,
    ) -> None:
        """Eager mode: accept the jobs, then run each here and now, retries included
        (without waiting for the backoff). A job's run_at is not waited for either.

        Jobs a handler enqueues meanwhile (a task that enqueues the next) join the
        outermost call's backlog and run after the job that enqueued them, in order, as a
        worker would run them: a chain of any length takes no stack. A handler that waits
        for such a job runs it first (see _finished_record).
        """
        jobs = tuple(
            job if not isinstance(job, Job) or job.run_at is None
            else Job(job.id, job.payload, job.priority, job.kind, job.max_retries, job.created)
            for job in jobs
        )
        core = self._core
        _admission.enqueue(core, jobs, handler, block, timeout)
        backlogs = _eager_backlogs()
        backlog = backlogs.get(core)
        if backlog is not None:  # inside a handler of this queue: the outermost call runs it
            backlog.extend(job.id for job in jobs)
            return
        backlog = backlogs[core] = collections.deque(job.id for job in jobs)
        try:
            while backlog:
                self._run_next_eagerly(backlog)
        finally:
            del backlogs[core]
        if self._core.close_when_drained and not own_thread(self._core):
            self._finish_close()  # a handler called close(): nothing is left to run

    def _run_next_eagerly(self, backlog: collections.deque[str]) -> None:
        core = self._core
        try:
            _workers.run_now(core, self._policy, backlog.popleft())
        except BaseException:  # Ctrl-C: the rest of the backlog will not run either
            with core.mutex:
                for unrun in backlog:
                    entry = core.table.get(unrun)
                    if entry is not None and entry.state is QUEUED:
                        core.table.transition(entry, CANCELLED, core.clock())
                core.changed_locked()
            backlog.clear()
            raise

    def task(
        self,
        kind: str | None = None,
        *,
        priority: Priority | str = Priority.MEDIUM,
        max_retries: int | None = None,
        retry_on: Exceptions | None = None,
        give_up_on: Exceptions = (),
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Decorate a function to make it a task of this queue: the handler of ``kind``
        (default: its module and qualified name), enqueued with its arguments as JSON.
        Tasks meant for several processes are declared on an :class:`App` instead, at
        import time; this is the same for one queue.

        ``@jq.task(kind="email")`` on ``def send(to: str)`` gives a :class:`Task`:
        ``send.enqueue(to="ada@example.com")`` returns the job's id as a
        :class:`JobHandle`, whose ``result()`` is what ``send`` returned, through JSON;
        ``send.options(id=..., delay=...)`` sets one job's options, and ``send(...)`` still
        calls the function. ``retry_on``/``give_up_on`` as in :meth:`App.task`. Raises
        ``TypeError`` for a parameter named ``id``, ``delay`` or ``run_at`` or a function
        that is not a plain one, and ``ValueError`` for a kind another task has.
        """
        def decorate(function: Callable[P, R]) -> Task[P, R]:
            made = make_task(lambda: self, function, kind, priority, max_retries,
                             retry_on, give_up_on)
            self._add_task(made)
            return made
        return decorate

    def _add_task(self, task: Task[Any, Any]) -> None:
        """Run ``task`` here (if this queue has workers) and decode its results."""
        self._refuse_if_forked()
        core = self._core
        with core.mutex:
            other = core.tasks.get(task.kind)
            if other is not None and other.function != task.function:
                raise ValueError(
                    f"kind {task.kind!r} is the task {other.function!r} already: give "
                    "this one its own kind= (functions of one name, made by one "
                    "factory or lambdas, share the default kind)"
                )
            if other is None and task.kind in core.handlers:
                raise ValueError(f"kind {task.kind!r} has a handler already (Config.handlers "
                                 "or register()): a task needs a kind of its own")
            core.tasks[task.kind] = task
            if task.retry_on is not None or task.give_up_on:
                core.retry_rules[task.kind] = (task.retry_on, task.give_up_on)
            else:
                core.retry_rules.pop(task.kind, None)
        self.register(task.kind, task.run)

    def every(
        self, seconds: float, job_factory: Callable[[], Job], *, name: str
    ) -> None:
        """Enqueue ``job_factory()`` every ``seconds``, at whole multiples of it since the
        epoch (``every(60)``: each minute on the minute), under the id ``name@<tick time>``.

        Every process and every restart computes the same ids, and an id the store holds
        (live, or finished within ``status_retention``) is not enqueued again: no tick
        runs twice. Ticks missed while no process ran are skipped. One thread,
        ``jobqueue-final-periodic``, serves every schedule. Raises ``ValueError`` for a
        name in use or a period out of range, ``TypeError`` for wrong types.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
        if not (0.001 <= seconds <= MAX_DELAY):  # NaN fails too
            raise ValueError(f"seconds must be from 0.001 to {MAX_DELAY:.0f}, got {seconds}")
        self._add_schedule(name, _periodic.every_ticks(float(seconds)), job_factory)

    def cron(
        self, expression: str, job_factory: Callable[[], Job], *, name: str,
        tz: datetime.tzinfo = datetime.timezone.utc,
    ) -> None:
        """As :meth:`every`, at the times of a cron ``expression`` (``"*/5 * * * *"``) in
        the time zone ``tz`` (default UTC). Needs croniter: ``pip install croniter``
        (``ImportError`` naming it otherwise); ``ValueError`` for an invalid expression.
        """
        if not isinstance(tz, datetime.tzinfo):
            raise TypeError(f"tz must be a datetime.tzinfo, not {type(tz).__name__}")
        self._add_schedule(name, _periodic.cron_ticks(expression, tz), job_factory)

    def _add_schedule(
        self, name: str, ticks: _periodic.Ticks, job_factory: Callable[[], Job]
    ) -> None:
        self._refuse_if_forked()
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        Job(_periodic.tick_id(name, 0.0))  # the ids it makes must be valid: checks the name
        if not name:
            raise ValueError("name must be a non-empty str: it starts every tick's id")
        if "@" in name:
            raise ValueError(f"name must not contain '@' (it separates the tick time): {name!r}")
        if not callable(job_factory):
            raise TypeError(f"job_factory must be callable, not {type(job_factory).__name__}")
        core = self._core
        now = core.clock() + core.table.epoch_offset
        try:
            first = ticks.next_after(now)
        except Exception as exc:  # croniter: an expression whose times have all passed
            raise ValueError(f"periodic job {name!r} has no time after now: {exc}") from None
        # All under the mutex, the thread's start too: close() sets closing under it before
        # it joins the threads, so it joins this one. (Not the close lock, which a close()
        # holds while it waits for handlers, and a handler may be what calls this.)
        with core.mutex:
            if core.closing:
                raise QueueClosed("cannot add a periodic job after close() has started")
            if any(schedule.name == name for schedule in core.schedules):
                raise ValueError(f"a periodic job named {name!r} exists already")
            core.schedules.append(_periodic.Schedule(name, ticks, job_factory, first))
            core.tick_wake.notify()
            if not core.ticker_started:
                core.ticker_started = True
                self._start_thread(lambda: _periodic.ticker(core, self.enqueue),
                                   "jobqueue-final-periodic")

    def register(self, kind: str, handler: Handler) -> None:
        """Add or replace the handler for jobs of ``kind``, while the queue runs.

        Stored jobs of that kind that were waiting for a handler are claimed as room frees.
        """
        self._refuse_if_forked()
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a str, not {type(kind).__name__}")
        check_handler("handler", handler)
        core = self._core
        with core.mutex:
            new_kind = kind not in core.handlers
            core.handlers[kind] = handler
            task = core.tasks.get(kind)
            if task is not None and handler != task.run:
                del core.tasks[kind]  # a plain handler now: its results are not JSON
                core.retry_rules.pop(kind, None)
            if (new_kind and self._config.handler is None and not core.closing
                    and not self._config.eager  # (eager queues keep nothing stored)
                    and self._config.num_workers):  # (nor do queues that only enqueue)
                core.registered += 1
                core.unclaimed = [True, True, True]  # the store may hold jobs of that kind
                core.claim_wake.notify()

    def requeue(self, job_id: str) -> None:
        """Run a FAILED job again from attempt 0.

        Raises ``KeyError`` for an unknown id, ``ValueError`` if the job is not FAILED,
        and otherwise as :meth:`enqueue` (it blocks while the priority is full).
        """
        self._refuse_if_forked()
        _check_id(job_id)
        core = self._core
        with core.mutex:
            entry = core.table.get(job_id)
            if entry is not None:
                state = _admission.describe_state(entry.state)
                raise ValueError(f"job {job_id!r} is {state}, not failed")
            if core.closing:
                raise QueueClosed("cannot requeue after close() has started")
        if core.shared is not None:  # one statement: two processes cannot both requeue it
            core.shared.requeue(job_id)
            return
        record = core.store.get(job_id)
        if record is None:
            raise _unknown(job_id)
        if record.status is not Status.FAILED:
            raise ValueError(f"job {job_id!r} is {record.status.value}, not failed")
        job = record.job()
        if self._config.eager:
            self._run_eagerly((job,), None, True, None)
            return
        _admission.enqueue(core, (job,), None, True, None)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not started: QUEUED, SCHEDULED or RETRYING becomes
        CANCELLED (final, kept as finished jobs are), and True is returned.

        A running job is not stopped (Python cannot stop a thread): its handler is asked to,
        through ``current_job().cancelled()`` and ``current_job().wait()``, and False is
        returned; what the handler then does decides the outcome. False too for a finished
        or unknown job, and for a job this queue has not claimed from its store yet (an LMDB
        backlog beyond ``queue_size`` at a restart). In PostgreSQL, a job no process holds
        is cancelled in the database; one another process has claimed cannot be cancelled
        from here (False). Returns once the cancel is kept: in the LMDB store's log (flushed
        with ``fsync``), or committed in PostgreSQL. Never blocks on a handler; raises
        ``QueueClosed`` after close(), ``StoreError`` if the store cannot keep it.
        """
        return self._cancel(job_id, again=False)

    def _cancel(self, job_id: str, again: bool) -> bool:
        self._refuse_if_forked()
        _check_id(job_id)
        core = self._core
        wake: threading.Event | None = None
        break_out = False
        with core.mutex:
            if core.closed:
                raise QueueClosed("cannot cancel after close(): the store is given up")
            entry = core.table.get(job_id)
            if entry is not None:
                state = entry.state
                if state is PROCESSING:
                    core.stop_asked.add(entry)  # before reading sleepers: see JobContext.wait
                    wake = core.sleepers.get(entry)
                elif state in CANCELLABLE:
                    core.table.transition(entry, CANCELLED, core.clock())
                    if state is not SCHEDULED:
                        core.room_freed_locked(entry.job.priority)
                    if (core.shared is not None and True in core.unclaimed
                            and core.claim_wanted_locked()):
                        core.claim_wake.notify()  # it held one fewer: room for any priority
                    core.changed_locked()
                    confirm = core.store.confirm
                    break_out = True
        if break_out:
            # Kept before it says so: a cancel the process dies right after must hold, and
            # one a shared store refused (another process took the job) did not happen.
            if confirm is None:
                return True
            try:
                return confirm(job_id, _CANCEL_WAIT)
            except TimeoutError:
                raise StoreError(f"the cancel of job {job_id!r} was not kept within "
                                 f"{_CANCEL_WAIT:.0f} s: the store does not answer") from None
        if wake is not None:
            wake.set()
        if entry is None and core.shared is not None:
            if core.shared.cancel(job_id):
                return True
            # The database refused: another process holds the job, or this one's claimer
            # does and has not put it in the table yet. Once its claims land, a job held
            # here is cancelled as one.
            with core.mutex:
                while core.claiming and core.table.get(job_id) is None and not core.closed:
                    core.wait_changed_locked(None)
                claimed = core.table.get(job_id) is not None and not core.closed
            if claimed and not again:
                return self._cancel(job_id, again=True)
        return False

    # -- asking -----------------------------------------------------------------------------

    def status(self, job_id: str) -> Status | None:
        """Return the job's status, or ``None`` if the queue does not know the id."""
        self._refuse_if_forked()
        _check_id(job_id)
        core = self._core
        with core.mutex:
            entry = core.table.get(job_id)
            if entry is not None and entry.state is not NEW:
                return entry.state  # type: ignore[return-value]
        record = core.store.get(job_id)
        return None if record is None else record.status

    def info(self, job_id: str) -> JobInfo | None:
        """Return what the queue knows about a job, or ``None`` if it does not know the id."""
        self._refuse_if_forked()
        _check_id(job_id)
        core = self._core
        with core.mutex:
            entry = core.table.get(job_id)
            if entry is not None and entry.state is not NEW:
                return entry.record.info()
        record = core.store.get(job_id)
        return None if record is None else record.info()

    def wait(self, job_id: str, timeout: float | None = None) -> Status:
        """Block until the job is finished (COMPLETED, FAILED or CANCELLED); return that.

        Raises ``KeyError`` for an unknown id, ``TimeoutError`` after ``timeout`` seconds (None
        or ``inf``: no limit), ``QueueClosed`` if close() left the job unfinished, and
        ``RuntimeError`` from the handler running that very job (it would wait for itself).
        """
        return self._finished_record(job_id, timeout).status

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job is finished, as :meth:`wait`; return what its handler
        returned, like ``Future.result()``.

        A task's result comes back through JSON, whichever process declared the task; a
        plain handler's is kept only when it is bytes (None otherwise). Raises
        :class:`JobFailed` (with the last error) for a FAILED job, :class:`JobCancelled`
        for a CANCELLED one, and as :meth:`wait` otherwise.
        Results are kept with the finished job, up to ``status_retention`` jobs.
        """
        record = self._finished_record(job_id, timeout)
        if record.status is Status.FAILED:
            raise JobFailed(job_id, record.last_error, record.attempts)
        if record.status is Status.CANCELLED:
            raise JobCancelled(f"job {job_id!r} was cancelled")
        if record.result is not None and record.kind in self._core.tasks:
            # A task's result from a store written before results were marked JSON.
            return decode_result(JsonResult(record.result))
        return decode_result(record.result)

    def _finished_record(
        self, job_id: str, timeout: float | None, hook: bool = False
    ) -> JobRecord:
        """The record of the job once it is finished; see wait()."""
        self._refuse_if_forked()
        _check_id(job_id)
        timeout = check_timeout("timeout", timeout)
        core = self._core
        if not hook and own_thread(core) and on_hook(core):
            # A hook: the worker it holds may be the one a job needs, so a hook reads
            # finished jobs only (its own is, by the time it is called).
            try:
                return self._finished_record(job_id, 0.0, hook=True)
            except TimeoutError:
                raise RuntimeError(f"wait({job_id!r}) from a hook would block a worker the "
                                   "job may need: a hook may read finished jobs only") from None
        if own_thread(core) and not hook:
            context = running_in(core)
            if context is not None and context.job.id == job_id:
                raise RuntimeError(f"wait({job_id!r}) called by that job's own handler would "
                                   "never return: the job finishes when the handler does")
            if context is None:
                raise RuntimeError(f"wait({job_id!r}) called from {_whose(None)} would block "
                                   "a thread the job may need to move it")
        if self._config.eager and not hook:  # a job of this thread's eager backlog: now
            backlog = _eager_backlogs().get(core)
            while backlog and job_id in backlog:
                self._run_next_eagerly(backlog)
        endtime = None if timeout is None else core.clock() + timeout
        watch: list[Any] | None = None
        with core.mutex:
            entry = core.table.get(job_id)
            version = core.version
            if entry is None:
                # Stored, not held: the claimer hands this waiter the entry if it claims
                # the job, which may finish, and be forgotten, before the waiter looks.
                watch = core.watched.setdefault(job_id, [0, None])
                watch[0] += 1
        try:
            while entry is None:
                assert watch is not None  # (registered above, as entry was None)
                record = core.store.get(job_id)  # without the mutex: it may read the disk
                with core.mutex:
                    entry = core.table.get(job_id) or watch[1]
                    if entry is not None:
                        break
                    if record is None:
                        raise _unknown(job_id)
                    if record.status not in LIVE:
                        return record
                    # Stored and not claimed yet: look again after the next change. A change
                    # while the store was read bumped the version: look again at once.
                    if core.version == version:
                        self._wait_for(job_id, endtime, timeout)
                        entry = core.table.get(job_id) or watch[1]
                    version = core.version
        finally:
            if watch is not None:
                with core.mutex:
                    watch[0] -= 1
                    if not watch[0]:
                        del core.watched[job_id]
        with core.mutex:
            # Following the entry, not the id: its outcome counts even if the queue forgets
            # it at once (status_retention=0) or the id is enqueued again.
            while entry.state is NEW or entry.state in LIVE:
                self._wait_for(job_id, endtime, timeout)
        shared = core.shared
        if shared is None:
            if entry.state is GONE:
                raise _unknown(job_id)
            return entry.record
        # A shared store: the outcome counts once committed, when every process sees it. One
        # it refused, or a job taken over (GONE), is another process's: ask the store.
        remaining = None if endtime is None else max(0.0, endtime - core.clock())
        if entry.state is not GONE:
            try:
                if shared.confirm(job_id, remaining):
                    return entry.record
            except TimeoutError:
                raise TimeoutError(f"job {job_id!r} did not finish within {timeout} s "
                                   "(its outcome is not committed yet)") from None
            remaining = None if endtime is None else max(0.0, endtime - core.clock())
        return self._finished_record(job_id, remaining)

    def _wait_for(self, job_id: str, endtime: float | None, timeout: float | None) -> None:
        core = self._core
        if core.closed or core.stopping:
            raise QueueClosed(f"job {job_id!r} was left unfinished by close()")
        remaining = None if endtime is None else endtime - core.clock()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"job {job_id!r} did not finish within {timeout} s")
        if core.shared is not None:  # another process may finish it: look again anyway
            poll = core.shared.poll_interval
            remaining = poll if remaining is None else min(remaining, poll)
        core.wait_changed_locked(remaining)

    def join(self, timeout: float | None = None, *, scheduled: bool = True) -> bool:
        """Block until nothing is queued, processing, waiting for a retry or scheduled.

        Jobs scheduled for later (``delay``, ``run_at``, periodic ticks) count, however far
        ahead: join() waits until they have run. ``scheduled=False`` waits only for the
        work that is due: jobs scheduled for later do not count until they come due.
        Returns False if ``timeout`` seconds (None or ``inf``: no limit) passed first, or if
        close() left work unfinished. Stored jobs whose kind has no handler do not count: they
        cannot run. Raises ``RuntimeError`` from a handler of this queue, whose own job would
        keep the queue from ever being idle.

        In PostgreSQL the queue is every process's: join() waits until no process has a job
        queued, processing or retrying in it, whatever its kind (another process may run
        kinds this one does not), and so waits for ever for jobs of a kind none runs.
        """
        self._refuse_if_forked()
        timeout = check_timeout("timeout", timeout)
        core = self._core
        if own_thread(core):
            raise RuntimeError(f"join() called from {_whose(running_in(core))} would never "
                               "return: that thread's own work keeps the queue busy")
        endtime = None if timeout is None else core.clock() + timeout
        if not isinstance(scheduled, bool):
            raise TypeError(f"scheduled must be a bool, not {type(scheduled).__name__}")
        table = core.table
        if core.shared is not None:
            return self._join_shared(core.shared, endtime, scheduled)
        with core.mutex:
            while True:
                if core.stopping:  # close() gave up on work: it will not finish here
                    return False
                busy = len(table) - (0 if scheduled else table.scheduled())
                if not busy and not any(core.unclaimed):
                    return True
                remaining = None if endtime is None else endtime - core.clock()
                if core.closed or (remaining is not None and remaining <= 0):
                    return False
                core.wait_changed_locked(remaining)

    def _join_shared(self, shared: SharedStore, endtime: float | None, scheduled: bool) -> bool:
        """join() of a shared queue: until no process has work in it."""
        core = self._core
        table = core.table
        poll = shared.poll_interval
        while True:
            with core.mutex:
                while (len(table) - (0 if scheduled else table.scheduled())
                       and not (core.stopping or core.closed)):
                    remaining = None if endtime is None else endtime - core.clock()
                    if remaining is not None and remaining <= 0:
                        return False
                    core.wait_changed_locked(remaining)
                if core.stopping or core.closed:
                    return False
                version = core.version
            if not shared.has_live(due_only=not scheduled):
                return True
            with core.mutex:
                remaining = None if endtime is None else endtime - core.clock()
                if remaining is not None and remaining <= 0:
                    return False
                if core.version == version:
                    core.wait_changed_locked(poll if remaining is None else min(poll, remaining))

    def queue_stats(self) -> QueueStats:
        """Counts by status of the whole queue: in PostgreSQL, the jobs of every process
        sharing it, read in one query (finished ones as far as ``status_retention`` keeps
        them). With a memory or LMDB store the queue is this process's own, and the counts
        are those of :meth:`metrics`. Raises ``StoreError`` if the database cannot answer.
        """
        self._refuse_if_forked()
        core = self._core
        if core.shared is not None:
            return core.shared.stats()
        metrics = self.metrics()
        per_priority = {
            p: {Status.QUEUED: m.queued, Status.PROCESSING: m.processing,
                Status.RETRYING: m.retrying, Status.COMPLETED: m.completed,
                Status.FAILED: m.failed, Status.SCHEDULED: m.scheduled,
                Status.CANCELLED: m.cancelled}
            for p, m in metrics.per_priority.items()
        }
        counts = {status: sum(c[status] for c in per_priority.values()) for status in Status}
        return QueueStats.of(counts, per_priority, 1)

    def dead_letters(self) -> list[JobInfo]:
        """Return the FAILED jobs still kept (see ``status_retention``), oldest first."""
        self._refuse_if_forked()
        core = self._core
        records = core.store.dead_letters()
        with core.mutex:  # an id enqueued again since is live, not dead
            return [r.info() for r in records if core.table.get(r.id) is None]

    def metrics(self) -> Metrics:
        """Return an atomic snapshot of the counters."""
        self._refuse_if_forked()
        core = self._core
        with core.mutex:
            elapsed = core.clock() - self._started_at
            return core.table.metrics(self._config.num_workers, elapsed, len(self._abandoned))

    def _metrics_and_latency(
        self, bounds: list[float]
    ) -> tuple[Metrics, tuple[list[int], int, float]]:
        """metrics() with its latency histogram at ``bounds``, from one snapshot (for
        :mod:`jobqueue.final.prometheus`)."""
        self._refuse_if_forked()
        core = self._core
        with core.mutex:
            elapsed = core.clock() - self._started_at
            metrics = core.table.metrics(self._config.num_workers, elapsed,
                                         len(self._abandoned))
            return metrics, core.table.latency_buckets(bounds)

    # -- closing ----------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> list[str]:
        """Stop accepting jobs, finish the accepted ones, stop the threads.

        Blocks until queued jobs, running handlers and (in memory) jobs waiting for a retry
        have finished, or ``timeout`` seconds (default ``Config.shutdown_timeout``; None or
        ``inf``: no limit) have passed. Then it signals cancellation to running handlers (see
        :func:`current_job`), waits briefly for them, logs at WARNING what it could not
        finish and returns those ids. In memory they are lost and counted in
        ``metrics().abandoned``; a persistent store keeps them, and jobs waiting for a retry,
        for the next start.
        A second call, even from another thread at the same time, returns the same list;
        given a shorter ``timeout`` than the first one's, it makes the first give up sooner
        (``close(timeout=0)`` from another thread: stop waiting now). If the store's last
        commit outlived the first call, it waits for it again, up to ``timeout``, and gives
        the store up once that commit ends.

        Called from a handler of this queue (or from any of its threads, say by a log
        handler), it cannot wait (the handler's own job would keep it waiting): it stops new
        jobs and returns ``[]`` at once; the workers finish what was accepted, the handler's
        job included, and then stop and give the store up by themselves. A later close()
        from outside a handler waits for that, as above.
        In a forked child, close() does nothing.
        """
        if self._core.forked:
            return []  # the threads and the store are the parent's: touch nothing
        timeout = check_timeout(
            "timeout", self._config.shutdown_timeout if timeout is None else timeout
        )
        core = self._core
        if own_thread(core):
            with core.mutex:
                if not core.closing:
                    core.close_when_drained = True
                    _closing.start_locked(core)
            return []
        if not core.closed:  # a close() in progress gives up by then too, if that is sooner
            _closing.hurry(core, timeout)
        with self._close_lock:
            if not core.closed:
                self._abandoned = _closing.close(core, self._threads, timeout)
                if self._app is not None:
                    self._app._unbind(self)
            else:
                core.store.close(timeout)  # returns at once if it is closed already
            return list(self._abandoned)

    def _finish_close(self) -> None:
        """After close() from a handler: the workers, drained, call this on their way out."""
        if self._close_lock.acquire(blocking=False):  # else another worker, or a close()
            try:
                self._abandoned = _closing.finish(self._core, self._threads)
                if self._app is not None:
                    self._app._unbind(self)
            finally:
                self._close_lock.release()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
