"""A throwaway PostgreSQL server, for the tests and the benchmark.

Started from the binaries on ``PATH`` (``initdb``, ``pg_ctl``): a data directory and a Unix
socket in a new temporary directory, no TCP port. ``initdb`` refuses to run as root, so as
root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer", "Unavailable"]

_TEST_SETTINGS = {
    # Nothing the tests check needs the server to survive a power cut.
    "fsync": "off",
    "full_page_writes": "off",
}
_COMMON_SETTINGS = {
    "listen_addresses": "''",
    "max_connections": "300",
    "shared_buffers": "128MB",
}


class Unavailable(Exception):
    """No PostgreSQL server can be started here; the message says why."""


class PostgresServer:
    """One server; ``url(name)`` reaches a database in it, ``new_database()`` makes one."""

    def __init__(self, directory: Path, user: str | None) -> None:
        self.directory = directory
        self._user = user
        self._names = itertools.count()

    @classmethod
    def start(cls, durable: bool = False) -> PostgresServer:
        """Start a server; ``durable`` keeps PostgreSQL's fsync on (the benchmark's)."""
        missing = [tool for tool in ("initdb", "pg_ctl") if shutil.which(tool) is None]
        if missing:
            raise Unavailable(f"PostgreSQL is not installed here: {' and '.join(missing)} "
                              "not on PATH")
        user = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root, and no 'postgres' user to run the "
                                  "server as (initdb refuses root)") from None
            user = "postgres"
        directory = Path(tempfile.mkdtemp(prefix="jobqueue-pg-"))
        if user is not None:
            shutil.chown(directory, user)
        server = cls(directory, user)
        settings = dict(_COMMON_SETTINGS, unix_socket_directories=str(directory))
        if not durable:
            settings.update(_TEST_SETTINGS)
        options = " ".join(f"-c {key}={value}" for key, value in settings.items())
        try:
            server._run("initdb", "-D", str(directory / "data"), "--auth=trust", "-U",
                        "postgres", "-E", "UTF8", "--no-instructions", "--no-sync")
            server._run("pg_ctl", "-D", str(directory / "data"), "-l",
                        str(directory / "server.log"), "-o", options, "-w", "start")
        except subprocess.CalledProcessError as exc:
            log = directory / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            shutil.rmtree(directory, ignore_errors=True)
            raise Unavailable(f"PostgreSQL did not start: {exc.stderr or exc}\n{tail}") from exc
        return server

    def _run(self, *command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, text=True, user=self._user,
                       cwd=self.directory, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"host={self.directory} user=postgres dbname={database}"

    def uri(self, database: str) -> str:
        """The same database as a ``postgresql://`` URI, as the command line takes it."""
        return f"postgresql://postgres@/{database}?host={self.directory}"

    def new_database(self) -> str:
        """Make an empty database; return its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
