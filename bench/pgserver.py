"""A throwaway PostgreSQL server, for the tests and the benchmark.

Started from the binaries on ``PATH`` (``initdb``, ``pg_ctl``): a data directory and a Unix
socket in a new temporary directory, and a TCP port on loopback only if asked for (the
fault tests put a relay they can cut in front of it). ``initdb`` refuses to run as root, so
as root the server runs as the ``postgres`` system user. The fault tests restart it, or
crash it (``pg_ctl stop -m immediate``), and start it again.
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

    def __init__(self, directory: Path, user: str | None, port: int | None = None) -> None:
        self.directory = directory
        self.port = port
        self._user = user
        self._names = itertools.count()
        self._options = ""

    @classmethod
    def start(cls, durable: bool = False, port: int | None = None) -> PostgresServer:
        """Start a server; ``durable`` keeps PostgreSQL's fsync on (the benchmark's);
        ``port`` also listens on 127.0.0.1 at that port."""
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
        server = cls(directory, user, port)
        settings = dict(_COMMON_SETTINGS, unix_socket_directories=str(directory))
        if not durable:
            settings.update(_TEST_SETTINGS)
        if port is not None:
            settings.update(listen_addresses="127.0.0.1", port=str(port))
        server._options = " ".join(f"-c {key}={value}" for key, value in settings.items())
        try:
            server._run("initdb", "-D", str(directory / "data"), "--auth=trust", "-U",
                        "postgres", "-E", "UTF8", "--no-instructions", "--no-sync")
            server._pg_ctl("start")
        except subprocess.CalledProcessError as exc:
            log = directory / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            shutil.rmtree(directory, ignore_errors=True)
            raise Unavailable(f"PostgreSQL did not start: {exc.stderr or exc}\n{tail}") from exc
        return server

    def _run(self, *command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, text=True, user=self._user,
                       cwd=self.directory, timeout=120)

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-l",
                  str(self.directory / "server.log"), "-o", self._options, "-w", action, *args)

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast`` (clients told, transactions rolled back) or
        ``immediate`` (the server crashes, and recovers from its WAL as it starts)."""
        self._pg_ctl("restart", "-m", mode)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server, keeping its data (``start_again`` brings it back)."""
        self._pg_ctl("stop", "-m", mode)

    def start_again(self) -> None:
        self._pg_ctl("start")

    def url(self, database: str = "postgres", port: int | None = None) -> str:
        """A key=value URL; with ``port``, over TCP to 127.0.0.1 at that port (the
        server's, or a relay's in front of it)."""
        if port is not None:
            return f"host=127.0.0.1 port={port} user=postgres dbname={database}"
        if self.port is not None:  # (the socket is named after the port too)
            return f"host={self.directory} port={self.port} user=postgres dbname={database}"
        return f"host={self.directory} user=postgres dbname={database}"

    def uri(self, database: str) -> str:
        """The same database as a ``postgresql://`` URI, as the command line takes it."""
        port = "" if self.port is None else f"&port={self.port}"
        return f"postgresql://postgres@/{database}?host={self.directory}{port}"

    def new_database(self) -> str:
        """Make an empty database; return its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        """Stop the server, if it runs, and delete everything it had."""
        try:
            self._pg_ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass  # stopped already
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
