"""The benchmark's PostgreSQL: one throwaway server for the whole run, started on first use.

The server keeps PostgreSQL's durable defaults (``fsync=on``); each system sets its own
``synchronous_commit``. Where no server can start (no binaries on PATH), the PostgreSQL
rows are skipped, and the run says why.
"""

from __future__ import annotations

import atexit
import threading

from bench.pgserver import PostgresServer, Unavailable

__all__ = ["new_database", "unavailable"]

_lock = threading.Lock()  # guards _server and _why
_server: PostgresServer | None = None
_why: str | None = None


def _start() -> PostgresServer | None:
    global _server, _why
    with _lock:
        if _server is None and _why is None:
            try:
                import psycopg  # noqa: F401 - the 'postgres' extra
            except ImportError:
                _why = "psycopg is not installed (pip install '.[bench]')"
                return None
            try:
                _server = PostgresServer.start(durable=True)
            except Unavailable as exc:
                _why = f"no PostgreSQL server: {str(exc).splitlines()[0]}"
                return None
            atexit.register(_server.stop)
        return _server


def unavailable() -> str | None:
    """None if the PostgreSQL systems can run, else why not."""
    _start()
    return _why


def new_database() -> str:
    server = _start()
    if server is None:
        raise RuntimeError(_why)
    return server.new_database()


def uri(url: str) -> str:
    """A key=value URL of the bench's server as a postgresql:// URI (for peers that need one)."""
    server = _start()
    assert server is not None
    return server.uri(url.rsplit("dbname=", 1)[1])
