"""The seam between the queue and where its jobs are kept: one contract, two stores.

A queue holds in memory the jobs it runs, and tells a :class:`Store` every move of the state
machine (:mod:`jobqueue.final._states`); it asks the store for jobs it does not hold (a
restart's backlog) and for finished ones (status, dead letters). As huey's storage back ends
sit behind one small interface, :class:`MemoryStore` and the LMDB store obey the same contract,
and one test suite (``tests/test_store_contract.py``) runs against each.

Lock order: the queue calls the first group of methods below with its mutex held, so a store
takes only its own locks after it, never calls the queue, and never blocks in them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from jobqueue._priority import Priority
from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final._model import Config, Job, JobInfo
from jobqueue.final._states import Status

__all__ = [
    "JobRecord", "JsonResult", "LeaseLost", "MemoryStore", "QueueStats", "Store", "open_store",
]


class JsonResult(bytes):
    """A task's result: JSON text, which ``JobQueue.result()`` decodes. Every store keeps the
    mark with the bytes, so that any process reading the job knows, whether or not it
    declared the task; a plain handler's bytes are returned as they are."""

    __slots__ = ()


class JobRecord(NamedTuple):
    """Everything a store keeps about a job. Times are epoch seconds or ``None``.

    ``seq`` orders jobs of one priority by arrival; ``due_at`` is when a RETRYING or
    SCHEDULED job runs next. A COMPLETED record carries no payload (nothing will run it
    again) and, in ``result``, what its handler returned, if bytes (a :class:`JsonResult`
    for a task).
    """

    id: str
    payload: bytes
    priority: Priority
    kind: str
    max_retries: int | None
    created_at: float
    status: Status
    attempts: int
    last_error: str | None
    started_at: float | None
    finished_at: float | None
    due_at: float | None
    seq: int
    result: bytes | None = None

    def job(self) -> Job:
        """The job this record keeps, to run again."""
        return Job(self.id, self.payload, self.priority, self.kind, self.max_retries,
                   self.created_at)

    def info(self) -> JobInfo:
        return JobInfo(
            self.id,
            self.status,
            self.priority,
            self.kind,
            self.attempts,
            self.last_error,
            self.created_at,
            self.started_at,
            self.finished_at,
            self.due_at,
            self.result,
        )


@dataclass(frozen=True)
class QueueStats:
    """A whole queue's jobs by status, as its store keeps them (finished ones within the
    retention); ``processes`` is how many processes hold jobs of it now."""

    queued: int
    processing: int
    retrying: int
    completed: int
    failed: int
    per_priority: Mapping[Priority, Mapping[Status, int]]
    processes: int
    scheduled: int = 0
    cancelled: int = 0

    @classmethod
    def of(
        cls, counts: Mapping[Status, int], per_priority: Mapping[Priority, Mapping[Status, int]],
        processes: int,
    ) -> QueueStats:
        return cls(counts[Status.QUEUED], counts[Status.PROCESSING], counts[Status.RETRYING],
                   counts[Status.COMPLETED], counts[Status.FAILED], per_priority, processes,
                   counts.get(Status.SCHEDULED, 0), counts.get(Status.CANCELLED, 0))

    def __str__(self) -> str:
        """A few readable lines, for ``print(jq.queue_stats())``; ``repr`` has every field."""
        names = ("queued", "scheduled", "processing", "retrying", "completed", "failed",
                 "cancelled")
        lines = ["  ".join(f"{name} {getattr(self, name):,}" for name in names)
                 + f"  processes holding jobs {self.processes}"]
        for priority, counts in self.per_priority.items():
            lines.append(f"{priority.name.lower():<7}" + "  ".join(
                f"{name} {counts.get(Status(name), 0):,}" for name in names))
        return "\n".join(lines)


class LeaseLost(Exception):
    """From a shared store's ``running``: this process may not run the job, and forgets it.
    Another process took it over (this one held it past its lease), or the database could
    not confirm this one's lease in time: the message says which."""


class Store(Protocol):
    """What a queue needs from where its jobs are kept.

    New jobs take up to three steps, so that the queue's mutex is held for the least work:

    - ``prepare(records)``, before the mutex: work that changes nothing (encoding, say).
    - ``add(prepared)``, under the mutex: the jobs are held by this queue from now on.
      Returns None once they are as durable as the store promises, or a ticket;
    - ``commit(ticket)``, after the mutex: finishes what ``add`` could not do without
      blocking (a disk flush, a check against stored jobs); the jobs exist once it returns.

      If ``add`` or ``commit`` raises (``DuplicateJob`` for an id live in the store, say in a
      backlog not yet claimed; ``StoreError`` when it cannot keep them), the store keeps no
      trace of any of the records.

    Called under the queue's mutex, one at a time, and so never blocking: ``add``, and
    ``started``, ``retrying``, ``finished``, ``released``: a held job moved (see ``MOVES``).
    These four may be batched and written later, in call order: losing them in a crash only
    runs a job again, which at-least-once allows. ``released`` hands a job back, unheld.

    Called by a worker without the mutex, by several workers at once: ``running(record)``,
    just before a handler runs the attempt ``record`` (PROCESSING), returns a ticket, and
    ``ran(ticket)`` as soon as the handler has returned or raised. The store may keep them
    where a process that dies leaves them: the LMDB store counts an attempt its process died
    in as failed at the next start, and one whose handler had returned as merely
    interrupted. Both are None for a store with no use for them (memory pays nothing).
    A ticket of None needs no ``ran``. A shared store's ``running`` blocks until the start
    is committed under this process's lease, and raises ``LeaseLost`` if another process
    took the job over or the lease cannot be confirmed: the worker then forgets the job
    instead of running it.

    ``confirm(job_id, timeout)``, or None when a store needs no such step: blocks until the
    latest move told of the job is kept as the store promises a caller (a shared store: in
    a committed transaction, which every process sees; LMDB: a cancel in the log, flushed
    with ``fsync``); returns False if the store refused it (another process holds the job).
    The queue calls it, without the mutex, before it tells anyone of a move: ``cancel()``
    before it returns, and in a shared store ``wait()``, ``result()`` and hooks.

    Called from any thread, free to block:

    - ``claim(priority, limit, kinds)``: up to ``limit`` live jobs of ``priority`` that no
      queue holds, whose kind is in ``kinds`` (None: any), in arrival order; this queue holds
      them from now on. Fewer than ``limit`` means none are left for now.
    - ``get(job_id)``: the latest record, reflecting every call so far; ``dead_letters()``:
      the FAILED records kept, oldest first. Finished records are kept up to a retention.
    - ``close(timeout)``: write what was told, give the store up. Twice is harmless.

    The queue never assumes it is the store's only writer: ids it does not hold are the
    store's to check, and jobs it did not add reach it only through ``claim``.

    Shared stores (``shared``; the PostgreSQL store) serve many processes at once, and
    number jobs themselves (``seq``). The queue puts new jobs into them unheld, with
    ``insert(records, connection)``, for any process to claim, and asks them what only the
    whole queue knows: ``has_live()``, ``requeue(id)``, ``cancel(id)``, ``stats()``.
    ``listen(on_ready, on_change)`` tells the queue when another process added or finished
    jobs, and the claimer looks again every ``poll_interval`` seconds in case a notice was
    lost. Such a store keeps SCHEDULED jobs unheld and hands them out once due by ``now()``,
    which the queue sets to its own clock.
    """

    #: True when jobs left in the store by close() are there for the next queue to claim.
    persistent: bool
    #: True when other processes share the store (see "Shared stores" above).
    shared: bool

    #: Told of an attempt about to run, and of its handler returning; or None (see above).
    running: Callable[[JobRecord], int | None] | None
    ran: Callable[[int], None] | None
    #: Waits until a move is kept as a caller is told (see above); or None.
    confirm: Callable[[str, float | None], bool] | None

    def last_seq(self) -> int:
        """The highest ``seq`` the store holds, so new jobs sort after stored ones."""

    def prepare(self, records: Sequence[JobRecord]) -> object: ...

    def add(self, prepared: object) -> object | None: ...

    def commit(self, ticket: object) -> None: ...

    def started(self, record: JobRecord) -> None: ...

    def retrying(self, record: JobRecord) -> None: ...

    def finished(self, record: JobRecord) -> None: ...

    def released(self, record: JobRecord) -> None: ...

    def claim(
        self, priority: Priority, limit: int, kinds: Collection[str] | None
    ) -> list[JobRecord]: ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def dead_letters(self) -> list[JobRecord]: ...

    def close(self, timeout: float | None = None) -> None: ...


# Finished records are kept as plain tuples of plain values: the garbage collector stops
# scanning a tuple once it finds it holds nothing it tracks, and enum members are tracked
# (as are NamedTuples). Up to 100,000 retained records otherwise cost every full collection.
_PLAIN_STATUS = {status: status.value for status in Status}
_STATUS = {status.value: status for status in Status}
_PRIORITIES = tuple(Priority)


def _from_plain(kept: tuple) -> JobRecord:
    (job_id, payload, priority, kind, max_retries, created_at, status, attempts, last_error,
     started_at, finished_at, due_at, seq, result, json_result) = kept
    return JobRecord(job_id, payload, _PRIORITIES[priority], kind, max_retries, created_at,
                     _STATUS[status], attempts, last_error, started_at, finished_at, due_at, seq,
                     JsonResult(result) if json_result else result)


class MemoryStore:
    """The :class:`Store` contract in memory: nothing survives the process.

    Keeps every live job it was told of, the newest ``retention`` finished ones, and the jobs
    ``released`` back to it until they are claimed again.
    """

    persistent = False
    shared = False
    running = ran = None  # nothing in memory outlives a process that dies in a handler
    confirm = None  # a move told is as kept as memory keeps anything

    def __init__(self, retention: int) -> None:
        self._retention = retention
        # No lock: the calls that change these fields come one at a time, under the queue's
        # mutex (see Store). The others read them, or (claim) take from _unheld, each with
        # single dict operations, which the GIL makes atomic. A lock here cost 6 % of the
        # queue's instructions per job.
        self._live: dict[str, JobRecord] = {}  # the latest record of each live job
        # Finished jobs, oldest first, as plain tuples (see _from_plain): up to ``retention``.
        self._finished: OrderedDict[str, tuple] = OrderedDict()
        self._unheld: dict[str, JobRecord] = {}  # released, waiting for a claim
        self._last_seq = 0
        self._closed = False

    def last_seq(self) -> int:
        return self._last_seq

    def prepare(self, records: Sequence[JobRecord]) -> Sequence[JobRecord]:
        return records

    def add(self, prepared: object) -> None:
        records: Sequence[JobRecord] = prepared  # type: ignore[assignment]
        if self._closed:
            raise StoreError("the memory store is closed")
        unheld = self._unheld
        if unheld:
            for record in records:
                if record.id in unheld:
                    raise DuplicateJob(f"job {record.id!r} is already queued")
        live, finished = self._live, self._finished
        for record in records:
            live[record.id] = record
            finished.pop(record.id, None)  # a finished id starts a new life
            if record.seq > self._last_seq:
                self._last_seq = record.seq

    def commit(self, ticket: object) -> None:
        raise ValueError("MemoryStore.add() never returns a ticket")

    def started(self, record: JobRecord) -> None:
        self._live[record.id] = record

    retrying = started

    def finished(self, record: JobRecord) -> None:
        (job_id, payload, priority, kind, max_retries, created_at, status, attempts, last_error,
         started_at, finished_at, due_at, seq, result) = record
        finished = self._finished
        json_result = type(result) is JsonResult  # (a class the collector tracks)
        finished[job_id] = (  # plain values: see _from_plain
            job_id, payload, int(priority), kind, max_retries, created_at, _PLAIN_STATUS[status],
            attempts, last_error, started_at, finished_at, due_at, seq,
            bytes(result) if json_result else result, json_result,
        )
        self._live.pop(job_id, None)  # after: get() without the mutex finds one or the other
        if len(finished) > self._retention:
            finished.popitem(last=False)

    def released(self, record: JobRecord) -> None:
        self._live[record.id] = record
        self._unheld[record.id] = record

    def claim(
        self, priority: Priority, limit: int, kinds: Collection[str] | None
    ) -> list[JobRecord]:
        if self._closed:
            raise StoreError("the memory store is closed")
        chosen = sorted(
            (r for r in list(self._unheld.values())
             if r.priority is priority and (kinds is None or r.kind in kinds)),
            key=lambda r: r.seq,
        )[:limit]
        for record in chosen:
            del self._unheld[record.id]
        return chosen

    def get(self, job_id: str) -> JobRecord | None:
        record = self._live.get(job_id)
        if record is not None:
            return record
        kept = self._finished.get(job_id)
        return None if kept is None else _from_plain(kept)

    def dead_letters(self) -> list[JobRecord]:
        failed = _PLAIN_STATUS[Status.FAILED]
        return [_from_plain(kept) for kept in list(self._finished.values()) if kept[6] == failed]

    def close(self, timeout: float | None = None) -> None:
        self._closed = True


def open_store(config: Config) -> Store:
    """The store a config asks for: PostgreSQL at ``database_url``, LMDB at
    ``persist_path``, else memory."""
    if config.database_url is not None:
        from jobqueue.final._postgres import PostgresStore

        return PostgresStore(
            config.database_url, queue=config.queue_name, fsync=config.fsync,
            retention=config.status_retention, lease=config.lease,
        )
    if config.persist_path is None:
        return MemoryStore(config.status_retention)
    from jobqueue.final._lmdb import LmdbStore  # only persistent queues pay for the import

    return LmdbStore(
        os.fspath(config.persist_path), fsync=config.fsync, retention=config.status_retention
    )
