"""Inspect and repair a queue kept in PostgreSQL while its processes run: the PostgreSQL
side of :mod:`jobqueue.final.admin`, on the store's own statements (``sql/queries.sql``).

Reads are plain queries. Repairs run while processes work, each in one transaction that
locks the rows it changes, in the order of their ids (claims and the processes' writes skip
locked rows, so no process takes one meanwhile, and no two repairs deadlock), and refuse,
before changing anything, a job a process holds under a live lease: it is running or about
to, and changing it from under its worker would run it twice or lose its outcome. A lapsed
claim (its process died, or stalled) is cleared by the repair that overrides it: the
process that held it can then neither start the job nor write an outcome over the repair.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from jobqueue.errors import StoreError
from jobqueue.final._states import CANCELLABLE, LIVE, Status
from jobqueue.final.stores.base import JobRecord, refuse_unrun
from jobqueue.final.stores.postgres.connections import connect, mask
from jobqueue.final.stores.postgres.listener import FOREIGN
from jobqueue.final.stores.postgres.queries import Q
from jobqueue.final.stores.postgres.rows import NCOLS, from_row, storable
from jobqueue.final.stores.postgres.schema import check_schema

__all__ = ["QueueReader", "cancel", "is_database_url", "mask", "purge", "requeue"]


#: A libpq ``key=value`` connection string starts with one of these keys.
_LIBPQ_KEY = re.compile(r"\s*(host|hostaddr|port|dbname|user|password|passfile|service|"
                        r"sslmode|connect_timeout|application_name|options)\s*=")


def is_database_url(text: str) -> bool:
    """True for what names a PostgreSQL database (a ``postgresql://`` URI, or a libpq
    ``key=value`` string as ``Config.database_url`` takes it) rather than an LMDB store
    directory. A path that exists is a directory, whatever its name."""
    if text.startswith(("postgresql://", "postgres://")):
        return True
    return _LIBPQ_KEY.match(text) is not None and not os.path.exists(text)


def _open(url: str) -> Any:
    conn = connect(url)  # (StoreError, with the way to install psycopg, if it is missing)
    try:
        check_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_queue(queue: str) -> None:
    if not storable(queue):
        raise StoreError(f"no queue can be named {queue!r}: not valid text")


class QueueReader:
    """Read-only views of one queue of a database. Raises ``StoreError`` if the database
    cannot be reached or holds no jobqueue tables."""

    def __init__(self, url: str, queue: str = "default") -> None:
        _check_queue(queue)
        self.url = url
        self.queue = queue
        self._conn = _open(url)

    def _all(self, name: str, **params: Any) -> list[Any]:
        rows: list[Any] = self._conn.execute(Q[name], {"queue": self.queue, **params}).fetchall()
        return rows

    def _one(self, name: str, **params: Any) -> Any:
        return self._conn.execute(Q[name], {"queue": self.queue, **params}).fetchone()[0]

    def records(self) -> Iterator[JobRecord]:
        """Every job of the queue, oldest first."""
        for row in self._conn.execute(Q["records"], {"queue": self.queue}):
            yield from_row(row)

    def get(self, job_id: str) -> JobRecord | None:
        """One job's record, or None."""
        if not storable(job_id):
            return None  # no job can have it
        row = self._conn.execute(Q["get"], {"queue": self.queue, "id": job_id}).fetchone()
        return None if row is None else from_row(row)

    def counts(self) -> dict[tuple[Status, int], int]:
        """Jobs by status and priority, counted by the database (no payload is read)."""
        return {(Status(status), priority): count
                for priority, status, count in self._all("counts")}

    def oldest_queued(self) -> float | None:
        """When the oldest QUEUED job was created (epoch seconds), or None."""
        oldest: float | None = self._one("oldest_queued")
        return oldest

    def select(self, status: str | None, priority: int | None, kind: str | None,
               limit: int | None, newest: bool = False) -> list[tuple[JobRecord, int]]:
        """Jobs matching (None: any), oldest first (``newest``: newest first), filtered and
        limited by the database, with their payload's size: the payloads themselves are not
        read (records carry b"")."""
        if kind is not None and not storable(kind):
            return []
        rows = self._all("select_jobs", status=status, priority=priority, kind=kind,
                         limit=limit, newest=newest)
        return [(from_row(row), row[NCOLS]) for row in rows]

    def processes(self) -> list[dict[str, Any]]:
        """The processes serving this queue, from their own heartbeats: each one's name,
        when it started, its last heartbeat, when its lease lapses (epoch seconds),
        whether that is still to come, and how many jobs it holds. A process that crashed
        stays listed, lapsed, for a day. A process too old to say it is alive is listed by
        the jobs it holds, with None for what it did not say."""
        listed = []
        if self._has_processes():
            listed = [{"owner": owner, "started_at": float(started),
                       "heartbeat_at": float(beat), "lease_until": float(until),
                       "alive": alive, "held": held}
                      for owner, started, beat, until, alive, held in self._all("processes")]
        owners = {process["owner"] for process in listed}
        for owner, held in self.holders().items():
            if owner not in owners:
                listed.append({"owner": owner, "started_at": None, "heartbeat_at": None,
                               "lease_until": None, "alive": True, "held": held})
        return listed

    def queues(self) -> dict[str, int]:
        """Every queue of the database with jobs or processes, and its number of jobs."""
        name = "queues_and_processes" if self._has_processes() else "queues"
        return dict(self._conn.execute(Q[name]).fetchall())

    def _has_processes(self) -> bool:
        return bool(self._conn.execute(Q["has_processes"]).fetchone()[0])

    def holders(self) -> dict[str, int]:
        """The processes holding jobs of this queue under a live lease, and how many each."""
        return dict(self._all("holders"))

    def lapsed(self) -> int:
        """Jobs whose holder stopped heartbeating: any process claims them next."""
        lapsed: int = self._one("lapsed")
        return lapsed

    def table_bytes(self) -> int:
        size: int = self._conn.execute(Q["table_bytes"]).fetchone()[0]
        return size

    def details(self) -> dict[str, Any]:
        """What only a database has: the queue's name, the table's size, the processes and
        the leases that lapsed."""
        return {"queue": self.queue, "table_bytes": self.table_bytes(),
                "processes": self.processes(), "lapsed_leases": self.lapsed()}

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> QueueReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _locked(conn: Any, queue: str, job_ids: Sequence[str]) -> list[JobRecord]:
    """The jobs, locked until the transaction ends; KeyError if one is unknown, ValueError
    if one is held by a process."""
    for job_id in job_ids:
        if not storable(job_id):
            raise KeyError(job_id)
    rows = conn.execute(Q["lock_jobs"], {"queue": queue, "ids": list(job_ids)}).fetchall()
    found = {row[0]: (from_row(row), row[NCOLS]) for row in rows}
    for job_id in job_ids:
        if job_id not in found:
            raise KeyError(job_id)
    chosen = [found[job_id] for job_id in dict.fromkeys(job_ids)]
    for record, holder in chosen:
        if holder is not None:
            raise ValueError(f"job {record.id!r} is {record.status.value} and held by process "
                             f"{holder}: it runs there, or is about to; changing it now would "
                             "run it twice or lose its outcome")
    return [record for record, _ in chosen]


def requeue(url: str, queue: str, job_ids: Sequence[str] | None = None) -> list[str]:
    """Make FAILED jobs QUEUED again from attempt 0, for any process to claim; ``None``
    means every FAILED job. One transaction; returns the ids requeued. Raises ``KeyError``
    for an unknown id and ``ValueError`` for one that is not FAILED (a job being processed
    among them), before anything is written."""
    _check_queue(queue)
    with _open(url) as conn, conn.transaction():
        if job_ids is None:
            job_ids = [row[0] for row in conn.execute(Q["failed_ids"], {"queue": queue})]
        chosen = _locked(conn, queue, job_ids)
        for record in chosen:
            if record.status is not Status.FAILED:
                raise ValueError(f"job {record.id!r} is {record.status.value}, not failed")
        ids = [record.id for record in chosen]
        conn.execute(Q["requeue"], {"queue": queue, "ids": ids, "tag": FOREIGN}).fetchall()
        return ids


def cancel(url: str, queue: str, job_ids: Sequence[str]) -> list[str]:
    """Make QUEUED, SCHEDULED or RETRYING jobs no process holds CANCELLED. One
    transaction; returns the ids cancelled. Raises ``KeyError`` for an unknown id and
    ``ValueError`` for a job in another status or one a process holds (it would run it
    anyway), before anything is written."""
    _check_queue(queue)
    with _open(url) as conn, conn.transaction():
        chosen = _locked(conn, queue, job_ids)
        for record in chosen:
            if record.status not in CANCELLABLE:
                raise ValueError(f"job {record.id!r} is {record.status.value}: only queued, "
                                 "scheduled or retrying jobs can be cancelled")
        ids = [record.id for record in chosen]
        conn.execute(Q["cancel"], {"queue": queue, "ids": ids, "tag": FOREIGN,
                                   "now": time.time()}).fetchall()
        return ids


def purge(
    url: str, queue: str, job_ids: Sequence[str] | None = None,
    statuses: Collection[Status] = (), *, force: bool = False,
) -> list[str]:
    """Delete the given jobs, or every job in ``statuses``. One transaction; returns the
    ids deleted. Raises ``KeyError`` for an unknown id, and ``ValueError`` for a job a
    process holds, or for a live job (queued, scheduled, retrying) unless ``force``, before
    anything is written. Jobs of ``statuses`` a process holds stay."""
    _check_queue(queue)
    with _open(url) as conn, conn.transaction():
        if job_ids is None:
            if not force and any(status in LIVE for status in statuses):
                raise ValueError("purging live jobs deletes them unrun (force=True, or "
                                 "--force, to do so)")
            return [row[0] for row in conn.execute(Q["purge"], {
                "queue": queue, "ids": None, "statuses": [s.value for s in statuses]})]
        chosen = _locked(conn, queue, job_ids)
        if not force:
            refuse_unrun(chosen)
        ids = [record.id for record in chosen]
        conn.execute(Q["purge"], {"queue": queue, "ids": ids, "statuses": None}).fetchall()
        return ids  # (all of them: locked above, and none held)
