"""The naive stage works, and each of its deliberate problems really happens."""

from __future__ import annotations

import logging
import threading

import pytest

from jobqueue import naive


def held_worker(
    queue: naive.JobQueue, name: str = "blocker"
) -> tuple[threading.Event, threading.Event]:
    """Occupy one worker until the returned ``release`` event is set."""
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    queue.enqueue(naive.Job(name, block))
    assert started.wait(5)
    return started, release


def join_workers() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("jobqueue-naive-"):
            thread.join(10)
            assert not thread.is_alive()


def test_runs_every_job() -> None:
    ran: list[int] = []
    done = threading.Event()
    with naive.JobQueue(num_workers=1) as queue:
        for i in range(10):
            queue.enqueue(naive.Job(f"job-{i}", lambda i=i: ran.append(i)))
        queue.enqueue(naive.Job("last", done.set))
        assert done.wait(5)
    assert ran == list(range(10))


def test_worker_threads_are_named_and_stop_once_idle() -> None:
    queue = naive.JobQueue(num_workers=3)
    names = sorted(t.name for t in threading.enumerate() if t.name.startswith("jobqueue-naive"))
    assert names == [f"jobqueue-naive-worker-{n}" for n in range(3)]
    queue.close()
    join_workers()


class TestProblems:
    def test_no_backpressure(self) -> None:
        queue = naive.JobQueue(num_workers=2)
        _, release_a = held_worker(queue, "a")
        _, release_b = held_worker(queue, "b")
        # Every worker is busy, yet all 100,000 enqueues return at once: nothing holds the
        # producer back, and the whole backlog sits in memory.
        for i in range(100_000):
            queue.enqueue(naive.Job(f"job-{i}", lambda: None))
        assert queue.backlog() == 100_000
        queue.close()
        release_a.set()
        release_b.set()
        join_workers()

    def test_no_priorities_fifo_only(self) -> None:
        ran: list[str] = []
        done = threading.Event()
        with naive.JobQueue(num_workers=1) as queue:
            _, release = held_worker(queue)
            for name in ("routine-1", "urgent-1", "routine-2", "urgent-2"):
                queue.enqueue(naive.Job(name, lambda name=name: ran.append(name)))
            queue.enqueue(naive.Job("last", done.set))
            release.set()
            assert done.wait(5)
        # Urgent work waits behind whatever came first: there is no way to say otherwise.
        assert ran == ["routine-1", "urgent-1", "routine-2", "urgent-2"]

    def test_no_retry(self, caplog: pytest.LogCaptureFixture) -> None:
        attempts: list[int] = []
        done = threading.Event()

        def flaky() -> None:
            attempts.append(1)
            raise ConnectionError("try again later")

        with caplog.at_level(logging.ERROR, logger="jobqueue"), naive.JobQueue(1) as queue:
            queue.enqueue(naive.Job("flaky", flaky))
            queue.enqueue(naive.Job("after", done.set))
            assert done.wait(5)
        assert attempts == [1]  # ran once, failed, gone
        assert any("flaky" in r.getMessage() for r in caplog.records)

    def test_close_does_not_wait(self) -> None:
        ran: list[int] = []
        queue = naive.JobQueue(num_workers=1)
        started, release = held_worker(queue)
        for i in range(10):
            queue.enqueue(naive.Job(f"job-{i}", lambda i=i: ran.append(i)))
        queue.close()  # returns while a handler still runs and ten jobs wait
        assert not release.is_set()
        release.set()
        join_workers()
        assert ran == []  # accepted before close, never run


class TestBadInput:
    @pytest.mark.parametrize(
        ("value", "error", "message"),
        [
            (0, ValueError, "num_workers must be >= 1"),
            (-1, ValueError, "num_workers must be >= 1"),
            ("4", TypeError, "num_workers must be an int"),
            (True, TypeError, "num_workers must be an int"),
        ],
    )
    def test_num_workers(self, value: object, error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=message):
            naive.JobQueue(value)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("job_id", "handler", "error", "message"),
        [
            ("", print, ValueError, "id must be a non-empty str"),
            (7, print, TypeError, "id must be a str"),
            ("x", "print", TypeError, "handler must be callable"),
        ],
    )
    def test_job(
        self, job_id: object, handler: object, error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            naive.Job(job_id, handler)  # type: ignore[arg-type]

    def test_enqueue_needs_a_job(self) -> None:
        with naive.JobQueue(1) as queue, pytest.raises(TypeError, match="job must be"):
            queue.enqueue(print)  # type: ignore[arg-type]
