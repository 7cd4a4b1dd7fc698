"""Inspect and repair an LMDB store from outside the queue that uses it: the LMDB side of
:mod:`jobqueue.final.admin`, which scripts and the ``jobqueue`` command use.

- :class:`StoreReader` opens LMDB read-only and also reads the owner's write-ahead log and
  its ring of attempts started: it never writes and never blocks the owner (LMDB readers
  take no lock the writer waits for).
- :func:`requeue` and :func:`purge` each change the store in one LMDB transaction, all or
  nothing, and only while no process owns it (``StoreLocked`` names the owner otherwise).
  They take the store over the way a queue would, moving a dead owner's log into LMDB
  first, but start no flush thread and write no log of their own.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import lmdb

from jobqueue.errors import StoreError
from jobqueue.final._states import CANCELLABLE, Status
from jobqueue.final.stores.base import JobRecord, refuse_unrun
from jobqueue.final.stores.lmdb.attempt_ring import read_starts, started
from jobqueue.final.stores.lmdb.directory import (
    check_directory,
    disk_full_note,
    give_up_ownership,
    owner_pid,
    take_ownership,
)
from jobqueue.final.stores.lmdb.record_format import RecordError, decode
from jobqueue.final.stores.lmdb.replay import read_logged, replay_log
from jobqueue.final.stores.lmdb.tables import Tables, begin_read

__all__ = ["StoreReader", "owner_pid", "purge", "requeue"]

_T = TypeVar("_T")


def _check_store(path: str) -> None:
    check_directory(path, create=False)
    if not os.path.exists(os.path.join(path, "data.mdb")):
        raise StoreError(f"{path!r} is not a jobqueue store")


class StoreReader:
    """Read-only access to a store another process may own, for inspection.

    Raises ``StoreError`` naming the path if it is missing or not a jobqueue store. Jobs the
    owner has logged but not yet moved into LMDB (a few milliseconds' worth, or all of them
    after a crash) are read from the log, so what it shows is a snapshot of both.
    """

    #: An LMDB store holds one queue.
    queue = "default"

    def __init__(self, path: str) -> None:
        self.path = path
        self._summarised: tuple[Counter[tuple[Status, int]], float | None] | None = None
        _check_store(path)
        # With LMDB's lock file, whose reader table keeps the pages it reads alive should an
        # owner start and write meanwhile; a store file that is a symlink was refused.
        self._tables = Tables(path, readonly=True)
        try:
            self._logged = read_logged(self._tables)
            self._starts = read_starts(path)
        except lmdb.Error as exc:
            self._tables.close()
            raise StoreError(f"cannot read store {path!r}: {exc}") from None

    def records(self) -> Iterator[JobRecord]:
        """Every readable job record, in id order; unreadable ones are skipped."""
        logged = dict(self._logged)
        with begin_read(self._tables.env) as txn:
            for _, raw in txn.cursor(db=self._tables.jobs):
                try:
                    record = decode(raw)[0]
                except RecordError:
                    continue
                yield self._latest(logged.pop(record.id, record))
        for record in sorted(logged.values(), key=lambda record: record.id):
            yield self._latest(record)

    def _latest(self, record: JobRecord) -> JobRecord:
        """With an attempt started since, as the owner's ring of starts tells."""
        return started(record, self._starts) or record

    def get(self, job_id: str) -> JobRecord | None:
        """One job's record, or None; ``StoreError`` if it is stored but cannot be read."""
        if job_id in self._logged:
            return self._latest(self._logged[job_id])
        with begin_read(self._tables.env) as txn:
            try:
                found = self._tables.stored(txn, job_id)
            except RecordError as exc:
                raise StoreError(f"the record of job {job_id!r} cannot be read: {exc}") from None
        return None if found is None else self._latest(found[0])

    def counts(self) -> dict[tuple[Status, int], int]:
        """Jobs by status and priority."""
        return dict(self._summary()[0])

    def oldest_queued(self) -> float | None:
        """When the oldest QUEUED job was created (epoch seconds), or None."""
        return self._summary()[1]

    def _summary(self) -> tuple[Counter[tuple[Status, int]], float | None]:
        """Counts and the oldest QUEUED job, from one pass over the records, once per
        reader: both from the same snapshot."""
        if self._summarised is None:
            counts: Counter[tuple[Status, int]] = Counter()
            oldest: float | None = None
            for record in self.records():
                counts[record.status, int(record.priority)] += 1
                if record.status is Status.QUEUED and (
                        oldest is None or record.created_at < oldest):
                    oldest = record.created_at
            self._summarised = (counts, oldest)
        return self._summarised

    def select(self, status: str | None, priority: int | None, kind: str | None,
               limit: int | None, newest: bool = False) -> list[tuple[JobRecord, int]]:
        """Jobs matching (None: any), oldest first (``newest``: newest first), with their
        payload's size."""
        found = [record for record in self.records()
                 if (status is None or record.status.value == status)
                 and (priority is None or record.priority == priority)
                 and (kind is None or record.kind == kind)]
        found.sort(key=lambda r: (r.created_at, r.id), reverse=newest)
        return [(r, len(r.payload)) for r in (found if limit is None else found[:limit])]

    def queues(self) -> None:
        """None: an LMDB store is one queue, with no name."""
        return None

    def details(self) -> dict[str, Any]:
        """What only an LMDB store has: its size on disk, its map size, its owner's pid."""
        return {"disk_bytes": self.disk_bytes(), "map_size": self.map_size(),
                "owner_pid": self.owner_pid()}

    def map_size(self) -> int:
        with begin_read(self._tables.env) as txn:
            noted = self._tables.meta_int(txn, b"map_size")
        return noted or int(self._tables.env.info()["map_size"])

    def disk_bytes(self) -> int:
        return sum(
            os.path.getsize(os.path.join(self.path, name))
            for name in os.listdir(self.path)
            if name.endswith(".mdb")
        )

    def owner_pid(self) -> int | None:
        return owner_pid(self.path)

    def close(self) -> None:
        self._tables.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def _owned(path: str) -> Iterator[Tables]:
    """Take the store over (``StoreLocked`` if owned), with a dead owner's log in LMDB."""
    _check_store(path)
    lock_fd = take_ownership(path)
    try:
        tables = Tables(path, sync=True)
        try:
            replay_log(tables)
            yield tables
        finally:
            tables.close()
    finally:
        give_up_ownership(lock_fd)


def _transaction(tables: Tables, change: Callable[[lmdb.Transaction], _T]) -> _T:
    """Run ``change`` in one write transaction, growing the map if it is full."""
    while True:
        try:
            with tables.env.begin(write=True) as txn:  # an exception aborts it
                return change(txn)
        except lmdb.MapFullError:
            tables.env.set_mapsize(tables.env.info()["map_size"] * 2)
        except lmdb.Error as exc:
            note = disk_full_note(tables.path, exc)
            raise StoreError(f"cannot write to store {tables.path!r}: {exc}{note}") from None


def _stored(tables: Tables, txn: lmdb.Transaction, job_id: str) -> tuple[JobRecord, int]:
    try:
        found = tables.stored(txn, job_id)
    except RecordError as exc:
        raise StoreError(f"the record of job {job_id!r} cannot be read: {exc}") from None
    if found is None:
        raise KeyError(job_id)
    return found


def requeue(path: str, job_ids: Sequence[str] | None = None) -> list[str]:
    """Make FAILED jobs QUEUED again from attempt 0; ``None`` means every FAILED job.

    Returns the ids requeued. Raises ``KeyError`` for an unknown id and ``ValueError`` for one
    that is not FAILED, before anything is written; ``StoreLocked`` if a process owns the
    store.
    """
    with _owned(path) as tables:

        def change(txn: lmdb.Transaction) -> list[str]:
            if job_ids is None:
                chosen = [(r, _stored(tables, txn, r.id)[1]) for r in tables.dead_letters(txn)]
            else:
                chosen = [_stored(tables, txn, job_id) for job_id in job_ids]
                for record, _ in chosen:
                    if record.status is not Status.FAILED:
                        raise ValueError(f"job {record.id!r} is {record.status.value}, not failed")
            seq = tables.meta_int(txn, b"seq")
            for record, fseq in chosen:
                tables.delete(txn, record, fseq)
                seq += 1
                tables.put_live(txn, record._replace(
                    status=Status.QUEUED, attempts=0, last_error=None, started_at=None,
                    finished_at=None, due_at=None, seq=seq,
                ), new=True)
            tables.put_meta_int(txn, b"seq", seq)
            return [record.id for record, _ in chosen]

        return _transaction(tables, change)


def cancel(path: str, job_ids: Sequence[str]) -> list[str]:
    """Make QUEUED, SCHEDULED or RETRYING jobs CANCELLED; returns the ids cancelled.

    Raises ``KeyError`` for an unknown id and ``ValueError`` for a job in another status,
    before anything is written; ``StoreLocked`` if a process owns the store (it holds its
    jobs in memory, and would run them anyway).
    """
    with _owned(path) as tables:

        def change(txn: lmdb.Transaction) -> list[str]:
            chosen = [_stored(tables, txn, job_id) for job_id in dict.fromkeys(job_ids)]
            for record, _ in chosen:
                if record.status not in CANCELLABLE:
                    raise ValueError(f"job {record.id!r} is {record.status.value}: only queued, "
                                     "scheduled or retrying jobs can be cancelled")
            now = time.time()
            counters = (Tables.last_key(txn, tables.done), txn.stat(tables.done)["entries"],
                        tables.meta_int(txn, b"seq"))
            finished = [(record._replace(status=Status.CANCELLED, finished_at=now,
                                         due_at=None), False) for record, _ in chosen]
            # No pruning here (the retention is the queue's): the next start prunes.
            tables.write_batch(txn, finished, counters, retention=2**63)
            return [record.id for record, _ in chosen]

        return _transaction(tables, change)


def purge(
    path: str, job_ids: Sequence[str] | None = None, statuses: Collection[Status] = (),
    *, force: bool = False,
) -> list[str]:
    """Delete the given jobs, or every job in ``statuses``, with their index entries.

    Returns the ids deleted. Raises ``KeyError`` for an unknown id, and ``ValueError`` for
    a live job (queued, scheduled, processing, retrying) unless ``force``, before anything
    is written; ``StoreLocked`` if a process owns the store.
    """
    with _owned(path) as tables:

        def change(txn: lmdb.Transaction) -> list[str]:
            if job_ids is not None:
                chosen = [_stored(tables, txn, job_id) for job_id in job_ids]
            else:
                chosen = []
                for _, raw in txn.cursor(db=tables.jobs):
                    try:
                        record, fseq = decode(raw)
                    except RecordError:
                        continue
                    if record.status in statuses:
                        chosen.append((record, fseq))
            if not force:
                refuse_unrun([record for record, _ in chosen])
            for record, fseq in chosen:
                tables.delete(txn, record, fseq)
            return [record.id for record, _ in chosen]

        return _transaction(tables, change)
