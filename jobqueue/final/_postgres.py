"""The PostgreSQL store: one queue shared by every process that names the same database and
queue name, on any host.

The :class:`~._store.Store` contract, for a store with many writers (``shared``):

- **New jobs** go into the table unheld (:meth:`PostgresStore.insert`), in one statement
  that also notifies: every process listening may claim them. A job whose handler is a
  closure (``enqueue_with_handler``) can run only here, so ``add``/``commit`` insert it held.
- **Claims** take live jobs with ``FOR UPDATE SKIP LOCKED``, so processes never wait for
  each other's rows, and stamp them with this process's name, a new ``lease_id`` and a
  lease. Jobs whose lease lapsed (their process died, or stopped heartbeating) are claimed
  too; a finished row never is.
- **Moves** (``started``, ``retrying``, ``finished``, ``released``) go to the writer
  (:mod:`._pg_writer`), which writes them in batches, each conditional on the ``lease_id``
  of the claim the job came from, and heartbeats the leases this process holds.
- **Before a handler runs** (``running``), its start is committed under this process's
  lease (renewing it): a job another process took over is not run here, a process cut off
  from the database starts nothing, and an attempt whose handler kills the process counts
  from the first death. A start not confirmed while the lease surely holds is handed back.
- **Outcomes are reported once committed** (``confirm``): ``wait()``, ``result()`` and hooks
  hear of an outcome only when every process can see it, and never of a refused one.
- **Wake-ups**: a listener thread hears ``NOTIFY`` for new jobs (the claimer looks again)
  and for finished ones (``wait()`` and ``join()`` look again); it ignores this store's own,
  which wake the queue directly. A busy producer notifies at most once per
  ``NOTIFY_GAP`` per priority, and the writer sends a trailing notice for the jobs in
  between. The claimer also polls once a second, for a notice missed while a connection was
  down.
- **A lost connection** (a server restarted, say) costs no call: a pooled connection the
  server closed is replaced before use, and every call that is safe to repeat (reads,
  claims, cancels) is tried once more on a new connection.

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
import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from jobqueue._priority import Priority
from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final._pg_group import GroupInsert
from jobqueue.final._pg_schema import (
    ALIVE,
    CHANNEL,
    FORGET_GONE,
    ConnectionPool,
    connect,
    create_schema,
    mask,
)
from jobqueue.final._pg_writer import Writer, classify
from jobqueue.final._states import CANCELLABLE, FINISHED, LIVE, Status
from jobqueue.final._store import JobRecord, JsonResult, LeaseLost, QueueStats

__all__ = ["PostgresStore"]

logger = logging.getLogger("jobqueue")

_PRIORITIES = tuple(Priority)
_LIVE_STATUSES = tuple(sorted(status.value for status in LIVE))
#: The tag of a notice no store of this process sent (a caller's transaction, the CLI).
FOREIGN = "-" * 8
#: A start confirmed later than this share of a lease after it was told is not run: the
#: lease it renewed may have lapsed by the time this process heard of it.
_LEASE_SURE = 0.9
#: How often an insert in a transaction of its own is tried when PostgreSQL calls a failure
#: transient (a deadlock with another producer's batch, say): it left no trace.
_INSERT_TRIES = 3

_COLUMNS = ("id, payload, priority, kind, max_retries, created_at, status, attempts, "
            "last_error, started_at, finished_at, due_at, seq, result, result_json")
#: How many columns _COLUMNS names: a row's further columns start there.
_NCOLS = 15
#: The statuses of finished jobs, as SQL: only a new life runs them again.
_FINISHED = "(" + ", ".join(sorted(f"'{s.value}'" for s in FINISHED)) + ")"
_LIVE = "(" + ", ".join(sorted(f"'{s.value}'" for s in LIVE)) + ")"
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
        result_json = false, owner = excluded.owner, lease_id = excluded.lease_id,
        lease_until = excluded.lease_until
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

# One claim: the oldest unheld live jobs of a priority, scheduled ones come due, then live
# jobs whose lease lapsed. Rows another claimer has locked are skipped, not waited for; a
# finished row is never taken. The rows are locked as they are picked, and updated by ctid
# (see _pg_writer._MOVE for why). A scheduled job claimed once due is QUEUED from then on.
# A lapsed lease of this store's own is not taken back: the queue still holds that job (it
# was paused), and its start is refused if another process took the job meanwhile.
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
      AND owner <> %(owner)s AND priority = %(priority)s AND status IN {_LIVE} {{kinds}}
    ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT * FROM unheld UNION ALL SELECT * FROM due UNION ALL SELECT * FROM lapsed
    ORDER BY seq LIMIT %(limit)s
)
UPDATE jobqueue_jobs AS j
SET owner = %(owner)s, lease_id = nextval('jobqueue_lease_ids'),
    lease_until = now() + make_interval(secs => %(lease)s),
    status = CASE WHEN j.status = 'scheduled' AND j.due_at <= %(now)s THEN 'queued'
                  ELSE j.status END,
    due_at = CASE WHEN j.status = 'scheduled' AND j.due_at <= %(now)s THEN NULL
                  ELSE j.due_at END
FROM picked WHERE j.ctid = picked.tid
RETURNING {", ".join("j." + c.strip() for c in _COLUMNS.split(","))}, j.lease_id,
          picked.old_owner
"""

# Jobs claimed while this queue still held an old life of them, handed back: skipped if
# another transaction holds the row (the lease then lapses, and any process claims it).
_HAND_BACK = f"""
WITH back AS (
    UPDATE jobqueue_jobs SET owner = NULL, lease_id = NULL, lease_until = NULL
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM jobqueue_jobs WHERE queue = %(queue)s AND lease_id = ANY(%(leases)s)
        FOR UPDATE SKIP LOCKED))
    RETURNING priority)
SELECT pg_notify('{CHANNEL}', priority::text || %(tag)s || %(queue)s)
FROM (SELECT DISTINCT priority FROM back) AS p
"""

# What says which database a connection reaches, whatever the spelling of its address:
# the cluster's system identifier and the database's name.
_IDENTITY = ("SELECT (SELECT system_identifier FROM pg_control_system())::text, "
             "current_database()")


def _record(row: Sequence[Any]) -> JobRecord:
    (job_id, payload, priority, kind, max_retries, created_at, status, attempts, last_error,
     started_at, finished_at, due_at, seq, result, result_json) = row[:_NCOLS]
    if result is not None:
        result = JsonResult(result) if result_json else bytes(result)
    return JobRecord(job_id, bytes(payload), _PRIORITIES[priority], kind, max_retries,
                     created_at, Status(status), attempts, last_error, started_at,
                     finished_at, due_at, seq, result)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        self._tag = secrets.token_hex(4)  # marks this store's own notices
        #: This store's name in the owner column: host, pid and tag, for people to read.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self._tag}"
        self._pool = ConnectionPool(url, synchronous_commit=fsync, lease=lease)
        try:
            self._run("create the jobqueue tables", create_schema, wrap=False)
            try:  # for people: never at the cost of the queue (see _register)
                self._run("say this process is alive", self._register)
            except StoreError as exc:
                logger.warning("%s: jobqueue stats will not list this process", exc)
        except BaseException:
            self._pool.close()
            raise
        # The lease_id of every job this store holds, by id. Single dict operations: the
        # claimer adds, the queue's calls (under its mutex) and the writer read and remove.
        self._leases: dict[str, int] = {}
        # The start told of each job a worker is about to run, until running() takes it.
        # Single dict operations too: set under the queue's mutex, taken by that worker.
        self._starts: dict[str, Any] = {}
        self._writer = Writer(url, queue=queue, owner=self.owner, tag=self._tag, lease=lease,
                              fsync=fsync, retention=retention, leases=self._leases)
        self._group = GroupInsert(self._insert_grouped, self._duplicate)
        self._on_ready: Callable[[Iterable[Priority] | None], None] | None = None
        self._on_change: Callable[[], None] | None = None
        self._closing = False  # close() started: no new jobs or claims
        self._listener: threading.Thread | None = None
        self._listen_conn: Any = None
        self._database: tuple[str, str] | None = None  # system identifier, name
        # Callers' connections checked to reach this database, with their backend's pid.
        self._checked: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def _register(self, conn: Any) -> None:
        """Say this process is alive (its writer's heartbeats say it again), for people
        (``jobqueue stats``); forget processes gone for a day."""
        conn.execute(ALIVE, {"owner": self.owner, "queue": self.queue, "lease": self.lease})
        conn.execute(FORGET_GONE)

    def _run(self, what: str, work: Callable[[Any], Any], *, retry: bool = True,
             wrap: bool = True) -> Any:
        """``work(conn)`` on a pooled connection. A connection the server dropped (it
        restarted, say) fails the first try only: ``retry`` tries once more, on a new
        connection. Raises StoreError saying ``what`` failed (``wrap``: other errors too)."""
        import psycopg

        for attempt in (1, 2):
            conn = None
            try:
                with self._pool.connection() as conn:
                    return work(conn)
            except psycopg.Error as exc:
                if retry and attempt == 1 and classify(exc, conn) == "connection":
                    continue
                raise StoreError(f"could not {what}: {mask(_first_line(exc), self._url)}"
                                 ) from exc
            except StoreError:
                raise
            except Exception as exc:
                if not wrap:
                    raise
                raise StoreError(f"could not {what}: {exc!r}") from exc
        raise AssertionError("unreachable")

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
        conn = connect(self._url, lease=self.lease)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except Exception as exc:
            conn.close()
            raise StoreError(f"cannot listen for other processes' jobs: "
                             f"{mask(_first_line(exc), self._url)}") from exc
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
                               "reconnecting in %.1f s", mask(_first_line(exc), self._url),
                               backoff)
                time.sleep(backoff)  # a lost server: no busy loop while it is away
                backoff = min(backoff * 2, 5.0)
                try:
                    conn.close()
                    if self._closing:
                        return
                    conn = self._listen_conn = connect(self._url, lease=self.lease)
                    conn.execute(f"LISTEN {CHANNEL}")
                except Exception:  # noqa: S112 - tried again after the backoff
                    continue
                if self._closing:  # close() may have missed this connection: close it here
                    conn.close()
                    return
                self._on_ready(None)  # type: ignore[misc]  # what was missed meanwhile
                self._on_change()  # type: ignore[misc]

    # -- new jobs ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The database numbers jobs itself (``jobqueue_seq``): its latest number, or 0 if
        this role may not read the sequence (it needs only to use it)."""
        try:
            return int(self._run("read the sequence", lambda conn: conn.execute(
                "SELECT last_value FROM jobqueue_seq").fetchone()[0]))
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
        leases = self._insert_own(records, self.owner, (), revive=True)
        self._leases.update((job_id, lease) for job_id, lease in leases.items()
                            if lease is not None)

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
        notify = self._writer.notices(priorities)
        self._insert_own(records, None, notify, revive=revive)
        if self._on_ready is not None:  # this queue needs no notice of its own jobs
            self._on_ready(priorities)

    def _insert_own(self, records: Sequence[JobRecord], owner: str | None,
                    notify: Collection[int], revive: bool) -> dict[str, int | None]:
        """Insert in a transaction of this store's own: a transient failure (a deadlock with
        another producer's batch) left no trace, so it is tried again. A single job shares
        its statement with the jobs other threads insert at the same time (_pg_group)."""
        if len(records) == 1:
            record = records[0]
            return {record.id: self._group.insert(record, owner, notify, revive)}
        return self._insert_tried(records, owner, notify, revive)

    def _insert_grouped(self, records: list[JobRecord], owner: str | None,
                        notify: Collection[int], revive: bool,
                        ) -> dict[str, int | BaseException | None]:
        """The statement of a group of single jobs: each is inserted unless its id is live;
        in the order of their ids, so that two processes' groups never deadlock. If the
        database refuses the values of one (a trigger, a constraint of the application's),
        each goes alone, so that only that one's caller hears of it."""
        records.sort(key=lambda record: record.id)
        try:
            return dict(self._insert_tried(records, owner, notify, revive, partial=True))
        except StoreError as exc:
            # (the SQLSTATE classes classify() calls "data": the values, not the link)
            state = getattr(exc.__cause__, "sqlstate", None) or ""
            if len(records) == 1 or state[:2] not in ("22", "23", "54", "P0"):
                raise
        alone: dict[str, int | BaseException | None] = {}
        for record in records:
            try:
                alone.update(self._insert_tried([record], owner, notify, revive, partial=True))
            except StoreError as refused:
                alone[record.id] = refused
        return alone

    def _duplicate(self, record: JobRecord) -> DuplicateJob:
        live = self.get(record.id)  # (the refusal's cost, not every insert's)
        status = "live" if live is None else live.status.value
        return DuplicateJob(f"job {record.id!r} is already {status} in queue {self.queue!r}")

    def _insert_tried(self, records: Sequence[JobRecord], owner: str | None,
                      notify: Collection[int], revive: bool, partial: bool = False,
                      ) -> dict[str, int | None]:
        import psycopg

        for attempt in range(1, _INSERT_TRIES + 1):
            conn = None
            try:
                with self._pool.connection() as conn:
                    return self._insert(conn, records, owner, notify, own_transaction=True,
                                        revive=revive, partial=partial)
            except StoreError as exc:
                cause = exc.__cause__
                if (attempt < _INSERT_TRIES and isinstance(cause, psycopg.Error)
                        and classify(cause, conn) == "transient"):
                    continue
                raise
        raise AssertionError("unreachable")

    def _check_same_database(self, connection: Any) -> None:
        """Refuse a caller's connection to another database: the jobs would go to a queue
        this one never sees. Compares what the servers say of themselves, not addresses:
        one database has many spellings (``localhost``, ``127.0.0.1``, a socket path)."""
        if connection.closed:
            raise ValueError("connection is closed")
        if connection.info.transaction_status == 3:  # INERROR
            raise StoreError("the connection's transaction has failed already: roll it "
                             "back before enqueueing")
        pid = connection.info.backend_pid
        if self._checked.get(connection) == pid:
            return
        if self._database is None:
            self._database = self._run("read which database this is", lambda conn: tuple(
                conn.execute(_IDENTITY).fetchone()))
        from psycopg.rows import tuple_row

        try:
            theirs = tuple(connection.cursor(row_factory=tuple_row).execute(_IDENTITY)
                           .fetchone())
        except Exception as exc:
            raise StoreError(f"cannot tell which database the connection reaches: "
                             f"{_first_line(exc)}") from exc
        if theirs != self._database:
            info = connection.info
            raise ValueError(f"connection is to database {theirs[1]!r} on {info.host}:"
                             f"{info.port} (system {theirs[0]}), but this queue is in "
                             f"{self._database[1]!r} (system {self._database[0]})")
        self._checked[connection] = pid

    def _insert(
        self, conn: Any, records: Sequence[JobRecord], owner: str | None,
        notify: Collection[int], own_transaction: bool, tag: str | None = None,
        revive: bool = True, partial: bool = False,
    ) -> dict[str, int | None]:
        """Insert ``records``, all or none (``partial``: one statement that skips each live
        id, in a transaction of its own); return the lease_id of each added id."""
        import psycopg
        from psycopg.rows import tuple_row

        if not self._writer.settle({r.id for r in records}):  # a finished life first
            raise StoreError(f"the database has not taken this process's writes for "
                             f"{self._writer.write_wait:.0f} s")
        sql, params = _insert_params(records)
        params.update(queue=self.queue, owner=owner, lease=self.lease, notify=list(notify),
                      tag=self._tag if tag is None else tag, revive=revive)
        try:
            run = conn.cursor(row_factory=tuple_row).execute  # whatever the caller's factory
            if own_transaction and (len(records) == 1 or partial):
                rows = run(sql, params).fetchall()  # one statement: atomic
                if partial:
                    return {row[0]: row[1] for row in rows}
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
            raise StoreError(f"could not store the job: "
                             f"{mask(_first_line(exc), self._url)}") from exc
        if len(rows) != len(records):
            added = {row[0] for row in rows}
            raise self._duplicate(next(r for r in records if r.id not in added))
        return {row[0]: row[1] for row in rows}

    # -- moves of held jobs (under the queue's mutex: never block) --------------------------

    def _tell(self, record: JobRecord, held: bool) -> None:
        job_id = record.id
        lease = self._leases.get(job_id) if held else self._leases.pop(job_id, None)
        if lease is None:
            return  # refused already: another process holds it now (logged then)
        self._writer.tell(record, lease if held else -lease)

    def started(self, record: JobRecord) -> None:
        lease = self._leases.get(record.id)
        if lease is not None:  # else refused already: running() says so
            self._starts[record.id] = self._writer.tell(record, lease, awaited=True)

    def retrying(self, record: JobRecord) -> None:
        self._tell(record, True)

    def finished(self, record: JobRecord) -> None:
        self._tell(record, False)

    def released(self, record: JobRecord) -> None:
        self._tell(record, False)

    def running(self, record: JobRecord) -> None:
        """Before a handler runs: wait until its start is committed under this process's
        lease (which it renews). Raises LeaseLost if another process took the job over, or
        if the start was not confirmed while the lease surely held (the database is away):
        then the job goes back to the queue, for whichever process reaches it."""
        job_id = record.id
        move = self._starts.pop(job_id, None)
        if move is None:
            raise LeaseLost(f"job {job_id!r} is not run here: another process took it over "
                            "while this one held it past its lease")
        deadline = move.told_at + self.lease * _LEASE_SURE
        fate = self._writer.wait_fate(move, deadline)
        if fate == "w" and time.monotonic() < deadline:
            return None
        if fate is None or fate == "w":
            if self._leases.get(job_id) == move.lease:
                self._leases.pop(job_id, None)
            self._writer.retract(move, record._replace(status=Status.QUEUED,
                                                       attempts=record.attempts - 1))
            raise LeaseLost(f"job {job_id!r} is not run here: the database did not confirm "
                            f"this process's lease of it within {self.lease * _LEASE_SURE:.3g}"
                            " s; it goes back to the queue")
        if fate == "d":
            raise LeaseLost(f"job {job_id!r} is not run here: PostgreSQL refused its start "
                            "(see the error above)")
        if fate == "s":
            raise LeaseLost(f"job {job_id!r} is not run here: it was handed back before its "
                            "start was written (close() gave up on it)")
        raise LeaseLost(f"job {job_id!r} is not run here: another process took it over "
                        "while this one held it past its lease")

    def confirm(self, job_id: str, timeout: float | None = None) -> bool:
        """Wait until the latest move told of the job is committed: True, or False if the
        database refused it (another process took the job over, or a repair changed it).
        Raises TimeoutError after ``timeout`` seconds."""
        return self._writer.confirm(job_id, timeout)

    def sync(self) -> None:
        """Wait until every move told so far is written; raise StoreError if the database
        has not taken them for a while."""
        if not self._writer.sync():
            raise StoreError(f"the database has not taken this process's writes for "
                             f"{self._writer.write_wait:.0f} s")

    # -- claims and reads (any thread, may block) -------------------------------------------

    def claim(
        self, priority: Priority, limit: int, kinds: Collection[str] | None
    ) -> list[JobRecord]:
        if self._closing:
            raise StoreError("the PostgreSQL store is closed")
        query = _CLAIM.format(kinds="" if kinds is None else "AND kind = ANY(%(kinds)s)")
        params = {"queue": self.queue, "priority": int(priority), "limit": limit,
                  "owner": self.owner, "lease": self.lease, "now": self.now(),
                  "kinds": None if kinds is None else list(kinds)}
        # A claim whose answer was lost with its connection left rows held by this process
        # that it does not know of: the writer's heartbeat hands them back once they lapse.
        rows = self._run("claim jobs", lambda conn: conn.execute(query, params).fetchall())
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
            if old_owner is not None:
                logger.warning("job %r taken over from %s, whose lease of it lapsed (%s)",
                               record.id, old_owner, record.status.value)
            records.append(record)
        if stale:
            self._run("hand jobs back", lambda conn: conn.execute(_HAND_BACK, {
                "queue": self.queue, "leases": stale, "tag": self._tag}).fetchall())
        return records

    def get(self, job_id: str) -> JobRecord | None:
        if not _storable(job_id):
            return None  # no job can have it: PostgreSQL text is valid UTF-8
        if not self._writer.settle((job_id,)):
            raise StoreError(f"the database has not taken this process's writes for "
                             f"{self._writer.write_wait:.0f} s")
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
        self.get(job_id)  # (writes what this process told of it first)
        row = self._run("requeue the job", lambda conn: conn.execute(
            f"""WITH again AS (
                UPDATE jobqueue_jobs SET status = 'queued', attempts = 0, last_error = NULL,
                    started_at = NULL, finished_at = NULL, due_at = NULL,
                    seq = nextval('jobqueue_seq'), owner = NULL, lease_id = NULL,
                    lease_until = NULL
                WHERE queue = %(queue)s AND id = %(id)s AND status = 'failed'
                RETURNING {_COLUMNS})
            SELECT again.*, pg_notify('{CHANNEL}', priority::text || %(tag)s || %(queue)s)
            FROM again""",
            {"queue": self.queue, "id": job_id, "tag": self._tag},
        ).fetchone(), retry=False)
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
        """Cancel a job no process holds under a live lease (QUEUED, SCHEDULED or RETRYING),
        in one statement; False if there is none such (held, running, finished, unknown).
        A lapsed claim it overrides is cleared: the process that held it (paused, say) can
        neither start the job nor write an outcome over the cancel."""
        if not _storable(job_id):
            return False
        # Tried once: a cancel whose answer was lost may have committed, and a second try
        # would say False. (A pooled connection the server dropped is replaced before.)
        row = self._run("cancel the job", retry=False, work=lambda conn: conn.execute(
            f"""WITH cancelled AS (
                UPDATE jobqueue_jobs SET status = 'cancelled', finished_at = %(now)s,
                    due_at = NULL, owner = NULL, lease_id = NULL, lease_until = NULL
                WHERE queue = %(queue)s AND id = %(id)s AND status IN {_CANCELLABLE}
                  AND (owner IS NULL OR lease_until < now())
                RETURNING id)
            SELECT id, pg_notify('{CHANNEL}', 'd' || %(tag)s || %(queue)s) FROM cancelled""",
            {"queue": self.queue, "id": job_id, "tag": self._tag, "now": time.time()},
        ).fetchone())
        return row is not None

    def has_live(self, due_only: bool = False) -> bool:
        """True while any process has work in this queue (``due_only``: work that is due,
        not SCHEDULED for later)."""
        self.sync()
        statuses = [s for s in _LIVE_STATUSES if not (due_only and s == "scheduled")]
        # (a job scheduled for a time now past stays so in the table until claimed: due)
        due = self.now() if due_only else None
        return bool(self._query_one(
            "SELECT EXISTS (SELECT 1 FROM jobqueue_jobs WHERE queue = %s AND (status = ANY(%s) "
            "OR (status = 'scheduled' AND due_at <= %s)))",
            (self.queue, statuses, due),
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
        return self._run("read the queue", lambda conn: conn.execute(sql, params).fetchall())

    def _query_one(self, sql: str, params: Any) -> Any:
        rows = self._query(sql, params)
        return rows[0] if rows else None

    # -- closing ----------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Write every move told, hand back the jobs still held, stop the threads. Waits up
        to ``timeout`` seconds (None: no limit) for the writer; never raises."""
        if self._writer.closed:
            return
        self._closing = True
        self._writer.close(timeout)
        if self._listener is not None:
            try:
                self._run("stop the listener", lambda conn: conn.execute(
                    "SELECT pg_notify(%s, %s)", (CHANNEL, "s" + self._tag)), retry=False)
            except Exception:  # noqa: S110 - the listener looks at _closing every second
                pass
            self._listener.join(None if timeout is None else max(timeout, 1.5))
            try:
                self._listen_conn.close()
            except Exception:  # noqa: S110 - a connection the server already ended
                pass
        self._pool.close()


class _Refused(Exception):
    """Some ids were live already: carries the rows that were inserted, then undone."""

    def __init__(self, rows: list[Any]) -> None:
        super().__init__()
        self.rows = rows
