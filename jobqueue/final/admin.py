"""Inspect and repair a queue from outside the processes that run it: one API for an LMDB
store (a directory) and a PostgreSQL queue (a database URL and a queue name).

The ``jobqueue`` command is built on this module alone; scripts can use it too::

    from jobqueue.final import Status, admin

    with admin.open_reader("./jobs.db") as reader:      # or "postgresql:///app", "emails"
        failed = [r.id for r in reader.records() if r.status is Status.FAILED]
    admin.requeue("./jobs.db", failed)

Reads never block the processes that run the queue: LMDB reads are read transactions (and
also read the owner's write-ahead log), PostgreSQL reads are plain queries. Repairs are all
or nothing, and refuse, before changing anything, what they cannot change safely:

- LMDB: only while no process owns the store (``StoreLocked`` names the owner): it holds
  its jobs in memory, and would run them anyway.
- PostgreSQL: while processes run, in one transaction that locks the rows it changes; a job
  a process holds under a live lease is refused (``ValueError`` names the process).

Each raises ``KeyError`` for an unknown id and ``ValueError`` for a job in the wrong status,
and ``StoreError`` if the store cannot be read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from jobqueue.final._states import Status
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.lmdb import admin as lmdb
from jobqueue.final.stores.lmdb.admin import StoreReader, owner_pid
from jobqueue.final.stores.postgres import admin as postgres
from jobqueue.final.stores.postgres.admin import QueueReader, is_database_url, mask

__all__ = ["QueueReader", "Reader", "StoreReader", "cancel", "is_database_url", "mask",
           "open_reader", "owner_pid", "purge", "requeue"]


_R = TypeVar("_R", bound="Reader")


class Reader(Protocol):
    """Read-only views of one queue, as :func:`open_reader` returns them."""

    #: The queue's name (an LMDB store's is "default": it holds one queue).
    queue: str

    def records(self) -> Iterator[JobRecord]:
        """Every job, with its payload and result."""

    def get(self, job_id: str) -> JobRecord | None:
        """One job, or None."""

    def counts(self) -> dict[tuple[Status, int], int]:
        """Jobs by status and priority."""

    def oldest_queued(self) -> float | None:
        """When the oldest QUEUED job was created (epoch seconds), or None."""

    def select(self, status: str | None, priority: int | None, kind: str | None,
               limit: int | None, newest: bool = False) -> list[tuple[JobRecord, int]]:
        """Jobs matching the filters (None: any), oldest first (``newest``: newest first),
        each with its payload's size (the record's payload may be left out: b"")."""

    def queues(self) -> dict[str, int] | None:
        """Every queue the store holds with its number of jobs; None for a store of one
        queue (LMDB)."""

    def details(self) -> dict[str, Any]:
        """What only this kind of store has (LMDB: disk and map size, owner; PostgreSQL:
        table size, processes, lapsed leases), for ``jobqueue stats``."""

    def close(self) -> None: ...

    def __enter__(self: _R) -> _R: ...

    def __exit__(self, *exc_info: object) -> None: ...


def open_reader(where: str, queue: str = "default") -> Reader:
    """A reader of the LMDB store in directory ``where``, or of queue ``queue`` in the
    PostgreSQL database ``where`` names (see :func:`is_database_url`). Raises StoreError
    if there is no such store, or it cannot be read."""
    if is_database_url(where):
        return QueueReader(where, queue)
    return StoreReader(where)


def requeue(where: str, job_ids: Sequence[str] | None = None, *,
            queue: str = "default") -> list[str]:
    """Make FAILED jobs QUEUED again from attempt 0; ``None`` means every FAILED job.
    Returns the ids requeued."""
    if is_database_url(where):
        return postgres.requeue(where, queue, job_ids)
    return lmdb.requeue(where, job_ids)


def cancel(where: str, job_ids: Sequence[str], *, queue: str = "default") -> list[str]:
    """Make QUEUED, SCHEDULED or RETRYING jobs CANCELLED; returns the ids cancelled."""
    if is_database_url(where):
        return postgres.cancel(where, queue, job_ids)
    return lmdb.cancel(where, job_ids)


def purge(where: str, job_ids: Sequence[str] | None = None,
          statuses: Collection[Status] = (), *, queue: str = "default",
          force: bool = False) -> list[str]:
    """Delete the given jobs, or every job in ``statuses``; returns the ids deleted. A live
    job (queued, scheduled, processing, retrying) is refused unless ``force``."""
    if is_database_url(where):
        return postgres.purge(where, queue, job_ids, statuses, force=force)
    return lmdb.purge(where, job_ids, statuses, force=force)
