"""Suite-wide checks: no test may leave a ``jobqueue-`` thread running.

Threads a test starts itself are daemon threads: if the code under test leaves one blocked
(the failure it tests for), the test fails and the run ends, instead of hanging at exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(store: str, tmp_path: Path) -> Iterator[Make]:
    """Build queues with the store under test; close them all afterwards."""
    queues: list[final.JobQueue] = []

    def build(**fields: object) -> final.JobQueue:
        if store == "lmdb":
            fields.setdefault("persist_path", str(tmp_path / f"jobs-{len(queues)}"))
        queue = final.JobQueue(final.Config(**fields))  # type: ignore[arg-type]
        queues.append(queue)
        return queue

    yield build
    for queue in queues:
        queue.close(timeout=5)
