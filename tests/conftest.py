"""Suite-wide checks: no test may leave a ``jobqueue-`` thread running.

Threads a test starts itself are daemon threads: if the code under test leaves one blocked
(the failure it tests for), the test fails and the run ends, instead of hanging at exit.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.pgserver import PostgresServer, Unavailable
from jobqueue import final

Make = Callable[..., final.JobQueue]


def jobqueue_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("jobqueue-")]


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    """Fail the test that leaves a library thread alive.

    The naive stage's close() does not wait (that is one of its deliberate problems), so its
    idle workers get a short grace period to exit; every other stage must have joined its
    threads before close() returned, and its own tests check that immediately.
    """
    yield
    for thread in jobqueue_threads():
        thread.join(timeout=10)
    leaked = [t.name for t in jobqueue_threads()]
    assert not leaked, f"threads still alive after the test: {leaked}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``bounded`` check that enqueue() waits for room: a queue in PostgreSQL
    never does (its database holds the backlog), so they run over the other stores only."""
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        store = params.params.get("store") if params is not None else None
        if store == "postgres" and item.get_closest_marker("bounded"):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def start_server(port: int | None = None) -> PostgresServer:
    """A throwaway PostgreSQL server (see bench/pgserver.py). Where none can start, the test
    skips, saying why; in CI (``CI=true``) that is a failure instead: CI must run them."""
    try:
        return PostgresServer.start(port=port)
    except Unavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and no PostgreSQL server: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run."""
    server = start_server()
    yield server
    server.remove()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database for one test."""
    return postgres_server.new_database()


@pytest.fixture
def config(database_url: str) -> final.Config:
    """A queue in a fresh database, with a handler that does nothing. It holds up to 64
    jobs beyond its running ones (a fixed prefetch), as the tests of what a process holds
    need; the default, which follows the pace of the jobs, has tests of its own."""
    return final.Config(database_url=database_url, handler=lambda p: None, prefetch=64)


@pytest.fixture
def queues() -> Iterator[list[final.JobQueue]]:
    """Queues a test opens with :func:`open_queue`, closed afterwards."""
    opened: list[final.JobQueue] = []
    yield opened
    for queue in opened:
        queue.close(timeout=10)


def open_queue(queues: list[final.JobQueue], config: final.Config, **fields: object
               ) -> final.JobQueue:
    """A queue with ``config``, changed by ``fields``; the ``queues`` fixture closes it."""
    queue = final.JobQueue(dataclasses.replace(config, **fields))
    queues.append(queue)
    return queue


@pytest.fixture(params=["memory", "lmdb", "postgres"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Make]:
    """Build queues with the store under test; close them all afterwards."""
    queues: list[final.JobQueue] = []
    url = request.getfixturevalue("database_url") if store == "postgres" else None

    def build(**fields: object) -> final.JobQueue:
        if store == "lmdb":
            fields.setdefault("persist_path", str(tmp_path / f"jobs-{len(queues)}"))
        elif store == "postgres":
            fields.setdefault("database_url", url)
            fields.setdefault("queue_name", f"jobs-{len(queues)}")
            # What these tests check of the queue's own table needs it to hold jobs beyond
            # the running ones, as the other stores do: a fixed prefetch (see config).
            fields.setdefault("prefetch", 1000)
        queue = final.JobQueue(final.Config(**fields))  # type: ignore[arg-type]
        queues.append(queue)
        return queue

    yield build
    for queue in queues:
        queue.close(timeout=5)
