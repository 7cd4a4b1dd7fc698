"""Admission: how new jobs get into a queue, and wait for room.

A producer builds its jobs' entries and records before taking the mutex, then, holding it:
refuses a closing queue, an id the queue holds and a kind no handler runs; waits for room in
each priority the jobs need; hands them to the store; and makes them QUEUED. When the store
must finish outside the mutex (a disk flush, a check against stored jobs), the jobs wait as
NEW, holding their ids and room, and become QUEUED, or GONE if the store refused them.

Room: ``queue_size`` bounds the jobs of one priority that are reserved, queued or waiting for a
retry. While the store may hold jobs of a priority for this queue (a backlog left by an earlier
run), those come first: they are queued too, and older.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobqueue._priority import Priority
from jobqueue.errors import DuplicateJob, JobQueueError, QueueClosed, QueueFull, StoreError
from jobqueue.final._checks import MAX_DELAY, check_timeout
from jobqueue.final._context import on_worker
from jobqueue.final._core import Core
from jobqueue.final._model import Handler, Job
from jobqueue.final._states import GONE, NEW, QUEUED, SCHEDULED, State
from jobqueue.final._table import Entry
from jobqueue.final.stores.base import SharedStore

__all__ = ["check_delay", "describe_state", "enqueue", "run_at"]

_PRIORITIES = tuple(Priority)
#: How many jobs of each priority a call brings, for the priorities it brings any of.
_Needs = tuple[tuple[Priority, int], ...]


def describe_state(state: State) -> str:
    return "being enqueued" if state is NEW else str(state.value)


def run_at(core: Core, job: Job, delay: float | None) -> float | None:
    """When ``job`` should run, in epoch seconds: its ``run_at``, or ``delay`` seconds from
    now; None when that is now or past (it is QUEUED at once)."""
    when = job.run_at
    if delay is not None:
        if when is not None:
            raise ValueError(f"job {job.id!r} has a run_at; give delay= or run_at, not both")
        if not delay:
            return None
        when = core.clock() + core.table.epoch_offset + delay
    if when is None or when <= core.clock() + core.table.epoch_offset:
        return None
    return when


def check_delay(delay: object) -> float | None:
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(f"delay must be a number of seconds, not {type(delay).__name__}")
    if not (0 <= delay <= MAX_DELAY):  # NaN fails both
        raise ValueError(f"delay must be from 0 to {MAX_DELAY:.0f} seconds, got {delay}")
    return float(delay)


def enqueue(
    core: Core,
    jobs: Sequence[Job],
    handler: Handler | None,
    block: bool,
    timeout: float | None,
    connection: object = None,
    delay: float | None = None,
) -> None:
    """Accept ``jobs``, all or none; see ``JobQueue.enqueue`` for what it raises."""
    if core.shared is not None and handler is None and not (
        connection is None and delay is None and _hold_here(core, jobs)
    ):
        if timeout is not None:
            check_timeout("timeout", timeout)  # checked, though a database is never full
        _insert_shared(core, core.shared, jobs, connection, delay)
        return
    if connection is not None:
        raise ValueError("connection= enqueues inside a PostgreSQL transaction: it needs a "
                         "queue in PostgreSQL (Config(database_url=...))")
    if len(jobs) == 1:
        job = jobs[0]
        if not isinstance(job, Job):
            raise TypeError(f"job must be a jobqueue.final.Job, not {type(job).__name__}")
    else:
        _count_batch(jobs)
    if timeout is not None:
        timeout = check_timeout("timeout", timeout)

    # Built before taking the mutex, which every producer and worker shares: the less work
    # done holding it, the less they queue up behind each other.
    now = core.clock()
    seq = core.seq
    entries = []
    records = []
    scheduled = 0
    for job in jobs:
        if job.run_at is None and delay is None:
            entry = Entry(job, handler, next(seq), now)
        else:
            when = run_at(core, job, delay)
            due = None if when is None else when - core.table.epoch_offset
            entry = Entry(job, handler, next(seq), now, when, due)
            scheduled += due is not None
        entries.append(entry)
        records.append(entry.record)
    needed = _needs(core, entries) if scheduled or len(jobs) > 1 else ((jobs[0].priority, 1),)
    store, table = core.store, core.table
    prepared = store.prepare(records)
    mutex = core.mutex
    if not mutex.acquire_now():  # (the hot path: see YieldingLock)
        mutex.acquire()
    try:
        now = _admit_locked(core, jobs, needed, handler, block, timeout, now, scheduled)
        if entries[0].record.seq <= core.newest_seq:
            # A producer that numbered its jobs later got here first. Stores tell an id's
            # lives apart by seq, so a new life must be numbered after every earlier one:
            # number these again, in the order of acceptance (rare: a race lost).
            for entry in entries:
                entry.record = entry.record._replace(seq=next(seq))
            prepared = store.prepare([entry.record for entry in entries])
        ticket = store.add(prepared)  # if it raises, nothing is held
        core.newest_seq = entries[-1].record.seq
        table.reserve(entries)
        if ticket is None:
            _accept_locked(core, entries, now)
            return
    finally:
        mutex.release()
    try:
        store.commit(ticket)
    except BaseException as exc:
        with core.mutex:
            now = core.clock()
            for entry in entries:
                table.transition(entry, GONE, now)
            for priority, count in needed:
                core.room_freed_locked(priority, count)
            core.changed_locked()
        if isinstance(exc, JobQueueError) or not isinstance(exc, Exception):
            raise
        raise StoreError(f"could not store the job: {exc!r}") from exc
    with core.mutex:
        _accept_locked(core, entries, core.clock())
        core.changed_locked()  # the claimer may wait for these ids to be settled


def _hold_here(core: Core, jobs: Sequence[Job]) -> bool:
    """Whether a shared store's new job should be held by this queue from the start, as
    in the other stores, sparing the round trip of a claim: one job, that a handler here
    runs, while this queue holds fewer than it would claim more at. Read without the
    mutex: a guess, which admission checks again. Otherwise the job goes to the database
    for whichever process claims it first."""
    if len(jobs) != 1:
        return False
    job = jobs[0]
    if not isinstance(job, Job) or job.run_at is not None or not core.config.num_workers or (
            core.config.handler is None and job.kind not in core.handlers):
        return False  # (a job for later waits in the database, for any process)
    return core.claim_wanted_locked()


def _insert_shared(
    core: Core, shared: SharedStore, jobs: Sequence[Job], connection: object,
    delay: float | None,
) -> None:
    """Jobs for a shared store: into the database, for whichever process claims them first.

    The database holds the backlog, so nothing here waits for room (``queue_size`` bounds
    what each process claims), and a kind no handler of this process runs is fine: another
    process may run it.
    """
    _count_batch(jobs)
    if core.closing:
        raise QueueClosed("cannot enqueue after close() has started")
    records = []
    for job in jobs:
        when = None if job.run_at is None and delay is None else run_at(core, job, delay)
        records.append(Entry(job, None, 0, 0.0, when, when).record)
    shared.insert(records, connection)


def _count_batch(jobs: Sequence[Job]) -> list[int]:
    """Check a batch's jobs and ids; return how many jobs of each priority it holds."""
    counts = [0, 0, 0]
    ids = set()
    for job in jobs:
        if not isinstance(job, Job):
            raise TypeError(f"job must be a jobqueue.final.Job, not {type(job).__name__}")
        if job.id in ids:
            raise DuplicateJob(f"job id {job.id!r} appears twice in one enqueue_many call")
        ids.add(job.id)
        counts[job.priority] += 1
    return counts


def _needs(core: Core, entries: Sequence[Entry]) -> _Needs:
    """How many jobs of each priority the entries need room for: the QUEUED ones (a
    SCHEDULED job takes none until it is due). Raises if they could never fit."""
    counts = [0, 0, 0]
    for entry in entries:
        if entry.due is None:
            counts[entry.job.priority] += 1
    limit = core.config.queue_size
    for priority in _PRIORITIES:
        if counts[priority] > limit:
            raise ValueError(
                f"enqueue_many got {counts[priority]} {priority.name} jobs, more than "
                f"queue_size={limit}: the batch could never fit"
            )
    return tuple((p, counts[p]) for p in _PRIORITIES if counts[p])


def _admit_locked(
    core: Core,
    jobs: Sequence[Job],
    needed: _Needs,
    handler: Handler | None,
    block: bool,
    timeout: float | None,
    now: float,
    scheduled: int = 0,
) -> float:
    """Wait until the jobs may be accepted; raise if they never will. Returns ``now``, or
    the time after waiting. ``scheduled`` of them are SCHEDULED: they need no room, but
    are refused at once past ``max_scheduled``, as room there frees only as they come due."""
    endtime = None if timeout is None else now + timeout
    limit = core.config.queue_size
    table = core.table
    waited = False
    try:
        while True:
            if core.closing:
                raise QueueClosed("cannot enqueue after close() has started")
            needs_handler = handler is None and core.config.handler is None
            for job in jobs:
                entry = table.get(job.id)
                if entry is not None:
                    state = describe_state(entry.state)
                    raise DuplicateJob(f"job {job.id!r} is already {state}")
                if needs_handler and job.kind not in core.handlers:
                    raise ValueError(
                        f"no handler for job {job.id!r}: kind {job.kind!r} is not in "
                        "handlers and the config has no default handler"
                    )
            if core.config.eager:
                return now  # no room to wait for: only this thread runs what waits
            if scheduled and table.scheduled() + scheduled > core.config.max_scheduled:
                raise QueueFull(
                    f"{table.scheduled()} jobs are scheduled already, and max_scheduled is "
                    f"{core.config.max_scheduled}: {scheduled} more would pass it"
                )
            for full, count in needed:
                crowded = table.occupied(full) + count > limit
                # Stored jobs go first, but not before a handler's: the claimer may fill the
                # room a handler waits for, and only a worker could free it again.
                if crowded or (
                    core.unclaimed[full] and core.shared is None and not on_worker(core)
                ):
                    break
            else:
                return now
            if not block:
                raise QueueFull(f"the {full.name} queue is full ({limit} jobs)")
            remaining = None
            if endtime is not None:
                remaining = endtime - core.clock()
                if remaining <= 0:
                    raise QueueFull(
                        f"the {full.name} queue stayed full ({limit} jobs) for {timeout} s"
                    )
            waited = True
            if on_worker(core):
                _wait_in_handler_locked(core, full, count, remaining)
            else:
                core.room[full].wait(count, remaining)
            now = core.clock()
    except BaseException:
        if waited:
            # The wake-up that reached this producer may have been the one meant for a
            # freed slot: pass it on to the next producer, which may fit.
            for priority, count in needed:
                if table.occupied(priority) < limit:
                    core.room_freed_locked(priority, count)
        raise


def _wait_in_handler_locked(
    core: Core, priority: Priority, count: int, timeout: float | None
) -> None:
    """A handler of this queue waits for room: only a worker taking a job frees it, so a
    wait without a timeout that would leave no worker free to take one would never end."""
    workers = core.config.num_workers
    if timeout is None and core.handlers_waiting_for_room + 1 >= workers:
        raise RuntimeError(
            f"enqueue() from a handler would wait for room in the full {priority.name} queue "
            f"that only a worker can free, and all {workers} workers would be waiting: use "
            "block=False and handle QueueFull, a larger queue_size, or more workers"
        )
    core.handlers_waiting_for_room += 1
    try:
        core.room[priority].wait(count, timeout)
    finally:
        core.handlers_waiting_for_room -= 1


def _accept_locked(core: Core, entries: Sequence[Entry], now: float) -> None:
    transition = core.table.transition
    ready = 0
    for entry in entries:
        if entry.due is None:
            transition(entry, QUEUED, now)
            ready += 1
        elif transition(entry, SCHEDULED, now):
            core.retry_due.notify()  # the earliest due time: the timer must wake
    if ready and core.idle_workers:
        core.ready_locked(ready)
