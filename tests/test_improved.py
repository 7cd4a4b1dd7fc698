"""The improved stage fixes naive's problems; the ones it keeps are shown too."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from jobqueue import improved
from jobqueue.improved import Priority


def no_library_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("jobqueue-")]


def held_worker(queue: improved.JobQueue, priority: Priority = Priority.HIGH) -> threading.Event:
    """Occupy one worker until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    queue.enqueue(improved.Job("blocker", block, priority))
    assert started.wait(5)
    return release


class TestBackpressure:
    def test_full_queue_blocks_then_raises(self) -> None:
        queue = improved.JobQueue(num_workers=1, queue_size=2)
        release = held_worker(queue)
        try:
            for i in range(2):
                queue.enqueue(improved.Job(f"fill-{i}", lambda: None))
            with pytest.raises(improved.QueueFull, match="MEDIUM queue is full"):
                queue.enqueue(improved.Job("no-wait", lambda: None), block=False)
            with pytest.raises(improved.QueueFull):
                queue.enqueue(improved.Job("short-wait", lambda: None), timeout=0.05)

            returned = threading.Event()

            def producer() -> None:
                queue.enqueue(improved.Job("blocked", lambda: None))
                returned.set()

            thread = threading.Thread(daemon=True, target=producer)
            thread.start()
            assert not returned.wait(0.2)  # really blocked while full
            release.set()
            assert returned.wait(5)  # and went on once a worker made room
            thread.join(5)
        finally:
            release.set()
            queue.close()
        assert queue.metrics().completed == 4

    def test_enqueue_waits_its_whole_timeout_before_queue_full(self) -> None:
        queue = improved.JobQueue(num_workers=1, queue_size=1)
        release = held_worker(queue)
        try:
            queue.enqueue(improved.Job("fill", lambda: None))
            started = time.monotonic()
            with pytest.raises(improved.QueueFull):
                queue.enqueue(improved.Job("late", lambda: None), timeout=0.3)
            assert time.monotonic() - started >= 0.3
        finally:
            release.set()
            queue.close()

    def test_other_priorities_are_not_blocked(self) -> None:
        with improved.JobQueue(num_workers=1, queue_size=1) as queue:
            release = held_worker(queue)
            queue.enqueue(improved.Job("low", lambda: None, Priority.LOW))
            queue.enqueue(improved.Job("high", lambda: None, Priority.HIGH), block=False)
            release.set()


class TestPriority:
    def test_most_urgent_first_with_one_worker(self) -> None:
        ran: list[str] = []
        with improved.JobQueue(num_workers=1) as queue:
            release = held_worker(queue)
            for i in range(5):
                queue.enqueue(improved.Job(f"low-{i}", lambda i=i: ran.append(f"low-{i}"),
                                           Priority.LOW))
            for i in range(5):
                queue.enqueue(improved.Job(f"medium-{i}",
                                           lambda i=i: ran.append(f"medium-{i}")))
            for i in range(5):
                queue.enqueue(improved.Job(f"high-{i}", lambda i=i: ran.append(f"high-{i}"),
                                           Priority.HIGH))
            release.set()
        assert ran == [f"{p}-{i}" for p in ("high", "medium", "low") for i in range(5)]


class TestRetry:
    def test_backoff_spacing_and_final_failure(self, caplog: pytest.LogCaptureFixture) -> None:
        runs: list[float] = []

        def always_fails() -> None:
            runs.append(time.monotonic())
            raise ConnectionError("down")

        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            with improved.JobQueue(num_workers=2, max_retries=3, base_delay=0.05) as queue:
                queue.enqueue(improved.Job("doomed", always_fails))
            metrics = queue.metrics()
        assert len(runs) == 4  # the first attempt and three retries
        gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
        backoffs = (0.05, 0.1, 0.2)
        assert [gap >= delay for gap, delay in zip(gaps, backoffs, strict=True)] == [True] * 3
        assert (metrics.failed, metrics.retried, metrics.completed) == (1, 3, 0)
        levels = [r.levelno for r in caplog.records if "doomed" in r.getMessage()]
        assert levels == [logging.WARNING] * 3 + [logging.ERROR]

    def test_spacing_is_the_backoff_bounded_from_both_sides(self) -> None:
        runs: list[float] = []

        def always_fails() -> None:
            runs.append(time.monotonic())
            raise ConnectionError("down")

        with improved.JobQueue(num_workers=1, max_retries=2, base_delay=0.2) as queue:
            queue.enqueue(improved.Job("doomed", always_fails))
        gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
        # At least the backoff (0.2, then 0.4), and well short of twice it: a delay of
        # 2**attempt instead of 2**(attempt-1) would not fit.
        assert [0.2 <= gaps[0] < 0.4, 0.4 <= gaps[1] < 0.8] == [True, True], gaps

    def test_succeeds_on_a_retry(self) -> None:
        runs: list[int] = []

        def flaky() -> None:
            runs.append(1)
            if len(runs) < 3:
                raise ConnectionError("busy")

        with improved.JobQueue(num_workers=1, base_delay=0.01) as queue:
            queue.enqueue(improved.Job("flaky", flaky))
        assert len(runs) == 3
        metrics = queue.metrics()
        assert (metrics.completed, metrics.failed, metrics.retried) == (1, 0, 2)

    def test_waiting_retry_does_not_hold_a_worker(self) -> None:
        other_ran = threading.Event()
        failed = threading.Event()

        def fail_once() -> None:
            if not failed.is_set():
                failed.set()
                raise ConnectionError("later")

        queue = improved.JobQueue(num_workers=1, base_delay=60.0)
        queue.enqueue(improved.Job("retry", fail_once))
        assert failed.wait(5)
        queue.enqueue(improved.Job("other", other_ran.set))
        # The only worker runs "other" while "retry" waits out its 60 s delay.
        assert other_ran.wait(5)
        queue.close(timeout=0)
        assert queue.metrics().retried == 1


class TestGracefulClose:
    def test_waits_for_queued_running_and_retrying_jobs(self) -> None:
        ran: list[str] = []
        started = threading.Event()

        def slow() -> None:
            started.set()
            time.sleep(0.05)
            ran.append("slow")

        def fail_once() -> None:
            if "retry-failed" not in ran:
                ran.append("retry-failed")
                raise ConnectionError("later")
            ran.append("retry")

        queue = improved.JobQueue(num_workers=1, base_delay=0.05)
        queue.enqueue(improved.Job("slow", slow))
        assert started.wait(5)
        queue.enqueue(improved.Job("retry", fail_once))
        queue.enqueue(improved.Job("queued", lambda: ran.append("queued")))
        queue.close()
        assert sorted(ran) == ["queued", "retry", "retry-failed", "slow"]
        assert no_library_threads()

    def test_refuses_new_jobs_after_close(self) -> None:
        queue = improved.JobQueue(num_workers=1)
        queue.close()
        with pytest.raises(improved.QueueClosed, match="after close"):
            queue.enqueue(improved.Job("late", lambda: None))
        queue.close()  # twice is harmless

    def test_timeout_returns_and_logs(self, caplog: pytest.LogCaptureFixture) -> None:
        queue = improved.JobQueue(num_workers=1)
        release = held_worker(queue)
        queue.enqueue(improved.Job("waiting", lambda: None))
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            queue.close(timeout=0.05)
        assert any("2 jobs unfinished" in r.getMessage() for r in caplog.records)
        release.set()  # the held handler returns; its thread then stops


class TestMetrics:
    def test_exact_under_eight_producers(self) -> None:
        producers, per_producer = 8, 2_000
        barrier = threading.Barrier(producers)
        with improved.JobQueue(num_workers=4, queue_size=100) as queue:

            def produce(n: int) -> None:
                barrier.wait(5)
                for i in range(per_producer):
                    queue.enqueue(improved.Job(f"{n}-{i}", lambda: None, Priority(i % 3)))

            threads = [threading.Thread(daemon=True, target=produce, args=(n,))
                       for n in range(producers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        metrics = queue.metrics()
        assert metrics == improved.Metrics(
            queued=0, processing=0, completed=producers * per_producer, failed=0, retried=0
        )

    def test_snapshot_is_immutable(self) -> None:
        with improved.JobQueue(num_workers=1) as queue:
            metrics = queue.metrics()
        with pytest.raises(AttributeError):
            metrics.completed = 5  # type: ignore[misc]


class TestRemainingProblems:
    def test_high_flood_starves_low(self) -> None:
        ran: list[str] = []
        flood = 500
        low_ran = threading.Event()

        def low() -> None:
            ran.append("low")
            low_ran.set()

        with improved.JobQueue(num_workers=1, queue_size=10) as queue:
            release = held_worker(queue)
            queue.enqueue(improved.Job("low", low, Priority.LOW))

            def high(n: int) -> None:
                ran.append("high")
                if n < flood:  # keep HIGH non-empty, as a sustained flood does
                    queue.enqueue(improved.Job(f"high-{n + 1}", lambda: high(n + 1),
                                               Priority.HIGH), block=False)

            queue.enqueue(improved.Job("high-0", lambda: high(0), Priority.HIGH))
            release.set()
            assert low_ran.wait(10)
        # LOW waited behind every one of the 501 HIGH jobs; a flood that never ends would
        # starve it forever.
        assert ran == ["high"] * (flood + 1) + ["low"]

    def test_no_status_by_id(self) -> None:
        with improved.JobQueue(num_workers=1) as queue:
            queue.enqueue(improved.Job("where-is-it", lambda: None))
            assert not any(hasattr(queue, name) for name in ("status", "info", "wait"))

    def test_nothing_survives_a_restart(self) -> None:
        ran: list[str] = []
        queue = improved.JobQueue(num_workers=1)
        release = held_worker(queue)
        queue.enqueue(improved.Job("pending", lambda: ran.append("pending")))
        queue.close(timeout=0.05)  # e.g. the process is shutting down
        release.set()
        with improved.JobQueue(num_workers=1) as restarted:
            assert restarted.metrics().queued == 0  # the pending job is simply gone
        assert ran == []


class TestBadInput:
    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"num_workers": 0}, ValueError, "num_workers must be >= 1"),
            ({"num_workers": 2.0}, TypeError, "num_workers must be an int"),
            ({"num_workers": 1, "queue_size": 0}, ValueError, "queue_size must be >= 1"),
            ({"num_workers": 1, "max_retries": -1}, ValueError, "max_retries must be >= 0"),
            ({"num_workers": 1, "max_retries": True}, TypeError, "max_retries must be an int"),
            ({"num_workers": 1, "base_delay": -0.5}, ValueError, "base_delay must be >= 0"),
            ({"num_workers": 1, "base_delay": "1"}, TypeError, "base_delay must be a number"),
        ],
    )
    def test_queue_arguments(
        self, kwargs: dict[str, object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            improved.JobQueue(**kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("args", "error", "message"),
        [
            (("", print), ValueError, "id must be a non-empty str"),
            ((None, print), TypeError, "id must be a str"),
            (("x", 42), TypeError, "handler must be callable"),
            (("x", print, 0), TypeError, "priority must be a Priority"),
            (("x", print, "HIGH"), TypeError, "priority must be a Priority"),
        ],
    )
    def test_job_arguments(
        self, args: tuple[object, ...], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            improved.Job(*args)  # type: ignore[arg-type]

    def test_enqueue_arguments(self) -> None:
        with improved.JobQueue(num_workers=1) as queue:
            with pytest.raises(TypeError, match="job must be"):
                queue.enqueue("job")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="timeout must be"):
                queue.enqueue(improved.Job("x", print), timeout=-1)
