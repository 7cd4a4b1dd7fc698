"""The PostgreSQL store: one queue shared by every process that names the same database and
queue name, on any host.

The :class:`~._store.Store` contract, for a store with many writers (``shared``):

- **New jobs** go into the table unheld (:meth:`PostgresStore.insert`), in one statement
  that also notifies: every process listening may claim them. A job whose handler is a
  closure (``enqueue_with_handler``) can run only here, so ``add``/``commit`` insert it held.
- **Claims** take jobs with ``FOR UPDATE SKIP LOCKED``, so processes never wait for each
  other's rows, and stamp them with this process's name, a new ``lease_id`` and a lease.
  Jobs whose lease lapsed (their process died, or stopped heartbeating) are claimed too.
- **Moves** (``started``, ``retrying``, ``finished``, ``released``) are written by one
  thread in batches, each conditional on the ``lease_id`` of the claim the job came from: a
  process that lost a job to another cannot overwrite what the other did (it logs a
  WARNING). The same thread heartbeats the leases this process holds, every third of a
  lease, forgets those another process took over, and deletes finished jobs past the
  retention, in bounded batches.
- **Before a handler runs** (``running``), the worker checks that this store still holds
  the job's lease; if the last heartbeat is stale (the process was paused), it waits for a
  new one first: a job another process took over is not run here. A job taken over from a
  process that died runs only once its start is written: should it kill this process too,
  the attempt counts, and a job that kills every process that runs it ends FAILED.
- **Wake-ups**: a listener thread hears ``NOTIFY`` for new jobs (the claimer looks again)
  and for finished ones (``wait()`` and ``join()`` look again); it ignores this store's own,
  which wake the queue directly. A busy producer notifies at most once per
  ``_NOTIFY_GAP`` per priority, and the writer sends a trailing notice for the jobs in
  between. The claimer also polls once a second, for a notice missed while a connection was
  down.

Every statement runs on its own (autocommit) but for batch inserts and repairs: a process
stopped between statements of a transaction would hold its row locks. The server also ends
a transaction left idle longer than a lease.

Durability: ``fsync=True`` commits with the server's ``synchronous_commit``; ``fsync=False``
turns it off for this store's connections: a commit survives any crash of a client, and a
server crash may lose its last fraction of a second of commits.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from jobqueue._priority import Priority
from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final._pg_schema import CHANNEL, ConnectionPool, connect, create_schema
from jobqueue.final._states import CANCELLABLE, FINISHED, LIVE, Status
from jobqueue.final._store import JobRecord, LeaseLost, QueueStats

__all__ = ["PostgresStore"]

logger = logging.getLogger("jobqueue")

_PRIORITIES = tuple(Priority)
_LIVE_STATUSES = tuple(sorted(status.value for status in LIVE))
#: Finished jobs deleted per statement, and statements per pass of the writer.
_TRIM_BATCH = 1000
_TRIM_PASSES = 10
#: The longest the writer waits before it tries a lost connection again.
_MAX_BACKOFF = 5.0
#: How long the writer waits for more moves before it writes a batch, and the batch size
#: that ends the wait early (seconds, moves).
_LINGER = 0.002
_BATCH = 500
#: A producer's notices of new jobs, per priority, come at most this often (seconds).
_NOTIFY_GAP = 0.002
#: The tag of a notice no store of this process sent (a caller's transaction, the CLI).
FOREIGN = "-" * 8

_COLUMNS = ("id, payload, priority, kind, max_retries, created_at, status, attempts, "
            "last_error, started_at, finished_at, due_at, seq, result")
#: How many columns _COLUMNS names: a row's further columns start there.
_NCOLS = 14
_FINISHED_VALUES = frozenset(status.value for status in FINISHED)
#: The statuses of finished jobs, as SQL: only a new life runs them again.
_FINISHED = "(" + ", ".join(sorted(f"'{s.value}'" for s in FINISHED)) + ")"
_CANCELLABLE = "(" + ", ".join(sorted(f"'{s.value}'" for s in CANCELLABLE)) + ")"

# New jobs: one row (VALUES) or many (unnest). A live id is a duplicate: ON CONFLICT updates
# only a finished row (a new life), so a live one returns no row. Notices are sent for the
# priorities in %(notify)s, tagged with their sender.
_INSERT = f"""
WITH added AS (
    INSERT INTO jobqueue_jobs AS j
        (queue, id, payload, priority, kind, max_retries, created_at, status, due_at, seq,
         owner, lease_id, lease_until)
    {{rows}}
    ON CONFLICT (queue, id) DO UPDATE SET
        payload = excluded.payload, priority = excluded.priority, kind = excluded.kind,
        max_retries = excluded.max_retries, created_at = excluded.created_at,
        status = excluded.status, attempts = 0, last_error = NULL, started_at = NULL,
        finished_at = NULL, due_at = excluded.due_at, seq = excluded.seq, result = NULL,
        owner = excluded.owner, lease_id = excluded.lease_id, lease_until = excluded.lease_until
    WHERE j.status IN {_FINISHED} AND %(revive)s
    RETURNING j.id, j.priority, j.lease_id
)
SELECT id, lease_id, CASE WHEN priority = ANY(%(notify)s::smallint[])
    THEN pg_notify('{CHANNEL}', priority::text || %(tag)s || %(queue)s) END
FROM added
"""
_HELD = """%(owner)s, CASE WHEN %(owner)s::text IS NULL THEN NULL
                          ELSE nextval('jobqueue_lease_ids') END,
           CASE WHEN %(owner)s::text IS NULL THEN NULL
                ELSE now() + make_interval(secs => %(lease)s) END"""
_INSERT_ONE = _INSERT.replace("{rows}", f"""VALUES (
    %(queue)s, %(id)s, %(payload)s, %(priority)s, %(kind)s, %(max_retries)s::integer,
    %(created)s, %(status)s, %(due)s::float8, nextval('jobqueue_seq'), {_HELD})""")
_INSERT_MANY = _INSERT.replace("{rows}", f"""
    SELECT %(queue)s, u.id, u.payload, u.priority, u.kind, u.max_retries, u.created_at,
           u.status, u.due_at, nextval('jobqueue_seq'), {_HELD}
    FROM unnest(%(ids)s::text[], %(payloads)s::bytea[], %(priorities)s::smallint[],
                %(kinds)s::text[], %(max_retries)s::integer[], %(created)s::float8[],
                %(statuses)s::text[], %(due)s::float8[])
         WITH ORDINALITY AS u(id, payload, priority, kind, max_retries, created_at, status,
                              due_at, n)
    ORDER BY u.n""")

# One claim: the oldest unheld live jobs of a priority, then jobs whose lease lapsed. Rows
# another claimer has locked are skipped, not waited for. The rows are locked as they are
# picked, and updated by ctid (see _MOVE for why). A lapsed lease of this store's own
# is not taken back: the queue still holds that job (it was paused), and the next heartbeat
# renews the lease unless another process took the job meanwhile.
_CLAIM = f"""
WITH unheld AS (
    SELECT ctid AS tid, id, seq, NULL::text AS old_owner FROM jobqueue_jobs
    WHERE queue = %(queue)s AND priority = %(priority)s AND owner IS NULL
      AND status IN ('queued', 'processing', 'retrying') {{kinds}}
    ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), due AS (
    SELECT ctid AS tid, id, seq, NULL::text AS old_owner FROM jobqueue_jobs
    WHERE queue = %(queue)s AND owner IS NULL AND status = 'scheduled'
      AND due_at <= %(now)s AND priority = %(priority)s {{kinds}}
    ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), lapsed AS (
    SELECT ctid AS tid, id, seq, owner AS old_owner FROM jobqueue_jobs
    WHERE queue = %(queue)s AND owner IS NOT NULL AND lease_until < now()
      AND owner <> %(owner)s AND priority = %(priority)s {{kinds}}
    ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT * FROM unheld UNION ALL SELECT * FROM due UNION ALL SELECT * FROM lapsed
    ORDER BY seq LIMIT %(limit)s
)
UPDATE jobqueue_jobs AS j
SET owner = %(owner)s, lease_id = nextval('jobqueue_lease_ids'),
    lease_until = now() + make_interval(secs => %(lease)s)
FROM picked WHERE j.ctid = picked.tid
RETURNING {", ".join("j." + c.strip() for c in _COLUMNS.split(","))}, j.lease_id,
          picked.old_owner
"""

# Moves, written in a batch. Each row is conditional on the claim it came from (lease_id).
# One statement, notifying waiters of finished jobs. Each move finds its row by primary key
# (LATERAL ... LIMIT 1), then updates it by ctid: a plan that stays one index probe per move
# whatever the planner's statistics say (on a young table they say it is empty, and a join
# would scan every row of the queue for each move). A row another transaction changed
# meanwhile is skipped, as its lease moved on.
_MOVE = f"""
WITH target AS (
    SELECT held.tid, u.* FROM unnest(
            %(ids)s::text[], %(leases)s::bigint[], %(statuses)s::text[],
            %(attempts)s::integer[], %(errors)s::text[], %(started)s::float8[],
            %(finished)s::float8[], %(due)s::float8[], %(held)s::bool[],
            %(results)s::bytea[])
        AS u(id, lease_id, status, attempts, last_error, started_at, finished_at, due_at,
             held, result)
    JOIN LATERAL (
        SELECT ctid AS tid, lease_id FROM jobqueue_jobs
        WHERE queue = %(queue)s AND id = u.id LIMIT 1
    ) AS held ON held.lease_id = u.lease_id
), moved AS (
    UPDATE jobqueue_jobs AS j SET
        status = t.status, attempts = t.attempts, last_error = t.last_error,
        started_at = t.started_at, finished_at = t.finished_at, due_at = t.due_at,
        payload = CASE WHEN t.status = 'completed' THEN ''::bytea ELSE j.payload END,
        result = t.result,
        owner = CASE WHEN t.held THEN j.owner END,
        lease_id = CASE WHEN t.held THEN j.lease_id END,
        lease_until = CASE WHEN t.held THEN j.lease_until END
    FROM target AS t WHERE j.ctid = t.tid AND j.lease_id = t.lease_id
    RETURNING j.id, j.status
)
SELECT id, status, CASE WHEN status IN {_FINISHED}
    THEN pg_notify('{CHANNEL}', 'd' || %(tag)s || %(queue)s) END
FROM moved
"""

# Finished jobs older than the retention's newest, a batch at a time. The cut-off is read
# without locks; rows another transaction holds (a new life being enqueued) are skipped,
# and one made live again meanwhile is skipped on the re-check.
_TRIM = f"""
WITH cutoff AS (
    SELECT finished_at, seq FROM jobqueue_jobs
    WHERE queue = %(queue)s AND status IN {_FINISHED}
    ORDER BY finished_at DESC, seq DESC OFFSET %(keep)s LIMIT 1
)
DELETE FROM jobqueue_jobs WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM jobqueue_jobs
    WHERE queue = %(queue)s AND status IN {_FINISHED}
      AND finished_at <= (SELECT finished_at FROM cutoff)
      AND (finished_at, seq) <= (SELECT finished_at, seq FROM cutoff)
    ORDER BY finished_at, seq LIMIT %(batch)s FOR UPDATE SKIP LOCKED))
  AND status IN {_FINISHED}
"""


def _record(row: Sequence[Any]) -> JobRecord:
    (job_id, payload, priority, kind, max_retries, created_at, status, attempts, last_error,
     started_at, finished_at, due_at, seq, result) = row[:_NCOLS]
    return JobRecord(job_id, bytes(payload), _PRIORITIES[priority], kind, max_retries,
                     created_at, Status(status), attempts, last_error, started_at,
                     finished_at, due_at, seq, None if result is None else bytes(result))


def _identity(conn: Any) -> tuple[str, str, str]:
    info = conn.info
    return (str(info.host), str(info.port), str(info.dbname))


def _storable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\0" not in text


def _insert_params(records: Sequence[JobRecord]) -> tuple[str, dict[str, Any]]:
    if len(records) == 1:
        r = records[0]
        return _INSERT_ONE, {
            "id": r.id, "payload": r.payload, "priority": int(r.priority), "kind": r.kind,
            "max_retries": r.max_retries, "created": r.created_at,
            "status": r.status.value, "due": r.due_at,
        }
    return _INSERT_MANY, {
        "statuses": [r.status.value for r in records],
        "due": [r.due_at for r in records],
        "ids": [r.id for r in records],
        "payloads": [r.payload for r in records],
        "priorities": [int(r.priority) for r in records],
        "kinds": [r.kind for r in records],
        "max_retries": [r.max_retries for r in records],
        "created": [r.created_at for r in records],
    }


class PostgresStore:
    """The :class:`~._store.Store` contract in PostgreSQL, shared by many processes."""

    persistent = True
    shared = True
    ran = None  # (running() needs no word back: the outcome's write says it all)
    #: The time in epoch seconds against which scheduled jobs come due (the queue's clock).
    now: Callable[[], float] = staticmethod(time.time)
    #: The claimer looks for jobs at least this often (seconds), notified or not.
    poll_interval = 1.0

    def __init__(
        self, url: str, *, queue: str = "default", fsync: bool = False,
        retention: int = 100_000, lease: float = 30.0,
    ) -> None:
        self.queue = queue
        self.lease = lease
        self._url = url
        self._fsync = fsync
        self._retention = retention
        # How long a caller waits for this store's writes before it gives up: the database
        # is away. Long enough for a slow commit, short enough not to look like a hang.
        self._write_wait = max(5.0, min(lease, 30.0))
        self._tag = secrets.token_hex(4)  # marks this store's own notices
        #: This store's name in the owner column: host, pid and tag, for people to read.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self._tag}"
        self._pool = ConnectionPool(url, synchronous_commit=fsync, lease=lease)
        try:
            with self._pool.connection() as conn:
                create_schema(conn)
        except BaseException:
            self._pool.close()
            raise
        # The lease_id of every job this store holds, by id. Single dict operations: the
        # claimer adds, the queue's calls (under its mutex) read and remove.
        self._leases: dict[str, int] = {}
        self._on_ready: Callable[[Iterable[Priority] | None], None] | None = None
        self._on_change: Callable[[], None] | None = None

        # _lock guards the fields below; _work wakes the writer, _written its waiters.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._written = threading.Condition(self._lock)
        self._pending: dict[str, tuple[JobRecord, int]] = {}  # id -> latest move, its lease
        self._writing: dict[str, tuple[JobRecord, int]] = {}  # the batch being written
        self._told = 0  # moves told so far
        self._done = 0  # moves written (or refused) so far
        self._suspects: set[str] = set()  # taken over from a dead process: start written first
        self._renewed = time.monotonic()  # when the leases were last renewed
        self._renew_now = False  # a worker waits for a heartbeat (running)
        self._writer_idle = False  # the writer waits for work: a move must wake it
        self._hurry = False  # someone waits for a write: no lingering
        self._notified = [0.0, 0.0, 0.0]  # when a notice of new jobs last went, by priority
        self._trailing = [False, False, False]  # new jobs inserted since, not yet notified
        self._finished_since_trim = 0
        self._closing = False  # close() started: write what is left, then stop
        self._closed = False
        self._listener: threading.Thread | None = None
        self._listen_conn: Any = None
        self._database: tuple[str, str, str] | None = None  # host, port, name
        self._writer = threading.Thread(
            target=self._write_loop, name="jobqueue-final-pg-writer", daemon=True
        )
        self._writer.start()

    # -- wake-ups ---------------------------------------------------------------------------

    def listen(
        self,
        on_ready: Callable[[Iterable[Priority] | None], None],
        on_change: Callable[[], None],
    ) -> None:
        """Start hearing other processes: ``on_ready(priorities)`` when jobs of those
        priorities (None: any) may be claimable, ``on_change()`` when jobs finished."""
        self._on_ready = on_ready
        self._on_change = on_change
        conn = connect(self._url)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except Exception as exc:
            conn.close()
            raise StoreError(f"cannot listen for other processes' jobs: {exc}") from exc
        self._listen_conn = conn
        self._listener = threading.Thread(
            target=self._listen_loop, name="jobqueue-final-pg-listener", daemon=True
        )
        self._listener.start()

    def _listen_loop(self) -> None:
        own, queue = self._tag, self.queue
        conn = self._listen_conn
        backoff = 0.1
        while not self._closing:
            try:
                # A timeout, so that a stop notice missed while reconnecting cannot leave
                # this thread waiting forever: it looks at _closing once a second.
                for notice in conn.notifies(timeout=1.0):
                    payload = notice.payload
                    kind, tag, name = payload[:1], payload[1:9], payload[9:]
                    if kind == "s" and tag == own:
                        return
                    if name != queue or tag == own:
                        continue  # another queue, or this store's own news
                    if kind == "d":
                        self._on_change()  # type: ignore[misc]
                    elif kind in ("0", "1", "2"):
                        self._on_ready((_PRIORITIES[int(kind)],))  # type: ignore[misc]
                backoff = 0.1
            except Exception as exc:
                if self._closing:
                    return
                logger.warning("the PostgreSQL listener lost its connection (%s); "
                               "reconnecting in %.1f s", exc, backoff)
                time.sleep(backoff)  # a lost server: no busy loop while it is away
                backoff = min(backoff * 2, _MAX_BACKOFF)
                try:
                    conn.close()
                    if self._closing:
                        return
                    conn = self._listen_conn = connect(self._url)
                    conn.execute(f"LISTEN {CHANNEL}")
                except Exception:  # noqa: S112 - tried again after the backoff
                    continue
                if self._closing:  # close() may have missed this connection: close it here
                    conn.close()
                    return
                self._on_ready(None)  # type: ignore[misc]  # what was missed meanwhile

    # -- new jobs ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The database numbers jobs itself (``jobqueue_seq``): its latest number, or 0 if
        this role may not read the sequence (it needs only to use it)."""
        try:
            return int(self._query_one("SELECT last_value FROM jobqueue_seq", ())[0])
        except StoreError:
            return 0

    def prepare(self, records: Sequence[JobRecord]) -> Sequence[JobRecord]:
        return records

    def add(self, prepared: object) -> object:
        if self._closing:
            raise StoreError("the PostgreSQL store is closed")
        return prepared  # the round trip is commit()'s, outside the queue's mutex

    def commit(self, ticket: object) -> None:
        """Insert jobs this queue holds from the start (their handler is a closure)."""
        records: Sequence[JobRecord] = ticket  # type: ignore[assignment]
        with self._pool.connection() as conn:
            leases = self._insert(conn, records, self.owner, (), own_transaction=True)
        self._leases.update(leases)

    def insert(
        self, records: Sequence[JobRecord], connection: Any = None, *, revive: bool = True
    ) -> None:
        """Insert jobs unheld, for any process to claim; all or none.

        With ``connection`` (the caller's psycopg connection), inside its transaction: the
        jobs exist once that transaction commits, and never if it rolls back. With
        ``revive=False`` an id kept finished is a duplicate too (a periodic job's tick).
        """
        if self._closing:
            raise StoreError("the PostgreSQL store is closed")
        if connection is not None:
            import psycopg

            if not isinstance(connection, psycopg.Connection):
                raise TypeError(f"connection must be a psycopg.Connection (sync, psycopg 3), "
                                f"not {type(connection).__name__}")
            self._check_same_database(connection)
            # Notified at its commit, to every listener (this one too: it cannot know when).
            self._insert(connection, records, None, [0, 1, 2], own_transaction=False,
                         tag=FOREIGN, revive=revive)
            return
        priorities = {r.priority for r in records}
        now = time.monotonic()
        with self._lock:
            notify = [p for p in priorities if now - self._notified[p] >= _NOTIFY_GAP]
            for p in notify:
                self._notified[p] = now
        with self._pool.connection() as conn:
            self._insert(conn, records, None, notify, own_transaction=True, revive=revive)
        if len(notify) < len(priorities):
            with self._lock:  # the writer notifies for these once the gap has passed
                for p in priorities.difference(notify):
                    self._trailing[p] = True
                self._work.notify()
        if self._on_ready is not None:  # this queue needs no notice of its own jobs
            self._on_ready(priorities)

    def _check_same_database(self, connection: Any) -> None:
        """Refuse a caller's connection to another database: the jobs would go to a queue
        this one never sees."""
        if self._database is None:
            with self._pool.connection() as conn:
                self._database = _identity(conn)
        if connection.closed:
            raise ValueError("connection is closed")
        theirs = _identity(connection)
        if theirs != self._database:
            raise ValueError(f"connection is to database {theirs[2]!r} on {theirs[0]}:"
                             f"{theirs[1]}, but this queue is in {self._database[2]!r} on "
                             f"{self._database[0]}:{self._database[1]}")

    def _insert(
        self, conn: Any, records: Sequence[JobRecord], owner: str | None,
        notify: Collection[int], own_transaction: bool, tag: str | None = None,
        revive: bool = True,
    ) -> dict[str, int]:
        import psycopg
        from psycopg.rows import tuple_row

        if not self._settle({r.id for r in records}):  # a finished life is written first
            raise StoreError(f"the database has not taken this process's writes for "
                             f"{self._write_wait:.0f} s")
        sql, params = _insert_params(records)
        params.update(queue=self.queue, owner=owner, lease=self.lease, notify=list(notify),
                      tag=self._tag if tag is None else tag, revive=revive)
        try:
            run = conn.cursor(row_factory=tuple_row).execute  # whatever the caller's factory
            if own_transaction and len(records) == 1:
                rows = run(sql, params).fetchall()  # one statement: atomic
            elif conn.info.transaction_status == 3:  # INERROR
                raise StoreError("the connection's transaction has failed already: roll it "
                                 "back before enqueueing")
            elif (own_transaction or conn.autocommit
                  or conn.info.transaction_status != 0):
                # A transaction of its own, or a savepoint inside the caller's: a duplicate
                # undoes only this statement's rows.
                with conn.transaction():
                    rows = run(sql, params).fetchall()
                    if len(rows) != len(records):
                        raise _Refused(rows)
            else:
                # The caller's connection, idle outside autocommit: this statement opens the
                # transaction the caller commits; a duplicate rolls back only this, since
                # nothing came before it.
                rows = run(sql, params).fetchall()
                if len(rows) != len(records):
                    conn.rollback()
                    raise _Refused(rows)
        except _Refused as refused:
            rows = refused.rows
        except psycopg.Error as exc:
            raise StoreError(f"could not store the job: {exc}") from exc
        if len(rows) != len(records):
            added = {row[0] for row in rows}
            missing = next(r.id for r in records if r.id not in added)
            live = self.get(missing)  # (the refusal's cost, not every insert's)
            status = "live" if live is None else live.status.value
            raise DuplicateJob(f"job {missing!r} is already {status} in queue {self.queue!r}")
        return {row[0]: row[1] for row in rows}

    # -- moves of held jobs (under the queue's mutex: never block) --------------------------

    def _tell(self, record: JobRecord, held: bool) -> None:
        job_id = record.id
        lease = self._leases.get(job_id) if held else self._leases.pop(job_id, None)
        if lease is None:
            return  # refused already: another process holds it now (logged then)
        with self._lock:
            self._pending[job_id] = (record, lease) if held else (record, -lease)
            self._told += 1
            if self._writer_idle:
                self._writer_idle = False
                self._work.notify()

    def started(self, record: JobRecord) -> None:
        self._tell(record, True)

    def retrying(self, record: JobRecord) -> None:
        self._tell(record, True)

    def finished(self, record: JobRecord) -> None:
        self._tell(record, False)

    def released(self, record: JobRecord) -> None:
        self._tell(record, False)

    def running(self, record: JobRecord) -> None:
        """Before a handler runs: raise LeaseLost if another process took the job over. If
        the leases were not renewed lately (this process was paused), renew them first; if
        the job was taken over from a process that died, wait until its start is written,
        so that the attempt counts should this process die in it too. Either wait gives up
        after a while (the database is away) and lets the job run."""
        job_id = record.id
        if time.monotonic() - self._renewed > self.lease * 2 / 3:
            self._renew()
        lease = self._leases.get(job_id)
        if lease is None:
            raise LeaseLost(job_id)
        if job_id in self._suspects:
            self._suspects.discard(job_id)
            if self._settle((job_id,)) and self._leases.get(job_id) != lease:
                raise LeaseLost(job_id)

    def _renew(self) -> None:
        """Have the writer heartbeat now, and wait for it (up to a while)."""
        with self._lock:
            asked = self._renewed
            self._renew_now = True
            self._work.notify()
            deadline = time.monotonic() + self._write_wait
            self._hurry = True
            while self._renewed == asked and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._written.wait(remaining)

    def _settle(self, ids: Collection[str]) -> bool:
        """Wait until every move told of these ids is written; False if that took longer
        than the store waits for the database."""
        with self._lock:
            if not any(i in self._pending or i in self._writing for i in ids):
                return True
            return self._wait_written_locked(self._told)

    def sync(self) -> None:
        """Wait until every move told so far is written; raise StoreError if the database
        has not taken them for a while."""
        with self._lock:
            if not self._wait_written_locked(self._told):
                raise StoreError(f"the database has not taken this process's writes for "
                                 f"{self._write_wait:.0f} s")

    def _wait_written_locked(self, told: int) -> bool:
        deadline = time.monotonic() + self._write_wait
        while self._done < told:
            if self._closed:
                raise StoreError("the PostgreSQL store is closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._hurry = True
            self._work.notify()
            self._written.wait(remaining)
        return True

    # -- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn = None
        heartbeat_every = self.lease / 3
        next_heartbeat = time.monotonic() + heartbeat_every
        backoff = 0.1
        while True:
            with self._lock:
                while not self._pending and not self._closing and not self._renew_now:
                    now = time.monotonic()
                    due = next_heartbeat
                    for p in range(3):
                        if self._trailing[p]:
                            due = min(due, self._notified[p] + _NOTIFY_GAP)
                    if due <= now:
                        break
                    self._writer_idle = True
                    self._work.wait(due - now)
                self._writer_idle = False
                # Linger a moment for more moves: fewer, larger batches cost the database
                # (and this process) less. Anyone waiting for a write cuts it short.
                linger_until = time.monotonic() + _LINGER
                while (self._pending and not self._hurry and not self._closing
                       and len(self._pending) < _BATCH
                       and (left := linger_until - time.monotonic()) > 0):
                    self._work.wait(left)
                self._hurry = False
                batch, self._pending = self._pending, {}
                self._writing = batch
                told = self._told
                closing = self._closing
                now = time.monotonic()
                trailing = [p for p in range(3)
                            if self._trailing[p] and now - self._notified[p] >= _NOTIFY_GAP]
                for p in trailing:
                    self._trailing[p] = False
                    self._notified[p] = now
            try:
                if conn is None:
                    conn = connect(self._url, synchronous_commit=self._fsync, lease=self.lease,
                                   lock_timeout=self.lease / 3)
                for p in trailing:
                    conn.execute("SELECT pg_notify(%s, %s)",
                                 (CHANNEL, f"{p}{self._tag}{self.queue}"))
                if batch:
                    self._write(conn, batch)
                if time.monotonic() >= next_heartbeat or closing or self._renew_now:
                    self._heartbeat(conn)
                    next_heartbeat = time.monotonic() + heartbeat_every
                    with self._lock:
                        self._renew_now = False
                        self._renewed = time.monotonic()
                        self._written.notify_all()
                backoff = 0.1
            except Exception as exc:
                transient = type(exc).__name__ in ("LockNotAvailable", "QueryCanceled")
                if conn is not None and not conn.broken and batch and not transient:
                    # The server refused these values (not the connection): trying again
                    # would fail forever. Their jobs run again once their leases lapse.
                    logger.error("PostgreSQL refused the moves of jobs %s: %s; they run "
                                 "again elsewhere once their leases lapse",
                                 sorted(batch)[:20], exc)
                    for job_id, (_, lease) in batch.items():
                        if self._leases.get(job_id) == abs(lease):
                            del self._leases[job_id]
                    batch = {}
                    with self._lock:
                        self._writing = {}
                        self._done = told
                        self._written.notify_all()
                    continue
                logger.error("writing to PostgreSQL failed (%s); trying again in %.1f s",
                             exc, backoff)
                if conn is not None:
                    conn.close()
                conn = None
                with self._lock:
                    batch.update(self._pending)  # newer moves win
                    self._pending, self._writing = batch, {}
                    for p in trailing:
                        self._trailing[p] = True
                    if self._closed:
                        return
                    self._work.wait(backoff)
                    if self._closed:
                        return
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            with self._lock:
                self._writing = {}
                self._done = told
                self._written.notify_all()
                if closing and not self._pending:
                    break
        try:
            self._release_held(conn)
        except Exception as exc:
            logger.error("could not hand back this process's jobs at close (%s): other "
                         "processes take them once their lease lapses", exc)
        finally:
            conn.close()

    def _heartbeat(self, conn: Any) -> None:
        """Renew the leases this store knows it holds, and only those (a row it claimed but
        never heard back about is left to lapse); forget those another process took over."""
        held = list(self._leases.items())
        if not held:
            return
        # Rows another transaction has locked are skipped (and still held: they are not
        # forgotten), so that no application transaction can hold up the heartbeat.
        renewed, locked = set(), set()
        for lease, was_renewed in conn.execute(
            """WITH mine AS (
                SELECT ctid AS tid, lease_id FROM jobqueue_jobs
                WHERE queue = %(queue)s AND owner = %(owner)s AND lease_id = ANY(%(leases)s)),
            free AS (
                SELECT ctid AS tid FROM jobqueue_jobs WHERE ctid = ANY(ARRAY(
                    SELECT tid FROM mine)) FOR UPDATE SKIP LOCKED),
            renewed AS (
                UPDATE jobqueue_jobs AS j SET lease_until = now() + make_interval(secs
                    => %(lease)s)
                FROM free WHERE j.ctid = free.tid RETURNING j.lease_id)
            SELECT lease_id, true FROM renewed
            UNION ALL SELECT lease_id, false FROM mine
                WHERE lease_id NOT IN (SELECT lease_id FROM renewed)""",
            {"queue": self.queue, "owner": self.owner, "lease": self.lease,
             "leases": [lease for _, lease in held]},
        ).fetchall():
            (renewed if was_renewed else locked).add(lease)
        for job_id, lease in held:
            if lease in locked:
                continue
            if lease not in renewed and self._leases.get(job_id) == lease:
                self._leases.pop(job_id, None)  # running() refuses it from now on
                logger.warning("job %r was taken over by another process (this one held it "
                               "past its lease of %s s without a heartbeat): this one will "
                               "not write its outcome", job_id, self.lease)

    def _write(self, conn: Any, batch: dict[str, tuple[JobRecord, int]]) -> None:
        moves = list(batch.values())
        written = conn.execute(_MOVE, {
            "queue": self.queue,
            "tag": self._tag,
            "ids": [r.id for r, _ in moves],
            "leases": [abs(lease) for _, lease in moves],
            "statuses": [r.status.value for r, _ in moves],
            "attempts": [r.attempts for r, _ in moves],
            "errors": [r.last_error for r, _ in moves],
            "started": [r.started_at for r, _ in moves],
            "finished": [r.finished_at for r, _ in moves],
            "due": [r.due_at for r, _ in moves],
            "held": [lease > 0 for _, lease in moves],
            "results": [r.result for r, _ in moves],
        }).fetchall()
        if len(written) != len(moves):
            self._renew_now = True  # this process was likely paused: check its other leases
            kept = {row[0] for row in written}
            for record, lease in moves:
                if record.id in kept:
                    continue
                if self._leases.get(record.id) == abs(lease):
                    del self._leases[record.id]  # (a newer claim of the id keeps its own)
                if record.status is Status.PROCESSING:
                    continue  # a start: the handler runs, and its outcome is refused
                logger.warning(
                    "job %r was taken over by another process (this one held it past its "
                    "lease of %s s without a heartbeat): its outcome here, %s, is not "
                    "written", record.id, self.lease, record.status.value,
                )
        finished = sum(1 for row in written if row[1] in _FINISHED_VALUES)
        self._finished_since_trim += finished
        if finished and self._finished_since_trim > self._retention // 10:
            self._finished_since_trim = 0
            try:
                self._trim(conn)
            except Exception as exc:  # the moves are written: only the trim waits
                if conn.broken:
                    raise
                logger.error("deleting finished jobs past the retention failed: %s", exc)

    def _trim(self, conn: Any) -> None:
        """Delete finished jobs past the retention, newest kept, a batch at a time."""
        for _ in range(_TRIM_PASSES):
            deleted = conn.execute(
                _TRIM, {"queue": self.queue, "keep": self._retention, "batch": _TRIM_BATCH}
            ).rowcount
            if deleted < _TRIM_BATCH:
                return
        self._finished_since_trim = self._retention  # more next time

    def _release_held(self, conn: Any) -> None:
        """Hand every job this store holds back to the queue, for any process to claim."""
        conn.execute(
            f"""WITH released AS (
                UPDATE jobqueue_jobs SET owner = NULL, lease_id = NULL, lease_until = NULL
                WHERE queue = %(queue)s AND owner = %(owner)s RETURNING priority)
            SELECT pg_notify('{CHANNEL}', priority::text || %(tag)s || %(queue)s)
            FROM (SELECT DISTINCT priority FROM released) AS held""",
            {"queue": self.queue, "owner": self.owner, "tag": self._tag},
        ).fetchall()
        self._leases.clear()

    # -- claims and reads (any thread, may block) -------------------------------------------

    def claim(
        self, priority: Priority, limit: int, kinds: Collection[str] | None
    ) -> list[JobRecord]:
        if self._closing:
            raise StoreError("the PostgreSQL store is closed")
        import psycopg

        query = _CLAIM.format(kinds="" if kinds is None else "AND kind = ANY(%(kinds)s)")
        params = {"queue": self.queue, "priority": int(priority), "limit": limit,
                  "owner": self.owner, "lease": self.lease, "now": self.now(),
                  "kinds": None if kinds is None else list(kinds)}
        try:
            with self._pool.connection() as conn:
                rows = conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"could not claim jobs: {exc}") from exc
        rows.sort(key=lambda row: row[12])  # by seq: arrival order
        records, stale = [], []
        for row in rows:
            record = _record(row)
            old = self._leases.get(record.id)
            if old is not None:
                # A new life of a job this queue still holds an old life of (it was paused
                # while another process finished the old one): the old lease is gone, and
                # this one goes back, for a process that does not hold the id.
                if self._leases.get(record.id) == old:
                    self._leases.pop(record.id, None)
                stale.append(row[_NCOLS])
                logger.info("job %r: claimed a new life of it while this queue still held an "
                            "old one, which another process took over; handed back", record.id)
                continue
            self._leases[record.id] = row[_NCOLS]
            old_owner = row[_NCOLS + 1]
            if old_owner is not None or record.status is Status.PROCESSING:
                self._suspects.add(record.id)  # its last process may have died running it
            if old_owner is not None:
                logger.warning("job %r taken over from %s, whose lease of it lapsed (%s)",
                               record.id, old_owner, record.status.value)
            records.append(record)
        if stale:
            self._query("UPDATE jobqueue_jobs SET owner = NULL, lease_id = NULL, "
                        "lease_until = NULL WHERE queue = %s AND lease_id = ANY(%s) "
                        "RETURNING id", (self.queue, stale))
        return records

    def get(self, job_id: str) -> JobRecord | None:
        if not _storable(job_id):
            return None  # no job can have it: PostgreSQL text is valid UTF-8
        if not self._settle((job_id,)):
            raise StoreError(f"the database has not taken this process's writes for "
                             f"{self._write_wait:.0f} s")
        row = self._query_one(
            f"SELECT {_COLUMNS} FROM jobqueue_jobs WHERE queue = %s AND id = %s",
            (self.queue, job_id),
        )
        return None if row is None else _record(row)

    def dead_letters(self) -> list[JobRecord]:
        self.sync()
        return [_record(row) for row in self._query(
            f"SELECT {_COLUMNS} FROM jobqueue_jobs WHERE queue = %s AND status = 'failed' "
            "ORDER BY finished_at, seq", (self.queue,),
        )]

    def requeue(self, job_id: str) -> JobRecord:
        """Make a FAILED job QUEUED again from attempt 0, for any process to claim, in one
        statement: two processes requeueing it at once run it once. Raises KeyError for an
        unknown id and ValueError for a job that is not FAILED."""
        if not _storable(job_id):
            raise KeyError(job_id)
        record = self.get(job_id)  # (writes what this process told of it first)
        row = self._query_one(
            f"""WITH again AS (
                UPDATE jobqueue_jobs SET status = 'queued', attempts = 0, last_error = NULL,
                    started_at = NULL, finished_at = NULL, due_at = NULL,
                    seq = nextval('jobqueue_seq')
                WHERE queue = %(queue)s AND id = %(id)s AND status = 'failed'
                RETURNING {_COLUMNS})
            SELECT again.*, pg_notify('{CHANNEL}', priority::text || %(tag)s || %(queue)s)
            FROM again""",
            {"queue": self.queue, "id": job_id, "tag": self._tag},
        )
        if row is None:
            record = self.get(job_id)
            if record is None:
                raise KeyError(job_id)
            raise ValueError(f"job {job_id!r} is {record.status.value}, not failed")
        record = _record(row)
        if self._on_ready is not None:
            self._on_ready((record.priority,))
        return record

    def cancel(self, job_id: str) -> bool:
        """Cancel a job no process holds (QUEUED, SCHEDULED or RETRYING), in one
        statement; False if there is none such (held, running, finished or unknown)."""
        if not _storable(job_id):
            return False
        row = self._query_one(
            f"""WITH cancelled AS (
                UPDATE jobqueue_jobs SET status = 'cancelled', finished_at = %(now)s,
                    due_at = NULL
                WHERE queue = %(queue)s AND id = %(id)s AND owner IS NULL
                  AND status IN {_CANCELLABLE}
                RETURNING id)
            SELECT id, pg_notify('{CHANNEL}', 'd' || %(tag)s || %(queue)s) FROM cancelled""",
            {"queue": self.queue, "id": job_id, "tag": self._tag, "now": time.time()},
        )
        return row is not None

    def has_live(self) -> bool:
        """True while any process has work in this queue."""
        self.sync()
        return bool(self._query_one(
            "SELECT EXISTS (SELECT 1 FROM jobqueue_jobs WHERE queue = %s AND status = ANY(%s))",
            (self.queue, list(_LIVE_STATUSES)),
        )[0])

    def stats(self) -> QueueStats:
        self.sync()
        counts = {status: 0 for status in Status}
        per_priority = {p: {status: 0 for status in Status} for p in Priority}
        for priority, status, count in self._query(
            "SELECT priority, status, count(*) FROM jobqueue_jobs WHERE queue = %s "
            "GROUP BY 1, 2", (self.queue,),
        ):
            counts[Status(status)] += count
            per_priority[_PRIORITIES[priority]][Status(status)] = count
        processes = self._query_one(
            "SELECT count(DISTINCT owner) FROM jobqueue_jobs WHERE queue = %s AND owner IS "
            "NOT NULL AND lease_until > now()", (self.queue,),
        )[0]
        return QueueStats.of(counts, per_priority, processes)

    def _query(self, sql: str, params: Any) -> list[Any]:
        import psycopg

        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"could not read the queue: {exc}") from exc

    def _query_one(self, sql: str, params: Any) -> Any:
        rows = self._query(sql, params)
        return rows[0] if rows else None

    # -- closing ----------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Write every move told, hand back the jobs still held, stop the threads. Waits up
        to ``timeout`` seconds (None: no limit) for the writer; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._work.notify()
        self._writer.join(timeout)
        if self._writer.is_alive():
            logger.error("the PostgreSQL writer did not finish within %s s: moves not yet "
                         "written are lost, and other processes take this one's jobs once "
                         "their lease lapses", timeout)
            with self._lock:  # it stops at its next try
                self._closed = True
                self._work.notify_all()
            self._writer.join(1.0)
        if self._listener is not None:
            try:
                with self._pool.connection() as conn:
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "s" + self._tag))
            except Exception:  # noqa: S110 - the listener looks at _closing every second
                pass
            self._listener.join(None if timeout is None else max(timeout, 1.5))
            try:
                self._listen_conn.close()
            except Exception:  # noqa: S110 - a connection the server already ended
                pass
        with self._lock:
            self._closed = True
            self._written.notify_all()
        self._pool.close()


class _Refused(Exception):
    """Some ids were live already: carries the rows that were inserted, then undone."""

    def __init__(self, rows: list[Any]) -> None:
        super().__init__()
        self.rows = rows
