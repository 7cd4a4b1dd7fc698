"""``jobqueue worker MODULE:ATTR``: worker processes run an app's tasks, a producer that
never runs them enqueues, and signals close the workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from jobqueue import final
from jobqueue.final import Status
from tests.test_final_contract import until

pytestmark = pytest.mark.timeout(120)

TASKS = '''
import os
import pathlib
import time

from jobqueue import final

STORE = os.environ["JOBQUEUE_TEST_STORE"]
if "=" in STORE or STORE.startswith("postgresql://"):
    config = final.Config(database_url=STORE, queue_name="work", num_workers=0)
else:
    config = final.Config(persist_path=STORE)
app = final.App(config)
MARKS = pathlib.Path(os.environ.get("JOBQUEUE_TEST_MARKS", "."))


@app.task(kind="add")
def add(a: int, b: int) -> list[int]:
    return [a + b, os.getpid()]


@app.task(kind="meet")
def meet(n: int, of: int) -> int:
    """Start, then wait until `of` jobs have started: possible only if they run at once."""
    (MARKS / f"started-{n}").touch()
    deadline = time.monotonic() + 20
    while len(list(MARKS.glob("started-*"))) < of:
        if time.monotonic() > deadline:
            raise TimeoutError("the others never started: one process held them")
        time.sleep(0.005)
    return os.getpid()


@app.task(kind="stuck")
def stuck() -> None:
    (MARKS / "stuck").touch()
    if final.current_job().wait(60):
        raise RuntimeError("stopped by close()")


@app.task(kind="refuse", give_up_on=ValueError)
def refuse(text: str) -> None:
    raise ValueError(text)


not_an_app = 42
'''


class Worker:
    """``jobqueue worker tasks:app`` in a child process, from a directory with tasks.py."""

    def __init__(self, directory: Path, store: str, *args: str) -> None:
        env = dict(os.environ, JOBQUEUE_TEST_STORE=store,
                   JOBQUEUE_TEST_MARKS=str(directory / "marks"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobqueue", "worker", *args],
            cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def ready(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert "ready" in line, (line, self.finish())
        return line

    def stderr_until(self, text: str) -> str:
        """Read stderr until a line holding ``text``; the lines read."""
        assert self.process.stderr is not None
        lines = []
        for line in self.process.stderr:
            lines.append(line)
            if text in line:
                return "".join(lines)
        raise AssertionError(f"{text!r} never came: {''.join(lines)}")

    def finish(self, timeout: float = 60) -> str:
        """Wait for the exit; everything it wrote to stderr."""
        _, err = self.process.communicate(timeout=timeout)
        return err


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.communicate()


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "marks").mkdir()
    return tmp_path


def producer_app(url: str) -> final.App:
    """The tasks as a producer declares them: enqueued here, never run here."""
    app = final.App(final.Config(database_url=url, queue_name="work", num_workers=0))

    @app.task(kind="add")
    def add(a: int, b: int) -> list[int]:
        raise AssertionError("a producer never runs a task")

    @app.task(kind="meet")
    def meet(n: int, of: int) -> int:
        raise AssertionError("a producer never runs a task")

    @app.task(kind="stuck")
    def stuck() -> None:
        raise AssertionError("a producer never runs a task")

    return app


class TestPostgres:
    def test_two_workers_and_a_producer(
        self, directory: Path, database_url: str, workers: list[Worker]
    ) -> None:
        for _ in range(2):
            workers.append(Worker(directory, database_url, "tasks:app", "--workers", "2"))
        for worker in workers:
            line = worker.ready()
            assert "queue 'work', 2 workers, prefetch auto, 4 tasks: add, meet, refuse, " \
                   "stuck" in line
            assert f"pid {worker.process.pid}" in line
        app = producer_app(database_url)
        with app.open():
            # Four jobs that finish only if all four run at once: two in each process, as
            # neither holds a job it has no free worker for. (First: right after a burst of
            # short jobs a process holds what its workers finished in the last 50 ms.)
            met = [app.tasks["meet"].enqueue(n, 4) for n in range(4)]
            pids = [handle.result(30) for handle in met]
            sums = [app.tasks["add"].enqueue(i, i) for i in range(50)]
            assert [handle.result(30)[0] for handle in sums] == [2 * i for i in range(50)]
        assert sorted(pids) == sorted(2 * [w.process.pid for w in workers])
        for worker in workers:
            worker.process.send_signal(signal.SIGTERM)
        for worker in workers:
            err = worker.finish()
            assert worker.process.returncode == 0, err
            assert "SIGTERM: closing" in err and "every accepted job finished" in err

    def test_failures_are_logged_at_info_by_default(
        self, directory: Path, database_url: str, workers: list[Worker]
    ) -> None:
        worker = Worker(directory, database_url, "tasks:app", "--queue", "other")
        workers.append(worker)
        assert "queue 'other', 4 workers" in worker.ready()
        config = final.Config(database_url=database_url, queue_name="other", num_workers=0)
        with final.JobQueue(config) as producer:
            producer.enqueue(final.Job("bad", b'{"args":["no such user"],"kwargs":{}}',
                                       kind="refuse"))
            assert producer.wait("bad", 30) is Status.FAILED
            assert producer.info("bad").attempts == 1  # type: ignore[union-attr]
        worker.process.send_signal(signal.SIGINT)
        err = worker.finish()
        assert worker.process.returncode == 0
        assert "job 'bad' failed (attempt 1), not retried: ValueError: no such user" in err

    def test_a_second_signal_stops_waiting(
        self, directory: Path, database_url: str, workers: list[Worker]
    ) -> None:
        worker = Worker(directory, database_url, "tasks:app", "--workers", "1")
        workers.append(worker)
        worker.ready()
        app = producer_app(database_url)
        with app.open():
            handle = app.tasks["stuck"].options(id="stuck").enqueue()
            assert until(lambda: (directory / "marks" / "stuck").exists(), 30)
            worker.process.send_signal(signal.SIGTERM)
            worker.stderr_until("SIGTERM: closing")
            worker.process.send_signal(signal.SIGTERM)
            err = worker.finish()
            assert worker.process.returncode == 4, err
            assert "SIGTERM again: not waiting for running jobs" in err
            assert "1 jobs left unfinished" in err
            assert handle.status() is Status.QUEUED  # handed back, for any process
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT owner FROM jobqueue_jobs WHERE id = 'stuck'"
                                ).fetchone() == (None,)


class TestLmdb:
    def test_a_worker_runs_the_stored_jobs_and_owns_the_store(
        self, directory: Path, tmp_path: Path, workers: list[Worker]
    ) -> None:
        store = str(tmp_path / "jobs")

        def hold(payload: bytes) -> None:
            if final.current_job().wait(10):
                raise RuntimeError("left for the worker")

        queue = final.JobQueue(final.Config(persist_path=store, num_workers=1,
                                            handlers={"add": hold}))
        for i in range(5):
            queue.enqueue(final.Job(f"add-{i}", json.dumps({"args": [i, 1], "kwargs": {}})
                                    .encode(), kind="add"))
        queue.close(timeout=0.05)  # leaves them stored, for the worker
        worker = Worker(directory, store, "tasks:app", "--workers", "2")
        workers.append(worker)
        assert f"store {store!r} (LMDB), 2 workers" in worker.ready()
        other = Worker(directory, store, "tasks:app")
        assert other.finish().count(f"owned by process {worker.process.pid}") == 1
        assert other.process.returncode == 1
        worker.process.send_signal(signal.SIGTERM)
        assert worker.finish() and worker.process.returncode == 0
        with final.JobQueue(final.Config(persist_path=store, num_workers=1)) as queue:
            for i in range(5):
                assert queue.result(f"add-{i}", 0)[0] == i + 1


@pytest.mark.parametrize(("target", "store", "extra", "message"), [
    ("tasks", "x", [], "is not MODULE:ATTR"),
    ("nowhere:app", "x", [], "no module named 'nowhere'"),
    ("tasks:missing", "x", [], "module 'tasks' has no 'missing'"),
    ("tasks:not_an_app", "x", [], "tasks:not_an_app is a int, not a jobqueue.final.App"),
    ("broken:app", "x", [], "importing 'broken' raised ZeroDivisionError"),
    ("memory:app", "x", [], "keeps its jobs in memory"),
    ("memory:config", "x", [], "a Config with no handler or handlers"),
    ("tasks:app", "STORE", ["--queue", "q"], "--queue names a queue in PostgreSQL"),
    ("tasks:app", "STORE", ["--workers", "0"], "--workers must be >= 1"),
    ("tasks:app", "STORE", ["--prefetch", "2"], "--prefetch sets what a process claims"),
    ("tasks:app", "host=/nowhere dbname=x", ["--prefetch", "1000000"],
     "prefetch must be <= 100000"),
    ("tasks:app", "host=/nowhere dbname=x connect_timeout=1", [],
     "cannot connect to the database"),
])
def test_what_keeps_a_worker_from_starting(
    directory: Path, target: str, store: str, extra: list[str], message: str
) -> None:
    (directory / "broken.py").write_text("1 / 0\n")
    (directory / "memory.py").write_text(textwrap.dedent("""
        from jobqueue import final
        app = final.App(final.Config())
        config = final.Config(persist_path="somewhere")
    """))
    if store == "STORE":
        store = str(directory / "jobs")
    worker = Worker(directory, store, target, *extra)
    err = worker.finish()
    assert worker.process.returncode == 2, err
    assert message in err
    assert "Traceback" not in err or target == "broken:app"  # (the import's own, logged)
