"""The PostgreSQL store's tables, made on first use, and the connections that reach them.

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
first queue that opens it (see the upgrades below).

Passwords never leave here in a message: :func:`mask` hides the one a URL holds.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import threading
from collections.abc import Iterator
from typing import Any

from jobqueue.errors import StoreError

__all__ = ["ALIVE", "CHANNEL", "FORGET_GONE", "SCHEMA_VERSION", "ConnectionPool", "connect",
           "create_schema", "mask"]

logger = logging.getLogger("jobqueue")

SCHEMA_VERSION = 3
#: Every queue of a database notifies on this channel; the payload names the queue.
CHANNEL = "jobqueue"
# Any constant will do: it names the lock that serialises schema creation.
_SCHEMA_LOCK = 0x6A6F627175657565

_PROCESSES = """
CREATE TABLE IF NOT EXISTS jobqueue_processes (
    owner text PRIMARY KEY,
    queue text NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    lease_until timestamptz NOT NULL
);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobqueue_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS jobqueue_seq;
CREATE SEQUENCE IF NOT EXISTS jobqueue_lease_ids;
CREATE TABLE IF NOT EXISTS jobqueue_jobs (
    queue text NOT NULL,
    id text NOT NULL,
    payload bytea NOT NULL,
    priority smallint NOT NULL,
    kind text NOT NULL,
    max_retries integer,
    created_at double precision NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    started_at double precision,
    finished_at double precision,
    due_at double precision,
    seq bigint NOT NULL,
    result bytea,
    result_json boolean NOT NULL DEFAULT false,
    owner text,
    lease_id bigint,
    lease_until timestamptz,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS jobqueue_jobs_ready ON jobqueue_jobs (queue, priority, seq)
    WHERE owner IS NULL AND status IN ('queued', 'processing', 'retrying');
CREATE INDEX IF NOT EXISTS jobqueue_jobs_leases ON jobqueue_jobs (queue, lease_until)
    WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobqueue_jobs_finished ON jobqueue_jobs (queue, finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS jobqueue_jobs_scheduled ON jobqueue_jobs (queue, due_at)
    WHERE owner IS NULL AND status = 'scheduled';
""" + _PROCESSES

# From version 1: results, and the SCHEDULED and CANCELLED statuses. Every process of the
# older version must be stopped first: it cannot read the new statuses, and the index builds
# lock the table against writers while they run.
_UPGRADE_FROM_1 = """
ALTER TABLE jobqueue_jobs ADD COLUMN IF NOT EXISTS result bytea;
DROP INDEX IF EXISTS jobqueue_jobs_finished;
CREATE INDEX jobqueue_jobs_finished ON jobqueue_jobs (queue, finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS jobqueue_jobs_scheduled ON jobqueue_jobs (queue, due_at)
    WHERE owner IS NULL AND status = 'scheduled';
UPDATE jobqueue_meta SET value = '2' WHERE key = 'schema_version';
"""

# From version 2: a task's result is marked JSON, so that every process decodes it. Adding
# a column with a constant default rewrites nothing: processes of version 2 may run on.
_UPGRADE_FROM_2 = """
ALTER TABLE jobqueue_jobs ADD COLUMN IF NOT EXISTS result_json boolean NOT NULL DEFAULT false;
UPDATE jobqueue_meta SET value = '3' WHERE key = 'schema_version';
"""


#: A process says it is alive: when it starts, and with every heartbeat.
ALIVE = """
INSERT INTO jobqueue_processes AS p (owner, queue, started_at, heartbeat_at, lease_until)
VALUES (%(owner)s, %(queue)s, now(), now(), now() + make_interval(secs => %(lease)s))
ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now(), lease_until = excluded.lease_until
"""
#: Processes gone for a day are forgotten (one that crashed leaves its row).
FORGET_GONE = "DELETE FROM jobqueue_processes WHERE lease_until < now() - interval '1 day'"

# libpq's settings for a TCP connection, unless the URL gives its own: a server that stops
# answering (a cut link, a host gone) fails the connection in seconds instead of leaving a
# statement waiting for ever. Unix sockets ignore them.
_KEEPALIVE = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
              "keepalives_count": "3", "tcp_user_timeout": "10000", "connect_timeout": "10"}

_PASSWORD_IN_URI = re.compile(r"(?P<head>\w+://[^:/@?#]*:)(?P<password>[^@/?#]*)(?=@)")
_PASSWORD_KEY = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|\S*)",
                           re.IGNORECASE)


def mask(text: str, url: str | None = None) -> str:
    """``text`` (a URL, or a message that may quote one) with every password hidden, as
    ``***``: the one written in ``url`` too, wherever ``text`` repeats it."""
    masked = _PASSWORD_IN_URI.sub(r"\g<head>***", text)
    masked = _PASSWORD_KEY.sub(r"\g<head>***", masked)
    if url:
        for pattern in (_PASSWORD_IN_URI, _PASSWORD_KEY):
            for found in pattern.finditer(url):
                secret = found.group("password").strip("'")
                if len(secret) >= 3:  # (shorter ones would mask ordinary words)
                    masked = masked.replace(secret, "***")
    return masked


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "a database_url needs psycopg 3: pip install 'psycopg[binary]>=3.1' (from a "
            "jobqueue checkout: pip install '.[postgres]')"
        ) from None
    return psycopg


def connect(
    url: str, *, synchronous_commit: bool = True, lease: float | None = None,
    lock_timeout: float | None = None,
) -> Any:
    """An autocommit connection to ``url``; raises StoreError naming the database.

    With ``lease``, the server ends a transaction this connection leaves open longer than
    that: a process stopped mid-transaction must not hold row locks past its lease. With
    ``lock_timeout`` (seconds), a statement waits no longer than that for a lock. Over TCP,
    a server that stops answering fails the connection within seconds (``_KEEPALIVE``).
    """
    psycopg = _psycopg()
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
        extra = {key: value for key, value in _KEEPALIVE.items() if key not in given}
        conn = psycopg.connect(url, autocommit=True, **extra)
        if not synchronous_commit:
            conn.execute("SET synchronous_commit = off")
        if lease is not None:
            conn.execute(f"SET idle_in_transaction_session_timeout = {max(1, int(lease * 1000))}")
        if lock_timeout is not None:
            conn.execute(f"SET lock_timeout = {max(1, int(lock_timeout * 1000))}")
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the database: {mask(_first_line(exc), url)}"
                         ) from exc
    return conn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def create_schema(conn: Any) -> None:
    """Make the tables if they are missing; raise StoreError if the database is newer."""
    psycopg = _psycopg()
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            # Made already: read the version only. CREATE INDEX IF NOT EXISTS would lock the
            # table against every writer, and wait for a stopped process's open transaction.
            if conn.execute("SELECT to_regclass('jobqueue_meta') IS NULL "
                            "OR to_regclass('jobqueue_jobs') IS NULL").fetchone()[0]:
                conn.execute(_SCHEMA)
            row = conn.execute(
                "SELECT value FROM jobqueue_meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO jobqueue_meta VALUES ('schema_version', %s)",
                    (str(SCHEMA_VERSION),),
                )
            elif _version(row[0]) < SCHEMA_VERSION:
                version = _version(row[0])
                if version == 1:
                    conn.execute(_UPGRADE_FROM_1)
                conn.execute(_UPGRADE_FROM_2)
                logger.info("upgraded the jobqueue tables from schema version %d to %d",
                            version, SCHEMA_VERSION)
            elif _version(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"the database's jobqueue schema is version {row[0]}, newer than this "
                    f"jobqueue knows ({SCHEMA_VERSION}): upgrade jobqueue to use it"
                )
            # The processes' table came later without a new version: nothing depends on it
            # (processes that do not know it run on, and one that cannot make it too).
            if conn.execute("SELECT to_regclass('jobqueue_processes') IS NULL").fetchone()[0]:
                with contextlib.suppress(psycopg.Error), conn.transaction():  # (a savepoint)
                    conn.execute(_PROCESSES)
    except psycopg.Error as exc:
        raise StoreError(f"cannot create the jobqueue tables: {_first_line(exc)}") from exc


def _dropped(conn: Any) -> bool:
    """Whether the server has closed an idle connection (a restart, a crash, an idle
    timeout): it then has something to read, a goodbye or the end of the stream, where an
    idle connection has nothing. One poll, no round trip."""
    poller = select.poll()  # (select() fails for a descriptor past 1023)
    try:
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _version(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise StoreError(f"the database's jobqueue schema version {text!r} is not a version "
                         "this jobqueue can read (jobqueue_meta was changed by hand?)") from None


def check_schema(conn: Any) -> None:
    """Raise StoreError unless the database holds jobqueue tables this code can read."""
    row = conn.execute(
        "SELECT to_regclass('jobqueue_meta') IS NOT NULL"
    ).fetchone()
    if not row[0]:
        raise StoreError("the database holds no jobqueue tables: no queue has used it")
    version = conn.execute(
        "SELECT value FROM jobqueue_meta WHERE key = 'schema_version'"
    ).fetchone()
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


# psycopg's errors for a connection the server no longer serves.
_LOST = {"OperationalError", "AdminShutdown", "ConnectionFailure", "ConnectionException"}


class ConnectionPool:
    """Connections for callers that come and go (producers, status, the CLI): one each at a
    time, kept for the next caller. A connection that failed is dropped, not reused."""

    def __init__(
        self, url: str, synchronous_commit: bool, lease: float | None = None, keep: int = 8
    ) -> None:
        self._url = url
        self._synchronous_commit = synchronous_commit
        self._lease = lease
        self._keep = keep
        self._lock = threading.Lock()  # guards _idle and _closed
        self._idle: list[Any] = []
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        with self._lock:
            if self._closed:
                raise StoreError("the PostgreSQL store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is not None and _dropped(conn):
            conn.close()
            self._drop_idle()  # the server went away: the others are gone too
            conn = None
        if conn is None:
            conn = connect(self._url, synchronous_commit=self._synchronous_commit,
                           lease=self._lease)
        try:
            yield conn
        except BaseException as exc:
            if conn.closed or conn.info.transaction_status != 0:  # broken, or mid-transaction
                conn.close()
                if type(exc).__name__ in _LOST or conn.broken:
                    self._drop_idle()  # the server went away: they are broken too
            else:
                self._put(conn)
            raise
        self._put(conn)

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _put(self, conn: Any) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._keep and not conn.closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._drop_idle()
