"""The final stage's contract, run over both stores: in memory and LMDB.

Like huey's one StorageTests suite over every back end: each test gets a ``make`` fixture that
builds a queue with the store under test, and closes it afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from conftest import Make

from jobqueue import final
from jobqueue.final import Priority, Status
from jobqueue.final._picker import DEFAULT_WEIGHTS, WeightedPicker

HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Wait for a state no event announces (a status change inside the queue)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def library_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("jobqueue-")]


class Gate:
    """A handler that blocks until released, and says when it has started."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.payloads: list[bytes] = []
        self._timeout = timeout  # a safety net: a test that fails must not hang

    def __call__(self, payload: bytes) -> None:
        self.payloads.append(payload)
        self.started.set()
        self.release.wait(self._timeout)


def held(queue: final.JobQueue, *job_ids: str) -> None:
    """Wait until the queue holds these jobs. A queue in PostgreSQL claims them from the
    database a moment after enqueue() returns; the other stores hold them at once."""
    table = queue._core.table
    assert until(lambda: all(table.get(job_id) is not None for job_id in job_ids))


def hold_worker(queue: final.JobQueue, job_id: str = "blocker", timeout: float = 10.0) -> Gate:
    gate = Gate(timeout)
    queue.enqueue_with_handler(final.Job(job_id, priority=HIGH), gate)
    assert gate.started.wait(5)
    return gate


class TestEnqueue:
    def test_runs_with_the_default_handler(self, make: Make) -> None:
        ran: list[bytes] = []
        queue = make(handler=ran.append)
        queue.enqueue(final.Job("a", b"payload"))
        assert queue.wait("a", timeout=10) is Status.COMPLETED
        assert ran == [b"payload"]

    def test_handler_resolution(self, make: Make) -> None:
        ran: list[str] = []
        queue = make(
            handler=lambda p: ran.append("default"),
            handlers={"email": lambda p: ran.append("email")},
        )
        queue.enqueue(final.Job("plain"))
        queue.enqueue(final.Job("mail", kind="email"))
        queue.enqueue_with_handler(final.Job("own", kind="email"), lambda p: ran.append("own"))
        assert queue.join(timeout=10)
        assert sorted(ran) == ["default", "email", "own"]

    def test_no_handler_at_all(self, make: Make, store: str) -> None:
        queue = make(handlers={"email": print})
        if store == "postgres":  # another process sharing the queue may run kind 'sms'
            queue.enqueue(final.Job("x", kind="sms"))
            assert queue.status("x") is Status.QUEUED
            return
        with pytest.raises(ValueError, match="no handler for job 'x': kind 'sms'"):
            queue.enqueue(final.Job("x", kind="sms"))
        assert queue.status("x") is None

    def test_enqueue_many(self, make: Make) -> None:
        ran: list[bytes] = []
        queue = make(handler=ran.append)
        queue.enqueue_many(final.Job(f"j{i}", b"%d" % i) for i in range(50))
        assert queue.join(timeout=10)
        assert sorted(ran) == sorted(b"%d" % i for i in range(50))

    def test_enqueue_many_is_all_or_nothing(self, make: Make) -> None:
        queue = make(handler=print, queue_size=5)
        with pytest.raises(final.DuplicateJob, match="twice"):
            queue.enqueue_many([final.Job("a"), final.Job("a")])
        if queue._core.shared:  # no room to refuse: a live id in the batch refuses it
            gate = hold_worker(queue, "live")
            with pytest.raises(final.DuplicateJob, match="'live' is already processing"):
                queue.enqueue_many([final.Job("j0"), final.Job("live")])
            gate.release.set()
        else:
            with pytest.raises(ValueError, match="more than queue_size=5"):
                queue.enqueue_many(final.Job(f"j{i}") for i in range(6))
        assert queue.status("a") is None and queue.status("j0") is None

    def test_not_a_job(self, make: Make) -> None:
        queue = make(handler=print)
        with pytest.raises(TypeError, match="job must be a jobqueue.final.Job"):
            queue.enqueue("job")  # type: ignore[arg-type]


class TestPriority:
    def test_all_high_before_any_low_with_one_worker(self, make: Make) -> None:
        ran: list[str] = []
        queue = make(num_workers=1, handler=lambda p: ran.append(p.decode()))
        gate = hold_worker(queue)
        for i in range(5):
            queue.enqueue(final.Job(f"low-{i}", f"low-{i}".encode(), priority=LOW))
        for i in range(5):
            queue.enqueue(final.Job(f"high-{i}", f"high-{i}".encode(), priority=HIGH))
        held(queue, *(f"{p}-{i}" for p in ("low", "high") for i in range(5)))
        gate.release.set()
        assert queue.join(timeout=10)
        assert ran == [f"high-{i}" for i in range(5)] + [f"low-{i}" for i in range(5)]


class TestFairness:
    def test_default_weights(self) -> None:
        assert dict(DEFAULT_WEIGHTS) == {HIGH: 8, MEDIUM: 3, LOW: 1}

    def test_high_first_when_mixed(self) -> None:
        picker = WeightedPicker()
        assert picker.pick([True, True, True]) is HIGH

    def test_nothing_to_pick(self) -> None:
        assert WeightedPicker().pick([False, False, False]) is None

    def test_low_at_least_once_in_every_eleven_picks_under_a_high_flood(self) -> None:
        picker = WeightedPicker()
        picks = [picker.pick([True, False, True]) for _ in range(1000)]
        gaps = [i for i, p in enumerate(picks) if p is LOW]
        assert gaps[0] < 11
        assert max(b - a for a, b in zip(gaps, gaps[1:], strict=False)) <= 11

    def test_round_shares_follow_the_weights(self) -> None:
        picker = WeightedPicker({HIGH: 4, MEDIUM: 2, LOW: 1})
        picks = [picker.pick([True, True, True]) for _ in range(70)]
        assert (picks.count(HIGH), picks.count(MEDIUM), picks.count(LOW)) == (40, 20, 10)
        assert picks[:7] == [HIGH] * 4 + [MEDIUM] * 2 + [LOW]

    def test_an_empty_priority_never_blocks_another(self) -> None:
        picker = WeightedPicker()
        for has_work, expected in [
            ([False, False, True], LOW),
            ([False, True, False], MEDIUM),
            ([False, False, True], LOW),
            ([True, False, False], HIGH),
        ]:
            for _ in range(20):
                assert picker.pick(has_work) is expected

    def test_priorities_coming_and_going(self) -> None:
        picker = WeightedPicker()
        since_low = 0
        worst = 0
        pattern = [[True, True, True], [True, False, True], [True, True, True], [False, True, True]]
        for step in range(4000):
            if picker.pick(pattern[(step // 7) % 4]) is LOW:
                worst = max(worst, since_low)
                since_low = 0
            else:
                since_low += 1
        assert worst <= sum(DEFAULT_WEIGHTS.values())

    def test_low_runs_under_a_live_high_flood(self, make: Make) -> None:
        ran: list[str] = []
        low_done = threading.Event()
        queue = make(num_workers=1, queue_size=50)
        gate = hold_worker(queue)

        def high(payload: bytes) -> None:
            ran.append("high")
            n = int(payload)
            if n < 200:  # every HIGH job adds another: a sustained flood
                queue.enqueue_with_handler(
                    final.Job(f"high-{n + 1}", b"%d" % (n + 1), priority=HIGH), high
                )

        def low(payload: bytes) -> None:
            ran.append("low")
            if ran.count("low") == 3:
                low_done.set()

        for i in range(3):
            queue.enqueue_with_handler(final.Job(f"low-{i}", priority=LOW), low)
        queue.enqueue_with_handler(final.Job("high-0", b"0", priority=HIGH), high)
        gate.release.set()
        assert low_done.wait(10)
        assert queue.join(timeout=10)
        positions = [i for i, name in enumerate(ran) if name == "low"]
        assert positions[-1] < 3 * 11  # the LOW jobs ran early in the flood, not after it


class TestRetry:
    def test_attempts_and_spacing(self, make: Make, caplog: pytest.LogCaptureFixture) -> None:
        runs: list[float] = []

        def fails(payload: bytes) -> None:
            runs.append(time.monotonic())
            raise ConnectionError("smtp down")

        queue = make(handler=fails, max_retries=3, base_delay=0.02, jitter=0.5)
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            queue.enqueue(final.Job("mail"))
            assert queue.wait("mail", timeout=10) is Status.FAILED
        assert len(runs) == 4
        gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
        assert all(gap >= d for gap, d in zip(gaps, (0.02, 0.04, 0.08), strict=True))
        info = queue.info("mail")
        assert info is not None
        assert (info.status, info.attempts) == (Status.FAILED, 4)
        assert info.last_error is not None and "smtp down" in info.last_error
        metrics = queue.metrics()
        assert (metrics.failed, metrics.retried, metrics.completed) == (1, 3, 0)
        levels = [r.levelno for r in caplog.records if "'mail'" in r.getMessage()]
        assert levels == [logging.WARNING] * 3 + [logging.ERROR]
        assert caplog.records[-1].exc_info is not None

    def test_max_delay_caps_the_backoff(self, make: Make) -> None:
        runs: list[float] = []

        def fails(payload: bytes) -> None:
            runs.append(time.monotonic())
            raise RuntimeError("no")

        queue = make(handler=fails, max_retries=2, base_delay=5.0, max_delay=0.01, jitter=0.0)
        queue.enqueue(final.Job("capped"))
        assert queue.wait("capped", timeout=10) is Status.FAILED
        assert len(runs) == 3

    def test_job_max_retries_overrides_config(self, make: Make) -> None:
        runs: list[int] = []

        def fails(payload: bytes) -> None:
            runs.append(1)
            raise RuntimeError("no")

        queue = make(handler=fails, max_retries=5, base_delay=0.0)
        queue.enqueue(final.Job("once", max_retries=0))
        assert queue.wait("once", timeout=10) is Status.FAILED
        assert runs == [1]

    def test_retry_then_success(self, make: Make) -> None:
        def flaky(payload: bytes) -> None:
            if final.current_job().attempt < 3:
                raise TimeoutError("slow upstream")

        queue = make(handler=flaky, base_delay=0.0)
        queue.enqueue(final.Job("flaky"))
        assert queue.wait("flaky", timeout=10) is Status.COMPLETED
        info = queue.info("flaky")
        assert info is not None and info.attempts == 3


    def test_spacing_is_the_backoff_bounded_from_both_sides(self, make: Make) -> None:
        runs: list[float] = []

        def fails(payload: bytes) -> None:
            runs.append(time.monotonic())
            raise ConnectionError("down")

        queue = make(handler=fails, max_retries=2, base_delay=0.2, jitter=0.0)
        queue.enqueue(final.Job("mail"))
        assert queue.wait("mail", timeout=10) is Status.FAILED
        gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
        # At least the backoff (0.2, then 0.4), and well short of twice it: a delay of
        # 2**attempt instead of 2**(attempt-1) would not fit.
        assert [0.2 <= gaps[0] < 0.4, 0.4 <= gaps[1] < 0.8] == [True, True], gaps

    def test_no_job_is_counted_retrying_once_its_retry_ran(self, make: Make) -> None:
        def flaky(payload: bytes) -> None:
            if final.current_job().attempt == 1:
                raise RuntimeError("once")

        queue = make(handler=flaky, base_delay=0.0)
        for i in range(6):
            queue.enqueue(final.Job(f"j{i}", priority=Priority(i % 3)))
        assert queue.join(timeout=10)
        metrics = queue.metrics()
        assert (metrics.retrying, metrics.queued, metrics.processing) == (0, 0, 0)
        assert (metrics.retried, metrics.completed) == (6, 6)
        assert [m.retrying for m in metrics.per_priority.values()] == [0, 0, 0]


class TestTimeout:
    def test_overrunning_attempt_fails_and_is_retried(self, make: Make) -> None:
        seen: list[tuple[int, bool]] = []

        def slow_first(payload: bytes) -> None:
            context = final.current_job()
            if context.attempt == 1:
                cancelled = context.wait(10)  # wakes at the 0.05 s deadline
                seen.append((1, cancelled))
            else:
                seen.append((context.attempt, context.cancelled()))

        queue = make(handler=slow_first, job_timeout=0.05, base_delay=0.0)
        queue.enqueue(final.Job("slow"))
        assert queue.wait("slow", timeout=10) is Status.COMPLETED
        assert seen == [(1, True), (2, False)]
        info = queue.info("slow")
        assert info is not None and info.last_error is not None
        assert "timed out" in info.last_error

    def test_current_job_outside_a_handler(self) -> None:
        with pytest.raises(RuntimeError, match="outside a jobqueue handler"):
            final.current_job()


class TestGracefulShutdown:
    @pytest.mark.bounded
    def test_in_flight_and_queued_jobs_finish(self, make: Make) -> None:
        ran: list[bytes] = []
        queue = make(num_workers=1, handler=ran.append)
        gate = hold_worker(queue)
        for i in range(5):
            queue.enqueue(final.Job(f"j{i}", b"%d" % i))
        closer = threading.Thread(daemon=True, target=queue.close)
        closer.start()
        accepted = 0
        with pytest.raises(final.QueueClosed, match="after close"):
            # Until close() has started refusing jobs. Blocking: once the queue is full, the
            # producer waits for room, and close() wakes it to refuse (a block=False loop
            # raced close() to the 1,000th job on a loaded machine).
            for i in range(100_000):
                queue.enqueue(final.Job(f"late-{i}", b"late"))
                accepted += 1
        gate.release.set()  # the in-flight handler may now finish
        closer.join(10)
        assert not closer.is_alive()
        # Everything accepted before close() started ran, including the in-flight job.
        assert sorted(p for p in ran if p != b"late") == [b"%d" % i for i in range(5)]
        assert ran.count(b"late") == accepted
        assert gate.payloads == [b""]
        assert library_threads() == []
        assert queue.close() == []  # twice is harmless

    def test_memory_retries_finish_before_close_returns(self) -> None:
        runs: list[int] = []

        def flaky(payload: bytes) -> None:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("once")

        queue = final.JobQueue(final.Config(handler=flaky, base_delay=0.05))
        queue.enqueue(final.Job("retry"))
        queue.close()
        assert runs == [1, 1]
        assert queue.status("retry") is Status.COMPLETED

    def test_gives_up_after_shutdown_timeout(
        self, make: Make, store: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        cancelled = threading.Event()

        def stubborn(payload: bytes) -> None:
            if final.current_job().wait(10):
                cancelled.set()
                raise RuntimeError("cancelled")

        queue = make(num_workers=1, handler=stubborn, shutdown_timeout=0.05)
        queue.enqueue(final.Job("running"))
        queue.enqueue(final.Job("waiting"))
        held(queue, "running", "waiting")
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            abandoned = queue.close()
        assert cancelled.is_set()
        assert abandoned == ["running", "waiting"]
        assert any("gave up" in r.getMessage() for r in caplog.records)
        if store == "memory":
            assert queue.metrics().abandoned == 2
        assert library_threads() == []

    def test_enqueue_after_close(self, make: Make) -> None:
        queue = make(handler=print)
        queue.close()
        message = r"^cannot enqueue after close\(\) has started$"
        with pytest.raises(final.QueueClosed, match=message):
            queue.enqueue(final.Job("late"))


    def test_abandoned_ids_include_jobs_waiting_for_a_retry(self) -> None:
        failed = threading.Event()

        def fails(payload: bytes) -> None:
            failed.set()
            raise RuntimeError("later")

        queue = final.JobQueue(final.Config(num_workers=1, handler=fails, base_delay=60.0))
        queue.enqueue(final.Job("retry-later"))
        assert failed.wait(5)
        assert until(lambda: queue.status("retry-later") is Status.RETRYING)
        assert queue.close(timeout=0.05) == ["retry-later"]
        assert queue.metrics().abandoned == 1

    def test_two_closes_at_once_both_wait_and_agree(self, make: Make, store: str) -> None:
        queue = make(num_workers=1, handler=lambda p: None)
        gate = hold_worker(queue)
        results: list[list[str]] = []
        closers = [
            threading.Thread(daemon=True, target=lambda: results.append(queue.close(timeout=10)))
            for _ in range(2)
        ]
        for closer in closers:
            closer.start()
        closers[0].join(0.2)
        closers[1].join(0.2)
        assert [c.is_alive() for c in closers] == [True, True]  # both wait for the job
        gate.release.set()
        for closer in closers:
            closer.join(10)
        assert results == [[], []]
        assert library_threads() == []
        if store == "lmdb":  # given up: the store can be opened again at once
            config = queue._config
            with final.JobQueue(final.Config(persist_path=config.persist_path, handler=print)):
                pass

    def test_wait_on_a_closed_queue_does_not_hang(self, make: Make) -> None:
        def stubborn(payload: bytes) -> None:
            if final.current_job().wait(10):
                raise RuntimeError("cancelled")

        queue = make(num_workers=1, handler=stubborn, shutdown_timeout=0.05)
        queue.enqueue(final.Job("stuck"))
        queue.enqueue(final.Job("never-ran"))
        held(queue, "stuck", "never-ran")
        assert queue.close() == ["never-ran", "stuck"]
        for job_id in ("stuck", "never-ran"):
            # In memory the queue says why; a closed LMDB store says it is closed.
            with pytest.raises((final.QueueClosed, final.StoreError), match="close"):
                queue.wait(job_id, timeout=10)
        assert queue.join(timeout=10) is False


@pytest.mark.bounded
class TestBackpressure:
    def test_blocks_when_full_then_proceeds(self, make: Make) -> None:
        queue = make(num_workers=1, queue_size=2, handler=lambda p: None)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("a"))
        queue.enqueue(final.Job("b"))
        returned = threading.Event()

        def produce() -> None:
            queue.enqueue(final.Job("c"))
            returned.set()

        producer = threading.Thread(daemon=True, target=produce)
        producer.start()
        assert not returned.wait(0.2)  # really blocked
        assert queue.status("c") is None
        gate.release.set()
        assert returned.wait(5)
        producer.join(5)
        assert queue.join(timeout=10)

    def test_queue_full_after_timeout_or_without_blocking(self, make: Make) -> None:
        queue = make(num_workers=1, queue_size=1, handler=lambda p: None)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("fill"))
        with pytest.raises(final.QueueFull, match="MEDIUM queue is full"):
            queue.enqueue(final.Job("x"), block=False)
        with pytest.raises(final.QueueFull, match="stayed full"):
            queue.enqueue(final.Job("y"), timeout=0.05)
        queue.enqueue(final.Job("z", priority=LOW), block=False)  # LOW has its own room
        gate.release.set()
        assert queue.join(timeout=10)


    def test_enqueue_waits_its_whole_timeout_before_queue_full(self, make: Make) -> None:
        queue = make(num_workers=1, queue_size=1, handler=lambda p: None)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("fill"))
        started = time.monotonic()
        with pytest.raises(final.QueueFull, match="stayed full"):
            queue.enqueue(final.Job("late"), timeout=0.3)
        assert time.monotonic() - started >= 0.3
        gate.release.set()

    def test_a_freed_slot_reaches_a_job_that_fits(self, make: Make) -> None:
        """A batch that cannot fit must not swallow the wake-up a single job needed."""
        queue = make(num_workers=1, queue_size=2, handler=lambda p: None)
        blocker = hold_worker(queue)
        second = Gate()
        queue.enqueue_with_handler(final.Job("a"), second)  # will hold the worker next
        queue.enqueue(final.Job("b"))  # MEDIUM is full
        core = queue._core
        batch_in = threading.Thread(daemon=True, target=queue.enqueue_many,
                                    args=([final.Job("c"), final.Job("d")],))
        batch_in.start()
        assert until(lambda: core.room[MEDIUM].batches == 1)
        single_done = threading.Event()

        def single() -> None:
            queue.enqueue(final.Job("e"))
            single_done.set()

        single_in = threading.Thread(daemon=True, target=single)
        single_in.start()
        assert until(lambda: core.room[MEDIUM].waiting == 2)
        blocker.release.set()  # the worker takes "a": one slot frees, and "a" holds it
        assert second.started.wait(5)
        assert single_done.wait(5)  # the single job fits, and goes in
        assert batch_in.is_alive()  # the batch of two still does not
        second.release.set()
        batch_in.join(10)
        single_in.join(10)
        assert queue.join(timeout=10)

    def test_a_producer_that_gives_up_passes_its_wake_up_on(self, make: Make) -> None:
        """A freed slot wakes one producer; if that one raises instead (its id was enqueued
        meanwhile), the next must still get the slot."""
        queue = make(num_workers=2, queue_size=1, handler=lambda p: None)
        blockers = [hold_worker(queue, "blocker-1"), hold_worker(queue, "blocker-2")]
        queue.enqueue(final.Job("fill"))  # MEDIUM is full
        core = queue._core
        outcomes: dict[str, object] = {}

        def produce(job_id: str) -> None:
            try:
                queue.enqueue(final.Job(job_id))
                outcomes[job_id] = "accepted"
            except final.JobQueueError as exc:
                outcomes[job_id] = exc

        first = threading.Thread(daemon=True, target=produce, args=("x",))
        first.start()
        assert until(lambda: core.room[MEDIUM].waiting == 1)
        second = threading.Thread(daemon=True, target=produce, args=("y",))
        second.start()
        assert until(lambda: core.room[MEDIUM].waiting == 2)
        x_gate = Gate()
        queue.enqueue_with_handler(final.Job("x", priority=HIGH), x_gate)  # "x" is taken
        for blocker in blockers:
            blocker.release.set()  # the workers take "x" and "fill": a MEDIUM slot frees
        first.join(10)
        assert isinstance(outcomes.get("x"), final.DuplicateJob)
        second.join(10)
        assert outcomes.get("y") == "accepted"  # the wake-up was not lost with "x"
        x_gate.release.set()
        assert queue.join(timeout=10)

    def test_close_wakes_every_blocked_producer(self, make: Make) -> None:
        queue = make(num_workers=1, queue_size=1, handler=lambda p: None)
        # Held past the joins below: a freed slot must not be what wakes the producers.
        gate = hold_worker(queue, timeout=60)
        queue.enqueue(final.Job("fill"))
        refused: list[int] = []

        def produce(number: int) -> None:
            try:
                queue.enqueue(final.Job(f"blocked-{number}"))
            except final.QueueClosed:
                refused.append(number)

        producers = [threading.Thread(daemon=True, target=produce, args=(n,)) for n in range(3)]
        for producer in producers:
            producer.start()
        assert until(lambda: queue._core.room[MEDIUM].waiting == 3)
        closer = threading.Thread(daemon=True, target=queue.close)
        closer.start()
        for producer in producers:
            producer.join(5)
        assert sorted(refused) == [0, 1, 2]
        gate.release.set()
        closer.join(10)


class TestMetrics:
    def test_exact_after_100k_jobs_from_10_producers(self, make: Make) -> None:
        queue = make(num_workers=4, handler=lambda p: None)
        # PostgreSQL commits each start before its handler runs: a round trip per few jobs,
        # so a fifth of the jobs there, for the same counts checked in the same time.
        producers, per_producer = 10, 2_000 if queue._core.shared else 10_000
        barrier = threading.Barrier(producers)

        def produce(n: int) -> None:
            barrier.wait(10)
            for i in range(per_producer):
                queue.enqueue(final.Job(f"{n}-{i}", priority=Priority(i % 3)))

        threads = [threading.Thread(daemon=True, target=produce, args=(n,))
                   for n in range(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert queue.join(timeout=60)
        metrics = queue.metrics()
        total = producers * per_producer
        assert (metrics.completed, metrics.failed, metrics.retried) == (total, 0, 0)
        assert (metrics.queued, metrics.processing, metrics.retrying) == (0, 0, 0)
        assert sum(m.completed for m in metrics.per_priority.values()) == total
        assert metrics.per_priority[LOW].completed == producers * (per_producer // 3)
        latency = metrics.queue_latency
        assert 0 < latency.p50 <= latency.p90 <= latency.p99 <= latency.max
        assert 0 < metrics.utilization <= 1
        assert (metrics.num_workers, metrics.busy_workers) == (4, 0)

    def test_snapshot_while_busy(self, make: Make) -> None:
        queue = make(num_workers=2)
        gate = hold_worker(queue)
        metrics = queue.metrics()
        assert (metrics.processing, metrics.busy_workers) == (1, 1)
        assert metrics.per_priority[HIGH].processing == 1
        with pytest.raises(AttributeError):
            metrics.completed = 3  # type: ignore[misc]
        gate.release.set()


class TestStatus:
    def test_every_transition(self, make: Make) -> None:
        entered = [threading.Event() for _ in range(2)]
        proceed = [threading.Event() for _ in range(2)]

        def handler(payload: bytes) -> None:
            attempt = final.current_job().attempt
            entered[attempt - 1].set()
            proceed[attempt - 1].wait(10)
            if attempt == 1:
                raise RuntimeError("first try fails")

        queue = make(num_workers=1, handler=handler, base_delay=1.0, jitter=0.0)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("job"))
        seen = [queue.status("job")]
        gate.release.set()
        assert entered[0].wait(5)
        seen.append(queue.status("job"))
        proceed[0].set()
        # The failure is recorded as the handler returns; the retry waits a whole second.
        assert until(lambda: queue.status("job") is not Status.PROCESSING)
        seen.append(queue.status("job"))
        assert entered[1].wait(5)
        seen.append(queue.status("job"))
        proceed[1].set()
        assert queue.wait("job", timeout=5) is Status.COMPLETED
        seen.append(queue.status("job"))
        assert seen == [
            Status.QUEUED, Status.PROCESSING, Status.RETRYING, Status.PROCESSING,
            Status.COMPLETED,
        ]
        info = queue.info("job")
        assert info is not None and info.attempts == 2
        assert info.created_at <= info.started_at <= info.finished_at  # type: ignore[operator]

    def test_unknown_id(self, make: Make) -> None:
        queue = make(handler=print)
        assert queue.status("nope") is None
        assert queue.info("nope") is None
        with pytest.raises(KeyError):
            queue.wait("nope")

    def test_retention_forgets_the_oldest(self, make: Make) -> None:
        queue = make(num_workers=1, handler=lambda p: None, status_retention=2)
        for i in range(4):
            queue.enqueue(final.Job(f"j{i}"))
            assert queue.wait(f"j{i}", timeout=10) is Status.COMPLETED
        queue.dead_letters()  # (with LMDB, writes the batched records first)
        assert [queue.status(f"j{i}") for i in range(4)] == [
            None, None, Status.COMPLETED, Status.COMPLETED
        ]

    def test_wait_times_out(self, make: Make) -> None:
        queue = make(num_workers=1, handler=lambda p: None)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("stuck"))
        with pytest.raises(TimeoutError, match="did not finish"):
            queue.wait("stuck", timeout=0.05)
        assert queue.join(timeout=0.05) is False
        gate.release.set()
        assert queue.join(timeout=10) is True


    def test_wait_sees_the_outcome_even_when_retention_keeps_none(self, make: Make) -> None:
        queue = make(num_workers=1, handler=lambda p: None, status_retention=0)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("quick"))
        outcome: list[Status] = []
        waiter = threading.Thread(
            daemon=True, target=lambda: outcome.append(queue.wait("quick", 10))
        )
        waiter.start()
        assert until(lambda: queue._core.change_waiters == 1)
        gate.release.set()
        waiter.join(10)
        assert outcome == [Status.COMPLETED]
        queue.dead_letters()  # (with LMDB, writes the batched records first)
        assert queue.status("quick") is None  # and then it is forgotten, as asked

    @pytest.mark.parametrize("ask", ["status", "info", "wait", "dead_letters"])
    def test_a_slow_store_read_holds_up_no_worker(self, make: Make, ask: str) -> None:
        queue = make(num_workers=1, handler=lambda p: None)
        store = queue._core.store
        reading, release = threading.Event(), threading.Event()
        real = getattr(store, "dead_letters" if ask == "dead_letters" else "get")

        def slow(*args: object) -> object:
            reading.set()
            release.wait(10)
            return real(*args)

        setattr(store, "dead_letters" if ask == "dead_letters" else "get", slow)
        calls = {"status": lambda: queue.status("gone"), "info": lambda: queue.info("gone"),
                 "wait": lambda: pytest.raises(KeyError, queue.wait, "gone"),
                 "dead_letters": queue.dead_letters}
        asker = threading.Thread(daemon=True, target=calls[ask])
        asker.start()
        assert reading.wait(5)
        ran = threading.Event()
        queue.enqueue_with_handler(final.Job("meanwhile"), lambda p: ran.set())
        assert ran.wait(5)  # the worker was not waiting for the queue's mutex
        release.set()
        asker.join(10)


class TestHandlerEscapes:
    def test_system_exit_in_a_handler_fails_the_attempt_not_the_worker(self, make: Make) -> None:
        def leaves(payload: bytes) -> None:
            raise SystemExit(3)

        queue = make(num_workers=1, handler=leaves, max_retries=0)
        queue.enqueue(final.Job("exit"))
        assert queue.wait("exit", timeout=10) is Status.FAILED
        queue.enqueue_with_handler(final.Job("after"), lambda p: None)
        assert queue.wait("after", timeout=10) is Status.COMPLETED  # the worker lived on


class TestDuplicate:
    def test_active_id_is_refused(self, make: Make) -> None:
        queue = make(num_workers=1, handler=lambda p: None)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("dup"))
        with pytest.raises(final.DuplicateJob, match="'dup' is already queued"):
            queue.enqueue(final.Job("dup"))
        with pytest.raises(final.DuplicateJob, match="already processing"):
            queue.enqueue(final.Job("blocker"))
        gate.release.set()
        assert queue.wait("dup", timeout=10) is Status.COMPLETED

    def test_finished_id_starts_fresh(self, make: Make) -> None:
        ran: list[bytes] = []
        queue = make(handler=ran.append)
        queue.enqueue(final.Job("again", b"1"))
        assert queue.wait("again", timeout=10) is Status.COMPLETED
        queue.enqueue(final.Job("again", b"2"))
        assert queue.wait("again", timeout=10) is Status.COMPLETED
        assert ran == [b"1", b"2"]


class TestDeadLetters:
    def test_failed_jobs_listed_and_requeued(self, make: Make) -> None:
        broken = {"a", "b"}

        def handler(payload: bytes) -> None:
            if payload.decode() in broken:
                raise ValueError(f"bad {payload.decode()}")

        queue = make(handler=handler, max_retries=0)
        for name in "abc":
            queue.enqueue(final.Job(name, name.encode()))
        assert queue.join(timeout=10)
        dead = queue.dead_letters()
        assert sorted(info.id for info in dead) == ["a", "b"]
        assert all(info.status is Status.FAILED for info in dead)
        broken.clear()
        queue.requeue("a")
        assert queue.wait("a", timeout=10) is Status.COMPLETED
        assert [info.id for info in queue.dead_letters()] == ["b"]
        info = queue.info("a")
        assert info is not None and info.attempts == 1

    def test_requeue_errors(self, make: Make) -> None:
        queue = make(handler=lambda p: None)
        with pytest.raises(KeyError):
            queue.requeue("unknown")
        queue.enqueue(final.Job("ok"))
        assert queue.wait("ok", timeout=10) is Status.COMPLETED
        with pytest.raises(ValueError, match="'ok' is completed, not failed"):
            queue.requeue("ok")


class TestRegister:
    def test_register_while_running(self, make: Make) -> None:
        ran: list[str] = []
        queue = make(handlers={"a": lambda p: ran.append("a-old")})
        queue.enqueue(final.Job("1", kind="a"))
        assert queue.wait("1", timeout=10) is Status.COMPLETED
        queue.register("a", lambda p: ran.append("a-new"))
        queue.register("b", lambda p: ran.append("b"))
        queue.enqueue(final.Job("2", kind="a"))
        queue.enqueue(final.Job("3", kind="b"))
        assert queue.join(timeout=10)
        assert sorted(ran) == ["a-new", "a-old", "b"]

    def test_register_checks_its_arguments(self, make: Make) -> None:
        queue = make(handler=print)
        with pytest.raises(TypeError, match="kind must be a str"):
            queue.register(1, print)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="handler must be callable"):
            queue.register("a", None)  # type: ignore[arg-type]


class TestBadInput:
    @pytest.mark.parametrize(
        ("fields", "error", "message"),
        [
            ({"num_workers": 0}, ValueError, r"^num_workers must be >= 1, got 0 \(only a queue "
                                             r"in PostgreSQL, whose jobs other processes run"),
            ({"num_workers": True}, TypeError, "num_workers must be an int"),
            ({"queue_size": 0}, ValueError, "queue_size must be >= 1"),
            ({"queue_size": 1.5}, TypeError, "queue_size must be an int"),
            ({"max_retries": -1}, ValueError, "max_retries must be >= 0"),
            ({"base_delay": -1}, ValueError, "base_delay must be >= 0"),
            ({"base_delay": "1"}, TypeError, "base_delay must be a number"),
            ({"max_delay": float("nan")}, ValueError, "max_delay must be a number of seconds, not"),
            ({"jitter": 1.5}, ValueError, "jitter must be a fraction"),
            ({"jitter": -0.1}, ValueError, "jitter must be >= 0"),
            ({"weights": {HIGH: 1}}, ValueError, "weights must give every priority"),
            ({"weights": {HIGH: 1, MEDIUM: 1, LOW: 0}}, ValueError, r"weights\[LOW\] must be"),
            ({"weights": {0: 1, 1: 1, 2: 1}}, TypeError, "weights keys must be Priority"),
            ({"weights": [1, 2, 3]}, TypeError, "weights must be a mapping"),
            ({"job_timeout": 0}, ValueError, "job_timeout must be > 0"),
            ({"shutdown_timeout": -1}, ValueError, "shutdown_timeout must be >= 0"),
            ({"persist_path": 3}, TypeError, "persist_path must be a path"),
            ({"fsync": "yes"}, TypeError, "fsync must be a bool"),
            ({"handler": "print"}, TypeError, "handler must be callable"),
            ({"handlers": {"a": 1}}, TypeError, r"handlers\['a'\] must be callable"),
            ({"handlers": {1: print}}, TypeError, "handlers keys must be str"),
            ({"status_retention": -1}, ValueError, "status_retention must be >= 0"),
        ],
    )
    def test_config(self, fields: dict[str, object], error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=message):
            final.Config(**fields)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("fields", "error", "message"),
        [
            ({"id": ""}, ValueError, "id must be a non-empty str"),
            ({"id": 5}, TypeError, "id must be a str"),
            ({"id": "é" * 129}, ValueError, "id must be at most 256 UTF-8 bytes"),
            ({"payload": "text"}, TypeError, "payload must be bytes"),
            ({"priority": 0}, TypeError, "priority must be one of Priority.HIGH"),
            ({"priority": "urgent"}, TypeError, "or its name: 'high'"),
            ({"kind": None}, TypeError, "kind must be a str"),
            ({"max_retries": -1}, ValueError, "max_retries must be >= 0"),
            ({"max_retries": False}, TypeError, "max_retries must be an int"),
        ],
    )
    def test_job(self, fields: dict[str, object], error: type[Exception], message: str) -> None:
        fields.setdefault("id", "ok")
        with pytest.raises(error, match=message):
            final.Job(**fields)  # type: ignore[arg-type]

    def test_job_is_immutable(self) -> None:
        job = final.Job("x")
        with pytest.raises(AttributeError):
            job.id = "y"  # type: ignore[misc]

    def test_config_must_be_a_config(self) -> None:
        with pytest.raises(TypeError, match="config must be a jobqueue.final.Config"):
            final.JobQueue({"num_workers": 1})  # type: ignore[arg-type]

    def test_negative_timeout(self, make: Make) -> None:
        queue = make(handler=print)
        with pytest.raises(ValueError, match="timeout must be"):
            queue.enqueue(final.Job("x"), timeout=-1)
