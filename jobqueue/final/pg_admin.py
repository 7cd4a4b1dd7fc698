"""Inspect and repair a queue kept in PostgreSQL, while its processes run.

The ``jobqueue`` command uses this module for a ``postgresql://`` URL; scripts can too::

    from jobqueue.final import pg_admin

    with pg_admin.QueueReader("postgresql:///app", "emails") as reader:
        failed = [r.id for r in reader.records() if r.status is Status.FAILED]
    pg_admin.requeue("postgresql:///app", "emails", failed)

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
from jobqueue.final._pg_schema import CHANNEL, check_schema, connect, mask
from jobqueue.final._postgres import _COLUMNS, _NCOLS, FOREIGN, _record, _storable
from jobqueue.final._states import CANCELLABLE, LIVE, Status
from jobqueue.final._store import JobRecord

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


class QueueReader:
    """Read-only views of one queue of a database. Raises ``StoreError`` if the database
    cannot be reached or holds no jobqueue tables."""

    def __init__(self, url: str, queue: str = "default") -> None:
        _check_queue(queue)
        self.url = url
        self.queue = queue
        self._conn = _open(url)

    def records(self) -> Iterator[JobRecord]:
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM jobqueue_jobs WHERE queue = %s ORDER BY created_at, id",
            (self.queue,),
        )
        for row in rows:
            yield _record(row)

    def get(self, job_id: str) -> JobRecord | None:
        if not _storable(job_id):
            return None  # no job can have it
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM jobqueue_jobs WHERE queue = %s AND id = %s",
            (self.queue, job_id),
        ).fetchone()
        return None if row is None else _record(row)

    def counts(self) -> dict[tuple[Status, int], int]:
        """Jobs by status and priority, counted by the database (no payload is read)."""
        return {(Status(status), priority): count for status, priority, count in
                self._conn.execute(
                    "SELECT status, priority, count(*) FROM jobqueue_jobs WHERE queue = %s "
                    "GROUP BY 1, 2", (self.queue,)).fetchall()}

    def oldest_queued(self) -> float | None:
        return self._conn.execute(
            "SELECT min(created_at) FROM jobqueue_jobs WHERE queue = %s AND status = 'queued'",
            (self.queue,),
        ).fetchone()[0]

    def select(self, status: str | None, priority: int | None, kind: str | None,
               limit: int | None, newest: bool = False) -> list[tuple[JobRecord, int]]:
        """Jobs matching, oldest first (``newest``: newest first), filtered and limited by
        the database, with their payload's size: the payloads themselves are not read
        (records carry b"")."""
        if kind is not None and not _storable(kind):
            return []
        columns = (_COLUMNS.replace("payload", "''::bytea")
                   .replace("result, result_json", "NULL::bytea, false"))
        rows = self._conn.execute(
            f"SELECT {columns}, octet_length(payload) FROM jobqueue_jobs "
            "WHERE queue = %s AND (%s::text IS NULL OR status = %s) "
            "AND (%s::smallint IS NULL OR priority = %s) AND (%s::text IS NULL OR kind = %s) "
            f"ORDER BY created_at {'DESC' if newest else ''}, id {'DESC' if newest else ''} "
            "LIMIT %s",
            (self.queue, status, status, priority, priority, kind, kind, limit),
        ).fetchall()
        return [(_record(row), row[_NCOLS]) for row in rows]

    def processes(self) -> list[dict[str, Any]]:
        """The processes serving this queue, from their own heartbeats: each one's name,
        when it started, its last heartbeat, when its lease lapses (epoch seconds),
        whether that is still to come, and how many jobs it holds. A process that crashed
        stays listed, lapsed, for a day. (None listed where no process of a jobqueue that
        writes them has run yet.)"""
        if not self._has_processes():
            return []
        rows = self._conn.execute(
            "SELECT p.owner, extract(epoch FROM p.started_at), extract(epoch FROM "
            "p.heartbeat_at), extract(epoch FROM p.lease_until), p.lease_until > now(), "
            "(SELECT count(*) FROM jobqueue_jobs j WHERE j.queue = p.queue AND "
            "j.owner = p.owner) FROM jobqueue_processes p WHERE p.queue = %s "
            "ORDER BY p.started_at, p.owner", (self.queue,),
        ).fetchall()
        return [{"owner": owner, "started_at": float(started), "heartbeat_at": float(beat),
                 "lease_until": float(until), "alive": alive, "held": held}
                for owner, started, beat, until, alive, held in rows]

    def queues(self) -> dict[str, int]:
        """Every queue of the database with jobs or processes, and its number of jobs."""
        processes = ("UNION ALL SELECT queue, 0 FROM jobqueue_processes "
                     if self._has_processes() else "")
        return dict(self._conn.execute(
            "SELECT queue, sum(n)::bigint FROM (SELECT queue, count(*) AS n FROM "
            f"jobqueue_jobs GROUP BY queue {processes}) AS q GROUP BY queue ORDER BY queue"
        ).fetchall())

    def _has_processes(self) -> bool:
        return bool(self._conn.execute(
            "SELECT to_regclass('jobqueue_processes') IS NOT NULL").fetchone()[0])

    def holders(self) -> dict[str, int]:
        """The processes holding jobs of this queue under a live lease, and how many each."""
        return dict(self._conn.execute(
            "SELECT owner, count(*) FROM jobqueue_jobs WHERE queue = %s AND owner IS NOT NULL "
            "AND lease_until > now() GROUP BY owner ORDER BY owner", (self.queue,),
        ).fetchall())

    def lapsed(self) -> int:
        """Jobs whose holder stopped heartbeating: any process claims them next."""
        return self._conn.execute(
            "SELECT count(*) FROM jobqueue_jobs WHERE queue = %s AND owner IS NOT NULL "
            "AND lease_until <= now()", (self.queue,),
        ).fetchone()[0]

    def table_bytes(self) -> int:
        return self._conn.execute(
            "SELECT pg_total_relation_size('jobqueue_jobs')"
        ).fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> QueueReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _locked(conn: Any, queue: str, job_ids: Sequence[str]) -> list[tuple[JobRecord, str | None]]:
    """The jobs, locked until the transaction ends, with their holder; KeyError if one is
    unknown, ValueError if one is held by a process."""
    for job_id in job_ids:
        if not _storable(job_id):
            raise KeyError(job_id)
    rows = conn.execute(
        f"SELECT {_COLUMNS}, CASE WHEN lease_until > now() THEN owner END FROM jobqueue_jobs "
        "WHERE queue = %s AND id = ANY(%s) ORDER BY id FOR UPDATE", (queue, list(job_ids)),
    ).fetchall()
    found = {row[0]: (_record(row), row[_NCOLS]) for row in rows}
    for job_id in job_ids:
        if job_id not in found:
            raise KeyError(job_id)
    chosen = [found[job_id] for job_id in dict.fromkeys(job_ids)]
    for record, holder in chosen:
        if holder is not None:
            raise ValueError(f"job {record.id!r} is {record.status.value} and held by process "
                             f"{holder}: it runs there, or is about to; changing it now would "
                             "run it twice or lose its outcome")
    return chosen


def _check_queue(queue: str) -> None:
    if not _storable(queue):
        raise StoreError(f"no queue can be named {queue!r}: not valid text")


def requeue(url: str, queue: str, job_ids: Sequence[str] | None = None) -> list[str]:
    """Make FAILED jobs QUEUED again from attempt 0, for any process to claim; ``None``
    means every FAILED job. One transaction; returns the ids requeued. Raises ``KeyError``
    for an unknown id and ``ValueError`` for one that is not FAILED (a job being processed
    among them), before anything is written."""
    _check_queue(queue)
    with _open(url) as conn, conn.transaction():
        if job_ids is None:
            job_ids = [row[0] for row in conn.execute(
                "SELECT id FROM jobqueue_jobs WHERE queue = %s AND status = 'failed' "
                "ORDER BY id FOR UPDATE", (queue,),
            ).fetchall()]
        chosen = _locked(conn, queue, job_ids)
        for record, _ in chosen:
            if record.status is not Status.FAILED:
                raise ValueError(f"job {record.id!r} is {record.status.value}, not failed")
        ids = [record.id for record, _ in chosen]
        rows = conn.execute(
            "UPDATE jobqueue_jobs SET status = 'queued', attempts = 0, last_error = NULL, "
            "started_at = NULL, finished_at = NULL, due_at = NULL, owner = NULL, "
            "lease_id = NULL, lease_until = NULL, seq = nextval('jobqueue_seq') "
            "WHERE queue = %s AND id = ANY(%s) RETURNING priority", (queue, ids),
        ).fetchall()
        for priority in {row[0] for row in rows}:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{priority}{FOREIGN}{queue}"))
        return ids


def cancel(url: str, queue: str, job_ids: Sequence[str]) -> list[str]:
    """Make QUEUED, SCHEDULED or RETRYING jobs no process holds CANCELLED. One
    transaction; returns the ids cancelled. Raises ``KeyError`` for an unknown id and
    ``ValueError`` for a job in another status or one a process holds (it would run it
    anyway), before anything is written."""
    _check_queue(queue)
    with _open(url) as conn, conn.transaction():
        chosen = _locked(conn, queue, job_ids)
        for record, _ in chosen:
            if record.status not in CANCELLABLE:
                raise ValueError(f"job {record.id!r} is {record.status.value}: only queued, "
                                 "scheduled or retrying jobs can be cancelled")
        ids = [record.id for record, _ in chosen]
        conn.execute(
            "UPDATE jobqueue_jobs SET status = 'cancelled', finished_at = %s, due_at = NULL, "
            "owner = NULL, lease_id = NULL, lease_until = NULL "
            "WHERE queue = %s AND id = ANY(%s)", (time.time(), queue, ids),
        )
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"d{FOREIGN}{queue}"))
        return ids


def purge(
    url: str, queue: str, job_ids: Sequence[str] | None = None,
    statuses: Collection[Status] = (), *, force: bool = False,
) -> list[str]:
    """Delete the given jobs, or every job in ``statuses``. One transaction; returns the
    ids deleted. Raises ``KeyError`` for an unknown id, and ``ValueError`` for a job a
    process holds, or for a live job (queued, scheduled, retrying) unless ``force``, before
    anything is written."""
    _check_queue(queue)
    with _open(url) as conn, conn.transaction():
        if job_ids is None:
            if not force and any(s in LIVE for s in statuses):
                raise ValueError("purging live jobs deletes them unrun (force=True, or "
                                 "--force, to do so)")
            # Rows a process holds stay: it runs them, or writes their outcome.
            return [row[0] for row in conn.execute(
                "DELETE FROM jobqueue_jobs WHERE ctid = ANY(ARRAY(SELECT ctid FROM "
                "jobqueue_jobs WHERE queue = %s AND status = ANY(%s) AND (owner IS NULL OR "
                "lease_until <= now()) ORDER BY id FOR UPDATE)) RETURNING id",
                (queue, [s.value for s in statuses]),
            ).fetchall()]
        chosen = _locked(conn, queue, job_ids)
        if not force:
            live = [record for record, _ in chosen if record.status in LIVE]
            if live:
                shown = ", ".join(f"{r.id!r} ({r.status.value})" for r in live[:5])
                raise ValueError(f"{len(live)} of these jobs are live: {shown}; purging "
                                 "deletes them unrun (force=True, or --force, to do so)")
        ids = [record.id for record, _ in chosen]
        conn.execute("DELETE FROM jobqueue_jobs WHERE queue = %s AND id = ANY(%s)", (queue, ids))
        return ids
