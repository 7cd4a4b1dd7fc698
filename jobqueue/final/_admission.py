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
from jobqueue.final._context import running_in
from jobqueue.final._core import Core
from jobqueue.final._model import Handler, Job, check_timeout
from jobqueue.final._states import GONE, NEW, QUEUED, State
from jobqueue.final._table import Entry

__all__ = ["describe_state", "enqueue"]

_PRIORITIES = tuple(Priority)
#: How many jobs of each priority a call brings, for the priorities it brings any of.
_Needs = tuple[tuple[Priority, int], ...]


def describe_state(state: State) -> str:
    return "being enqueued" if state is NEW else str(state.value)


def enqueue(
    core: Core,
    jobs: Sequence[Job],
    handler: Handler | None,
    block: bool,
    timeout: float | None,
    connection: object = None,
) -> None:
    """Accept ``jobs``, all or none; see ``JobQueue.enqueue`` for what it raises."""
    if core.shared and handler is None and not (connection is None and _hold_here(core, jobs)):
        if timeout is not None:
            check_timeout("timeout", timeout)  # checked, though a database is never full
        _insert_shared(core, jobs, connection)
        return
    if connection is not None:
        raise ValueError("connection= enqueues inside a PostgreSQL transaction: it needs a "
                         "queue in PostgreSQL (Config(database_url=...))")
    if len(jobs) == 1:
        job = jobs[0]
        if not isinstance(job, Job):
            raise TypeError(f"job must be a jobqueue.final.Job, not {type(job).__name__}")
        needed: _Needs = ((job.priority, 1),)
    else:
        needed = _batch_needs(core, jobs)
    if timeout is not None:
        timeout = check_timeout("timeout", timeout)

    # Built before taking the mutex, which every producer and worker shares: the less work
    # done holding it, the less they queue up behind each other.
    now = core.clock()
    seq = core.seq
    entries = []
    records = []
    for job in jobs:
        entry = Entry(job, handler, next(seq), now)
        entries.append(entry)
        records.append(entry.record)
    store, table = core.store, core.table
    prepared = store.prepare(records)
    mutex = core.mutex
    if not mutex.acquire_now():  # (the hot path: see YieldingLock)
        mutex.acquire()
    try:
        now = _admit_locked(core, jobs, needed, handler, block, timeout, now)
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
    runs, while this queue has fewer queued than it would claim more at. Read without the
    mutex: a guess, which admission checks again. Otherwise the job goes to the database
    for whichever process claims it first."""
    if len(jobs) != 1:
        return False
    job = jobs[0]
    if not isinstance(job, Job) or (core.config.handler is None
                                    and job.kind not in core.handlers):
        return False
    table = core.table
    priority = job.priority
    return table.count(QUEUED, priority) + table.count(NEW, priority) < core.refill_below


def _insert_shared(core: Core, jobs: Sequence[Job], connection: object) -> None:
    """Jobs for a shared store: into the database, for whichever process claims them first.

    The database holds the backlog, so nothing here waits for room (``queue_size`` bounds
    what each process claims), and a kind no handler of this process runs is fine: another
    process may run it.
    """
    _count_batch(jobs)
    if core.closing:
        raise QueueClosed("cannot enqueue after close() has started")
    records = [Entry(job, None, 0, 0.0).record for job in jobs]
    core.store.insert(records, connection)  # type: ignore[attr-defined]


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


def _batch_needs(core: Core, jobs: Sequence[Job]) -> _Needs:
    """Check a batch; return how many jobs of each priority it holds."""
    counts = _count_batch(jobs)
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
) -> float:
    """Wait until the jobs may be accepted; raise if they never will. Returns ``now``, or
    the time after waiting."""
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
            for full, count in needed:
                crowded = table.occupied(full) + count > limit
                # Stored jobs go first, but not before a handler's: the claimer may fill the
                # room a handler waits for, and only a worker could free it again.
                if crowded or (
                    core.unclaimed[full] and not core.shared and running_in(core) is None
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
            if running_in(core) is not None:
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
    for entry in entries:
        transition(entry, QUEUED, now)
    if core.idle_workers:
        core.ready_locked(len(entries))
