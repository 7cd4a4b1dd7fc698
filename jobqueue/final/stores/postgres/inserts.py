"""New jobs of the PostgreSQL store: alone, grouped with other threads' (:mod:`.group_insert`),
in a batch, or inside a caller's transaction.

A live id is a duplicate (``DuplicateJob``), a finished one starts a new life. Inserts in a
transaction of the store's own are tried again when PostgreSQL calls a failure transient
(a deadlock with another producer's batch, say): it left no trace. A caller's connection
must reach the store's own database: checked by what the server says of itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Sequence
from typing import Any

from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.postgres.connections import ConnectionPool, classify, mask
from jobqueue.final.stores.postgres.group_insert import GroupInsert
from jobqueue.final.stores.postgres.listener import FOREIGN
from jobqueue.final.stores.postgres.queries import INSERT_MANY, INSERT_ONE, Q
from jobqueue.final.stores.postgres.rows import first_line
from jobqueue.final.stores.postgres.writer import Writer

__all__ = ["Inserts"]

#: How often an insert in a transaction of its own is tried when PostgreSQL calls a failure
#: transient (a deadlock with another producer's batch, say): it left no trace.
_INSERT_TRIES = 3


def _insert_params(records: Sequence[JobRecord]) -> tuple[str, dict[str, Any]]:
    if len(records) == 1:
        r = records[0]
        return INSERT_ONE, {
            "id": r.id, "payload": r.payload, "priority": int(r.priority), "kind": r.kind,
            "max_retries": r.max_retries, "created": r.created_at,
            "status": r.status.value, "due": r.due_at,
        }
    return INSERT_MANY, {
        "statuses": [r.status.value for r in records],
        "due": [r.due_at for r in records],
        "ids": [r.id for r in records],
        "payloads": [r.payload for r in records],
        "priorities": [int(r.priority) for r in records],
        "kinds": [r.kind for r in records],
        "max_retries": [r.max_retries for r in records],
        "created": [r.created_at for r in records],
    }


class Inserts:
    """The inserts of one store. ``get`` reads a job (to say what a duplicate is);
    ``run(what, work)`` runs ``work(conn)`` on a pooled connection, tried again once if the
    connection was lost (the store's)."""

    def __init__(
        self, url: str, *, queue: str, owner: str, tag: str, lease: float,
        pool: ConnectionPool, writer: Writer,
        get: Callable[[str], JobRecord | None], run: Callable[[str, Callable[[Any], Any]], Any],
    ) -> None:
        self._url = url
        self.queue = queue
        self.owner = owner
        self._tag = tag
        self.lease = lease
        self._pool = pool
        self._writer = writer
        self.get = get
        self._run = run
        self._group = GroupInsert(self._insert_grouped, self._duplicate)
        self._database: tuple[str, str] | None = None  # system identifier, name
        # Callers' connections checked to reach this database, with their backend's pid.
        self._checked: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def in_transaction(
        self, records: Sequence[JobRecord], connection: Any, revive: bool
    ) -> None:
        """Insert jobs unheld inside the caller's transaction (``connection``, a psycopg
        connection): they exist once it commits, and never if it rolls back."""
        import psycopg

        if not isinstance(connection, psycopg.Connection):
            raise TypeError(f"connection must be a psycopg.Connection (sync, psycopg 3), "
                            f"not {type(connection).__name__}")
        self._check_same_database(connection)
        # Notified at its commit, to every listener (this one too: it cannot know when).
        self._insert(connection, records, None, [0, 1, 2], own_transaction=False,
                     tag=FOREIGN, revive=revive)

    def own(self, records: Sequence[JobRecord], owner: str | None,
            notify: Collection[int], revive: bool) -> dict[str, int | None]:
        """Insert in a transaction of this store's own: a transient failure (a deadlock with
        another producer's batch) left no trace, so it is tried again. A single job shares
        its statement with the jobs other threads insert at the same time (:mod:`.group_insert`)."""
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
                conn.execute(Q["identity"]).fetchone()))
        from psycopg.rows import tuple_row

        try:
            theirs = tuple(connection.cursor(row_factory=tuple_row).execute(Q["identity"])
                           .fetchone())
        except Exception as exc:
            raise StoreError(f"cannot tell which database the connection reaches: "
                             f"{first_line(exc)}") from exc
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
                             f"{mask(first_line(exc), self._url)}") from exc
        if len(rows) != len(records):
            added = {row[0] for row in rows}
            raise self._duplicate(next(r for r in records if r.id not in added))
        return {row[0]: row[1] for row in rows}


class _Refused(Exception):
    """Some ids were live already: carries the rows that were inserted, then undone."""

    def __init__(self, rows: list[Any]) -> None:
        super().__init__()
        self.rows = rows
