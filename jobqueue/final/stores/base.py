"""The contract between the queue and where its jobs are kept; no store is named here.

A queue holds in memory the jobs it runs, and tells a :class:`Store` every move of the state
machine (:mod:`jobqueue.final._states`); it asks the store for jobs it does not hold (a
restart's backlog) and for finished ones (status, dead letters). As huey's storage back ends
sit behind one small interface, the memory, LMDB and PostgreSQL stores obey the same contract,
and one test suite (``tests/test_store_contract.py``) runs against each. This module imports
no store, and no store imports the queue (``tests/test_layers.py``).

Lock order: the queue calls the first group of methods below with its mutex held, so a store
takes only its own locks after it, never calls the queue, and never blocks in them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from jobqueue._priority import Priority
from jobqueue.final._model import Job, JobInfo
from jobqueue.final._states import LIVE, Status

__all__ = ["JobRecord", "JsonResult", "LeaseLost", "QueueStats", "SharedStore", "Store",
           "refuse_unrun"]


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

    Shared stores (the PostgreSQL store) serve many processes at once, and number jobs
    themselves (``seq``). Such a store says so through ``shared``, which gives the
    :class:`SharedStore` capabilities the queue then uses; ``shared`` is None for a store of
    one process. (As River's drivers declare ``SupportsListener()``: the queue never reaches
    for a method the contract does not name.)
    """

    @property
    def persistent(self) -> bool:
        """True when jobs left in the store by close() are there for the next queue."""

    @property
    def shared(self) -> SharedStore | None:
        """This store as a :class:`SharedStore` when other processes share it, else None."""

    @property
    def running(self) -> Callable[[JobRecord], int | None] | None:
        """Told of an attempt about to run; or None (see above)."""

    @property
    def ran(self) -> Callable[[int], None] | None:
        """Told of an attempt's handler returning; or None (see above)."""

    @property
    def confirm(self) -> Callable[[str, float | None], bool] | None:
        """Waits until a move is kept as a caller is told (see above); or None."""

    def last_seq(self) -> int:
        """The highest ``seq`` the store holds, so new jobs sort after stored ones."""

    def prepare(self, records: Sequence[JobRecord]) -> object:
        """Work on new jobs that changes nothing, before the queue's mutex (see above)."""

    def add(self, prepared: object) -> object | None:
        """Hold the prepared jobs from now on, under the mutex: None, or a ticket."""

    def commit(self, ticket: object) -> None:
        """Finish an ``add`` that returned a ticket, after the mutex."""

    def started(self, record: JobRecord) -> None:
        """A held job's attempt started (PROCESSING), under the mutex."""

    def retrying(self, record: JobRecord) -> None:
        """A held job's attempt failed and it waits to run again, under the mutex."""

    def finished(self, record: JobRecord) -> None:
        """A held job finished (COMPLETED, FAILED, CANCELLED), under the mutex."""

    def released(self, record: JobRecord) -> None:
        """A held job is handed back unheld, for a claim, under the mutex."""

    def claim(
        self, priority: Priority, limit: int, kinds: Collection[str] | None
    ) -> list[JobRecord]:
        """Up to ``limit`` unheld live jobs of ``priority`` and ``kinds``, now held."""

    def get(self, job_id: str) -> JobRecord | None:
        """The latest record of the job, or None."""

    def dead_letters(self) -> list[JobRecord]:
        """The FAILED records kept, oldest first."""

    def close(self, timeout: float | None = None) -> None:
        """Write what was told and give the store up; twice is harmless."""


class SharedStore(Store, Protocol):
    """What a queue asks of a store that many processes share, beyond :class:`Store`.

    New jobs go in unheld, for any process to claim; the whole queue's state is the
    store's, so requeue, cancel, stats and "is anything left" are asked of it. Its clock
    (``now``, given when it is opened) is the queue's, against which SCHEDULED jobs it
    keeps unheld come due.
    """

    #: The claimer looks for jobs at least this often (seconds), in case a notice was lost.
    poll_interval: float
    @property
    def confirm(self) -> Callable[[str, float | None], bool]:
        """Waits until a move is committed, where every process sees it (see Store)."""

    def listen(
        self,
        on_ready: Callable[[Iterable[Priority] | None], None],
        on_change: Callable[[], None],
    ) -> None:
        """Start hearing other processes: ``on_ready(priorities)`` when jobs of those
        priorities (None: any) may be claimable, ``on_change()`` when jobs finished.
        Raises StoreError if it cannot."""

    def insert(
        self, records: Sequence[JobRecord], connection: Any = None, *, revive: bool = True
    ) -> None:
        """Add jobs unheld, all or none, for any process to claim; in ``connection``'s
        transaction when given. ``revive=False``: an id kept finished is a duplicate too.
        Raises DuplicateJob for a live id, StoreError if it cannot."""

    def has_live(self, due_only: bool = False) -> bool:
        """True while any process has work in the queue (``due_only``: due work)."""

    def requeue(self, job_id: str) -> None:
        """Make a FAILED job QUEUED again from attempt 0, once however many ask. Raises
        KeyError for an unknown id, ValueError for a job that is not FAILED."""

    def cancel(self, job_id: str) -> bool:
        """Cancel a job no process holds under a live lease; False if there is none such."""

    def stats(self) -> QueueStats:
        """The whole queue's jobs by status and priority, and the processes holding some."""


def refuse_unrun(records: Sequence[JobRecord]) -> None:
    """What every store's purge refuses without ``force``: raise ValueError naming the live
    jobs among ``records`` (queued, scheduled, processing, retrying), which it would delete
    unrun."""
    live = [record for record in records if record.status in LIVE]
    if live:
        shown = ", ".join(f"{r.id!r} ({r.status.value})" for r in live[:5])
        more = f" and {len(live) - 5} more" if len(live) > 5 else ""
        raise ValueError(f"{len(live)} of these jobs are live: {shown}{more}; purging deletes "
                         "them unrun (force=True, or --force, to do so)")
