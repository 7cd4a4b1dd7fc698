"""Connections to the PostgreSQL store's database, and what their errors mean.

Passwords never leave here in a message: :func:`~jobqueue.final._masking.mask` hides the
one a URL holds.
"""

from __future__ import annotations

import contextlib
import select
import threading
from collections.abc import Iterator
from typing import Any

from jobqueue.errors import StoreError
from jobqueue.final._masking import mask
from jobqueue.final.stores.postgres.rows import first_line

__all__ = ["CHANNEL", "ConnectionPool", "classify", "connect", "mask", "psycopg_module"]

#: Every queue of a database notifies on this channel (queries.sql names it too); the
#: payload names the queue.
CHANNEL = "jobqueue"

# libpq's settings for a TCP connection, unless the URL gives its own: a server that stops
# answering (a cut link, a host gone) fails the connection in seconds instead of leaving a
# statement waiting for ever. Unix sockets ignore them.
_KEEPALIVE = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
              "keepalives_count": "3", "tcp_user_timeout": "10000", "connect_timeout": "10"}

def psycopg_module() -> Any:
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
    psycopg = psycopg_module()
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
        raise StoreError(f"cannot connect to the database: {mask(first_line(exc), url)}"
                         ) from exc
    return conn


def classify(exc: BaseException, conn: Any) -> str:
    """What a failed statement means: ``"connection"`` (connect again), ``"transient"`` (try
    the same again soon), ``"data"`` (the values: trying again would fail again; a value
    JSON cannot hold counts too) or ``"other"``."""
    import psycopg

    if not isinstance(exc, psycopg.Error):
        return "data" if isinstance(exc, (ValueError, TypeError, OverflowError)) else "other"
    state = exc.sqlstate or ""
    if conn is None or conn.broken or state[:2] == "08" or (
            state in ("57P01", "57P02", "57P03")) or (
            not state and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))):
        return "connection"
    if state[:2] in ("40", "53") or state in ("55P03", "57014"):
        return "transient"
    # A data exception; a constraint or a trigger of the application refusing the row
    # (class 23, PL/pgSQL's P0); a value past a limit (54: 1 GB, say).
    if state[:2] in ("22", "23", "54", "P0"):
        return "data"
    return "other"


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
