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
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from jobqueue._priority import Priority
from jobqueue.errors import StoreError
from jobqueue.final._states import LIVE, Status
from jobqueue.final.stores.base import JobRecord, LeaseLost, QueueStats
from jobqueue.final.stores.postgres.connections import ConnectionPool, classify, mask
from jobqueue.final.stores.postgres.inserts import Inserts
from jobqueue.final.stores.postgres.leases import Leases
from jobqueue.final.stores.postgres.listener import Listener, stop_notice
from jobqueue.final.stores.postgres.queries import Q
from jobqueue.final.stores.postgres.retention import Retention
from jobqueue.final.stores.postgres.rows import NCOLS, first_line, from_row, storable
from jobqueue.final.stores.postgres.schema import create_schema
from jobqueue.final.stores.postgres.writer import Writer

__all__ = ["PostgresStore"]

logger = logging.getLogger("jobqueue")

_PRIORITIES = tuple(Priority)
#: A start confirmed later than this share of a lease after it was told is not run: the
#: lease it renewed may have lapsed by the time this process heard of it.
_LEASE_SURE = 0.9
#: The statuses of live jobs, for has_live().
_LIVE_STATUSES = tuple(sorted(status.value for status in LIVE))


class PostgresStore:
    """The :class:`~jobqueue.final.stores.base.SharedStore` contract in PostgreSQL, shared
    by many processes. Raises StoreError if the database cannot be reached or is newer."""

    persistent = True
    ran = None  # (running() needs no word back: the outcome's write says it all)
    #: The claimer looks for jobs at least this often (seconds), notified or not.
    poll_interval = 1.0

    def __init__(
        self, url: str, *, queue: str = "default", fsync: bool = False,
        retention: int = 100_000, lease: float = 30.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        #: The time in epoch seconds against which scheduled jobs come due (the queue's).
        self.now = now
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
        # The lease_id of every job this store holds, by id (see Leases.held).
        leases = Leases(queue, self.owner, self._tag, lease)
        self._leases = leases.held
        # The start told of each job a worker is about to run, until running() takes it.
        # Single dict operations: set under the queue's mutex, taken by that worker.
        self._starts: dict[str, Any] = {}
        self._writer = Writer(url, leases=leases, fsync=fsync,
                              retention=Retention(queue, retention))
        self._inserts = Inserts(url, queue=queue, owner=self.owner, tag=self._tag, lease=lease,
                                pool=self._pool, writer=self._writer, get=self.get,
                                run=self._run)
        self._on_ready: Callable[[Iterable[Priority] | None], None] | None = None
        self._closing = False  # close() started: no new jobs or claims
        self._listener: Listener | None = None

    @property
    def shared(self) -> PostgresStore:
        return self

    def _register(self, conn: Any) -> None:
        """Say this process is alive (its writer's heartbeats say it again), for people
        (``jobqueue stats``); forget processes gone for a day."""
        conn.execute(Q["alive"], {"owner": self.owner, "queue": self.queue,
                                  "lease": self.lease})
        conn.execute(Q["forget_gone"])

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
                raise StoreError(f"could not {what}: {mask(first_line(exc), self._url)}"
                                 ) from exc
            except StoreError:
                raise
            except Exception as exc:
                if not wrap:
                    raise
                raise StoreError(f"could not {what}: {exc!r}") from exc
        raise AssertionError("unreachable")

    # -- wake-ups ---------------------------------------------------------------------------

    # -- wake-ups ---------------------------------------------------------------------------

    def listen(
        self,
        on_ready: Callable[[Iterable[Priority] | None], None],
        on_change: Callable[[], None],
    ) -> None:
        """Start hearing other processes (:mod:`.listener`)."""
        self._on_ready = on_ready
        self._listener = Listener(self._url, queue=self.queue, tag=self._tag, lease=self.lease,
                                  on_ready=on_ready, on_change=on_change)

    # -- new jobs ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The database numbers jobs itself (``jobqueue_seq``): its latest number, or 0 if
        this role may not read the sequence (it needs only to use it)."""
        try:
            return int(self._run("read the sequence", lambda conn: conn.execute(
                Q["last_seq"]).fetchone()[0]))
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
        assert isinstance(ticket, Sequence)
        leases = self._inserts.own(ticket, self.owner, (), revive=True)
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
            self._inserts.in_transaction(records, connection, revive)
            return
        priorities = {r.priority for r in records}
        notify = self._writer.notices(priorities)
        self._inserts.own(records, None, notify, revive=revive)
        if self._on_ready is not None:  # this queue needs no notice of its own jobs
            self._on_ready(priorities)

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
        query = Q["claim"]
        params = {"queue": self.queue, "priority": int(priority), "limit": limit,
                  "owner": self.owner, "lease": self.lease, "now": self.now(),
                  "kinds": None if kinds is None else list(kinds)}
        # A claim whose answer was lost with its connection left rows held by this process
        # that it does not know of: the writer's heartbeat hands them back once they lapse.
        rows = self._run("claim jobs", lambda conn: conn.execute(query, params).fetchall())
        rows.sort(key=lambda row: row[12])  # by seq: arrival order
        records, stale = [], []
        for row in rows:
            record = from_row(row)
            old = self._leases.get(record.id)
            if old is not None:
                # A new life of a job this queue still holds an old life of (it was paused
                # while another process finished the old one): the old lease is gone, and
                # this one goes back, for a process that does not hold the id.
                if self._leases.get(record.id) == old:
                    self._leases.pop(record.id, None)
                stale.append(row[NCOLS])
                logger.info("job %r: claimed a new life of it while this queue still held an "
                            "old one, which another process took over; handed back", record.id)
                continue
            self._leases[record.id] = row[NCOLS]
            old_owner = row[NCOLS + 1]
            if old_owner is not None:
                logger.warning("job %r taken over from %s, whose lease of it lapsed (%s)",
                               record.id, old_owner, record.status.value)
            records.append(record)
        if stale:
            self._run("hand jobs back", lambda conn: conn.execute(Q["hand_back"], {
                "queue": self.queue, "leases": stale, "tag": self._tag}).fetchall())
        return records

    def get(self, job_id: str) -> JobRecord | None:
        if not storable(job_id):
            return None  # no job can have it: PostgreSQL text is valid UTF-8
        if not self._writer.settle((job_id,)):
            raise StoreError(f"the database has not taken this process's writes for "
                             f"{self._writer.write_wait:.0f} s")
        row = self._query_one(Q["get"], {"queue": self.queue, "id": job_id})
        return None if row is None else from_row(row)

    def dead_letters(self) -> list[JobRecord]:
        self.sync()
        return [from_row(row) for row in self._query(Q["dead_letters"], {"queue": self.queue})]

    def requeue(self, job_id: str) -> None:
        """Make a FAILED job QUEUED again from attempt 0, for any process to claim, in one
        statement: two processes requeueing it at once run it once. Raises KeyError for an
        unknown id and ValueError for a job that is not FAILED."""
        if not storable(job_id):
            raise KeyError(job_id)
        self.get(job_id)  # (writes what this process told of it first)
        row = self._run("requeue the job", lambda conn: conn.execute(Q["requeue"], {
            "queue": self.queue, "ids": [job_id], "tag": self._tag}).fetchone(), retry=False)
        if row is None:
            record = self.get(job_id)
            if record is None:
                raise KeyError(job_id)
            raise ValueError(f"job {job_id!r} is {record.status.value}, not failed")
        if self._on_ready is not None:
            self._on_ready((_PRIORITIES[row[1]],))

    def cancel(self, job_id: str) -> bool:
        """Cancel a job no process holds under a live lease (QUEUED, SCHEDULED or RETRYING),
        in one statement; False if there is none such (held, running, finished, unknown).
        A lapsed claim it overrides is cleared: the process that held it (paused, say) can
        neither start the job nor write an outcome over the cancel."""
        if not storable(job_id):
            return False
        # Tried once: a cancel whose answer was lost may have committed, and a second try
        # would say False. (A pooled connection the server dropped is replaced before.)
        row = self._run("cancel the job", retry=False, work=lambda conn: conn.execute(
            Q["cancel"], {"queue": self.queue, "ids": [job_id], "tag": self._tag,
                          "now": time.time()}).fetchone())
        return row is not None

    def has_live(self, due_only: bool = False) -> bool:
        """True while any process has work in this queue (``due_only``: work that is due,
        not SCHEDULED for later)."""
        self.sync()
        statuses = [s for s in _LIVE_STATUSES if not (due_only and s == "scheduled")]
        return bool(self._query_one(Q["has_live"], {
            "queue": self.queue, "statuses": statuses,
            "due": self.now() if due_only else None})[0])

    def stats(self) -> QueueStats:
        self.sync()
        counts = {status: 0 for status in Status}
        per_priority = {p: {status: 0 for status in Status} for p in Priority}
        for priority, status, count in self._query(Q["counts"], {"queue": self.queue}):
            counts[Status(status)] += count
            per_priority[_PRIORITIES[priority]][Status(status)] = count
        holders = self._query(Q["holders"], {"queue": self.queue})
        return QueueStats.of(counts, per_priority, len(holders))

    def _query(self, sql: str, params: Any) -> list[Any]:
        rows: list[Any] = self._run(
            "read the queue", lambda conn: conn.execute(sql, params).fetchall())
        return rows

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
        if self._listener is not None:
            self._listener.stopping()
        self._writer.close(timeout)
        if self._listener is not None:
            payload = stop_notice(self._tag)
            self._listener.stop(lambda: self._run("stop the listener", lambda conn: conn.execute(
                Q["notify"], {"payload": payload}), retry=False), timeout)
        self._pool.close()
