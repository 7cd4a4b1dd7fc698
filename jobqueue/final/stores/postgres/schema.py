"""The PostgreSQL store's tables, made on first use and upgraded in place.

One table holds the jobs of every queue in a database, one row per job id and queue name::

    jobqueue_jobs    (queue, id) primary key; the job, its status, its result (result_json:
                     a task's, in JSON), and who holds it: owner (a process's name),
                     lease_id (one claim of the job, from the sequence jobqueue_lease_ids),
                     lease_until (when the claim lapses)
    jobqueue_meta    key/value: schema_version
    jobqueue_processes  owner primary key: every process serving a queue, its queue, when
                     it started, its last heartbeat and when its lease lapses (for people:
                     ``jobqueue stats``; nothing decides anything by it, so it came
                     without a new schema version, made by the first process that knows it)

    jobqueue_jobs_ready     (queue, priority, seq) of live jobs no process holds: claims
    jobqueue_jobs_leases    (queue, lease_until) of held jobs: heartbeats, lapsed leases
    jobqueue_jobs_finished  (queue, finished_at) of finished jobs: retention, dead letters
    jobqueue_jobs_scheduled (queue, due_at) of SCHEDULED jobs no process holds: due claims

Creating them is idempotent and serialised by an advisory lock, so processes that start at
once agree; a database made by a newer jobqueue (a higher schema version) is refused, since
this code cannot know what the newer one changed. An older one is upgraded in place by the
first queue that opens it, by the files of ``sql/migrations`` from its version on.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from jobqueue.errors import StoreError
from jobqueue.final.stores.postgres.connections import psycopg_module
from jobqueue.final.stores.postgres.queries import MIGRATIONS, PROCESSES, SCHEMA, SCHEMA_VERSION, Q
from jobqueue.final.stores.postgres.rows import first_line

__all__ = ["SCHEMA_VERSION", "check_schema", "create_schema"]

logger = logging.getLogger("jobqueue")


def create_schema(conn: Any) -> None:
    """Make the tables if they are missing, or upgrade them; raise StoreError if the
    database is newer than this code."""
    psycopg = psycopg_module()
    try:
        with conn.transaction():
            conn.execute(Q["schema_lock"])
            # Made already: read the version only. CREATE INDEX IF NOT EXISTS would lock the
            # table against every writer, and wait for a stopped process's open transaction.
            if conn.execute(Q["schema_missing"]).fetchone()[0]:
                conn.execute(SCHEMA)
                conn.execute(PROCESSES)
            row = conn.execute(Q["schema_version"]).fetchone()
            if row is None:
                conn.execute(Q["set_schema_version"], {"version": str(SCHEMA_VERSION)})
            elif _version(row[0]) < SCHEMA_VERSION:
                version = _version(row[0])
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    conn.execute(MIGRATIONS[step])
                conn.execute(Q["set_schema_version"], {"version": str(SCHEMA_VERSION)})
                logger.info("upgraded the jobqueue tables from schema version %d to %d",
                            version, SCHEMA_VERSION)
            elif _version(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"the database's jobqueue schema is version {row[0]}, newer than this "
                    f"jobqueue knows ({SCHEMA_VERSION}): upgrade jobqueue to use it"
                )
            # The processes' table came later without a new version: nothing depends on it
            # (processes that do not know it run on, and one that cannot make it too).
            if conn.execute(Q["processes_missing"]).fetchone()[0]:
                with contextlib.suppress(psycopg.Error), conn.transaction():  # (a savepoint)
                    conn.execute(PROCESSES)
    except psycopg.Error as exc:
        raise StoreError(f"cannot create the jobqueue tables: {first_line(exc)}") from exc


def _version(text: str) -> int:
    try:
        version = int(text)
    except ValueError:
        version = 0
    if version < 1:  # (every version from 1 on has its migrations)
        raise StoreError(f"the database's jobqueue schema version {text!r} is not a version "
                         "this jobqueue can read (jobqueue_meta was changed by hand?)")
    return version


def check_schema(conn: Any) -> None:
    """Raise StoreError unless the database holds jobqueue tables this code can read."""
    if conn.execute(Q["schema_missing"]).fetchone()[0]:
        raise StoreError("the database holds no jobqueue tables: no queue has used it")
    version = conn.execute(Q["schema_version"]).fetchone()
    if version is not None and _version(version[0]) > SCHEMA_VERSION:
        raise StoreError(
            f"the database's jobqueue schema is version {version[0]}, newer than this "
            f"jobqueue knows ({SCHEMA_VERSION}): upgrade jobqueue to use it"
        )
    if version is not None and _version(version[0]) < SCHEMA_VERSION:
        raise StoreError(
            f"the database's jobqueue schema is version {version[0]}, older than this "
            f"jobqueue's ({SCHEMA_VERSION}): stop the processes of the older version, then "
            "start one JobQueue of this one on it, which upgrades it"
        )
