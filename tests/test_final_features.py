"""What users of huey, RQ and concurrent.futures reach for first: tasks, results, delayed and
periodic jobs, cancel, hooks, a Prometheus collector and eager mode; over every store.

Time is a fake clock the test moves (``Clock``): scheduled and periodic jobs come due when a
test says so, never by waiting.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Make
from test_final_contract import Gate, hold_worker, until

from jobqueue import final
from jobqueue.final import Job, Priority, Status
from jobqueue.final._periodic import Ticks, every_ticks, tick_id

HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW


class Clock:
    """A monotonic clock that moves only when a test calls ``advance``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Build = Callable[..., final.JobQueue]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def build(store: str, tmp_path: Path, clock: Clock,
          request: pytest.FixtureRequest) -> Iterator[Build]:
    """Queues with the store under test and the fake clock; closed afterwards. ``path`` and
    ``queue_name`` stay the same across calls, so a second queue is a restart."""
    queues: list[final.JobQueue] = []
    url = request.getfixturevalue("database_url") if store == "postgres" else None

    def make(**fields: object) -> final.JobQueue:
        if store == "lmdb":
            fields.setdefault("persist_path", str(tmp_path / "jobs"))
        elif store == "postgres":
            fields.setdefault("database_url", url)
            fields.setdefault("lease", 5.0)
        queue = final.JobQueue(final.Config(**fields), _clock=clock)  # type: ignore[arg-type]
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.close(timeout=5)


def advance(queue: final.JobQueue, clock: Clock, seconds: float) -> None:
    """Move the clock and wake the queue's timers, as time passing would (and, in
    PostgreSQL, its claimer, whose poll would otherwise wait for the clock)."""
    core = queue._core
    with core.mutex:
        clock.now += seconds
        core.retry_due.notify_all()
        core.tick_wake.notify_all()
    if core.shared:
        core.jobs_ready(None)


def wall(queue: final.JobQueue, clock: Clock) -> float:
    """The queue's time now, in epoch seconds."""
    return clock.now + queue._core.table.epoch_offset


# -- tasks --------------------------------------------------------------------------------

class TestTasks:
    def test_a_task_runs_with_its_arguments_and_returns_its_result(self, build: Build) -> None:
        jq = build()

        @jq.task(kind="email", priority=HIGH, max_retries=5)
        def send_email(to: str, subject: str, cc: list[str] | None = None) -> dict:
            return {"to": to, "subject": subject, "cc": cc}

        job_id = send_email.enqueue("ada@example.com", subject="hi", id="welcome-42")
        assert job_id == "welcome-42"
        assert jq.result(job_id, timeout=10) == {"to": "ada@example.com", "subject": "hi",
                                                 "cc": None}
        info = jq.info(job_id)
        assert info is not None and (info.kind, info.priority) == ("email", HIGH)
        assert json.loads(info.result) == {"to": "ada@example.com", "subject": "hi",  # type: ignore[arg-type]
                                           "cc": None}
        assert send_email("x", "y") == {"to": "x", "subject": "y", "cc": None}  # still a function

    def test_the_payload_is_json_and_a_fresh_id_is_made(self, build: Build) -> None:
        jq = build()
        gate = Gate()
        jq.register("blocker", gate)

        @jq.task(kind="add")
        def add(a: int, b: int) -> int:
            return a + b

        first, second = add.enqueue(1, 2), add.enqueue(a=3, b=4)
        assert first != second and len(first) == 32
        assert jq.result(first, timeout=10) == 3 and jq.result(second, timeout=10) == 7
        job = add.job(5, b=6, id="explicit")
        assert json.loads(job.payload) == {"args": [5], "kwargs": {"b": 6}}
        assert (job.id, job.kind) == ("explicit", "add")
        gate.release.set()

    @pytest.mark.parametrize("store", ["memory"])
    def test_bad_arguments_fail_at_enqueue_naming_the_argument(self, build: Build) -> None:
        jq = build()

        @jq.task(kind="email")
        def send_email(to: str, subject: str) -> None:
            pass

        with pytest.raises(TypeError, match="argument 'to' cannot be encoded as JSON"):
            send_email.enqueue(to={1, 2}, subject="x")
        with pytest.raises(TypeError, match="missing a required argument: 'subject'"):
            send_email.enqueue(to="x")
        with pytest.raises(TypeError, match="unexpected keyword argument 'bcc'"):
            send_email.enqueue(to="x", subject="y", bcc="z")
        circular: list = []
        circular.append(circular)
        with pytest.raises(TypeError, match="argument 'subject' cannot be encoded"):
            send_email.enqueue("x", circular)
        assert jq.metrics().queued == 0 and jq.metrics().completed == 0  # nothing enqueued

    @pytest.mark.parametrize("store", ["memory"])
    def test_a_parameter_named_like_an_enqueue_option_is_refused(self, build: Build) -> None:
        jq = build()
        with pytest.raises(TypeError, match="parameter 'id' of .* clashes with id="):
            @jq.task(kind="x")
            def bad(id: str) -> None:
                pass
        with pytest.raises(TypeError, match="must be a plain function"):
            @jq.task(kind="y")
            async def coro() -> None:
                pass

    @pytest.mark.parametrize("store", ["memory"])
    def test_odd_arguments_are_type_errors_too(self, build: Build) -> None:
        jq = build()

        @jq.task(kind="t")
        def t(x: object) -> None:
            pass

        deep: list = []
        for _ in range(100_000):
            deep = [deep]
        with pytest.raises(TypeError, match="argument 'x' cannot be encoded as JSON"):
            t.enqueue(deep)
        with pytest.raises(TypeError, match="argument 'x' cannot be encoded"):
            t.enqueue(math.nan)  # standard JSON has no NaN
        with pytest.raises(TypeError, match="argument 'x' cannot be encoded"):
            t.enqueue(b"bytes")

    @pytest.mark.parametrize("store", ["memory"])
    def test_two_functions_cannot_share_a_kind(self, build: Build) -> None:
        jq = build()

        def make(n: int) -> Callable[[], int]:
            def task() -> int:
                return n
            return task

        first = jq.task()(make(1))
        with pytest.raises(ValueError, match="is the task .* already: give this one its own"):
            jq.task()(make(2))
        assert jq.task()(first.function) is not None  # the same function again is fine
        second = jq.task(kind="second")(make(2))
        assert jq.result(second.enqueue(), timeout=10) == 2
        assert jq.result(first.enqueue(), timeout=10) == 1
        jq.register(first.kind, lambda p: b"plain")  # a plain handler takes the kind over
        assert jq.result(first.enqueue(), timeout=10) == b"plain"

    @pytest.mark.parametrize("store", ["memory"])
    def test_an_unencodable_result_fails_the_job(self, build: Build) -> None:
        jq = build(max_retries=0)

        @jq.task(kind="bad")
        def bad() -> object:
            return object()

        job_id = bad.enqueue()
        with pytest.raises(final.JobFailed, match="cannot be encoded as JSON") as failed:
            jq.result(job_id, timeout=10)
        assert failed.value.job_id == job_id and failed.value.attempts == 1

    @pytest.mark.parametrize("store", ["memory"])
    def test_a_payload_not_made_by_the_task_fails_clearly(self, build: Build) -> None:
        jq = build(max_retries=0)

        @jq.task(kind="t")
        def t(x: int) -> int:
            return x

        jq.enqueue(Job("raw", b"not json", kind="t"))
        with pytest.raises(final.JobFailed, match="the payload is not arguments of task 't'"):
            jq.result("raw", timeout=10)


# -- results ------------------------------------------------------------------------------

class TestResultMarks:
    def test_a_task_result_from_before_the_mark_decodes(self) -> None:
        with final.JobQueue(final.Config(handler=print)) as jq:
            @jq.task(kind="old")
            def old() -> None: ...

            record = final.JobRecord("before", b"", MEDIUM, "old", None, 0.0,
                                     Status.COMPLETED, 1, None, 0.0, 1.0, None, 1,
                                     b'{"sum": 3}')
            jq._core.store.finished(record)  # as a store written before the mark has it
            assert jq.result("before") == {"sum": 3}

    def test_kept_results_stay_plain_values_for_the_collector(self) -> None:
        with final.JobQueue(final.Config(handler=print)) as jq:
            @jq.task()
            def answer() -> int:
                return 42

            job_id = answer.enqueue()
            assert jq.result(job_id, timeout=10) == 42
            gc.collect()
            assert not gc.is_tracked(jq._core.store._finished[job_id])  # type: ignore[attr-defined]


class TestResults:
    def test_bytes_are_kept_and_other_values_of_plain_handlers_are_not(
        self, build: Build
    ) -> None:
        jq = build(handlers={"bytes": lambda p: b"made:" + p, "other": lambda p: 42,
                             "view": lambda p: memoryview(b"mv"), "none": lambda p: None})
        for kind in ("bytes", "other", "view", "none"):
            jq.enqueue(Job(kind, b"x", kind=kind))
        assert jq.result("bytes", timeout=10) == b"made:x"
        assert jq.result("other", timeout=10) is None
        assert jq.result("view", timeout=10) == b"mv"
        assert jq.result("none", timeout=10) is None
        assert jq.info("bytes").result == b"made:x"  # type: ignore[union-attr]

    def test_a_failed_job_raises_job_failed_with_its_last_error(self, build: Build) -> None:
        def boom(payload: bytes) -> None:
            raise ValueError(f"bad {payload.decode()}")

        jq = build(handler=boom, max_retries=1, base_delay=0)
        jq.enqueue(Job("f", b"input"))
        with pytest.raises(final.JobFailed) as failed:
            jq.result("f", timeout=10)
        assert failed.value.last_error == "ValueError: bad input"
        assert failed.value.attempts == 2
        assert "failed after 2 attempts: ValueError: bad input" in str(failed.value)

    def test_unknown_ids_and_timeouts(self, build: Build) -> None:
        jq = build(handler=lambda p: None)
        with pytest.raises(KeyError, match="no job 'nope' in this queue"):
            jq.result("nope")
        with pytest.raises(KeyError, match="no job 'nope' in this queue"):
            jq.wait("nope")
        gate = hold_worker(jq, "slow")
        with pytest.raises(TimeoutError):
            jq.result("slow", timeout=0)  # (the clock is fake: only 0 runs out)
        gate.release.set()
        assert jq.result("slow", timeout=10) is None

    @pytest.mark.parametrize("store", ["lmdb", "postgres"])
    def test_results_outlive_the_process(self, build: Build) -> None:
        jq = build(handler=lambda p: p[::-1])
        jq.enqueue(Job("r", b"abc"))
        assert jq.result("r", timeout=10) == b"cba"
        jq.close()
        again = build(handler=lambda p: p)
        assert again.result("r", timeout=10) == b"cba"
        assert again.info("r").result == b"cba"  # type: ignore[union-attr]


# -- delayed and scheduled jobs -----------------------------------------------------------

class TestScheduled:
    def test_a_delayed_job_waits_until_the_clock_says(self, build: Build, clock: Clock) -> None:
        ran = threading.Event()
        jq = build(handler=lambda p: ran.set())
        jq.enqueue(Job("later"), delay=60)
        info = jq.info("later")
        assert info is not None and info.status is Status.SCHEDULED
        assert info.retry_at == pytest.approx(wall(jq, clock) + 60)
        assert jq.queue_stats().scheduled == 1 and jq.queue_stats().queued == 0
        advance(jq, clock, 59)
        assert jq.status("later") is Status.SCHEDULED
        advance(jq, clock, 1)
        assert jq.wait("later", timeout=10) is Status.COMPLETED and ran.is_set()

    def test_run_at_in_the_past_or_a_zero_delay_runs_at_once(
        self, build: Build, clock: Clock
    ) -> None:
        jq = build(handler=lambda p: None)
        jq.enqueue(Job("past", run_at=wall(jq, clock) - 10))
        jq.enqueue(Job("now"), delay=0)
        assert jq.wait("past", timeout=10) is Status.COMPLETED
        assert jq.wait("now", timeout=10) is Status.COMPLETED

    def test_run_at_schedules_a_job(self, build: Build, clock: Clock) -> None:
        jq = build(handler=lambda p: None)
        jq.enqueue_many([Job("a", run_at=wall(jq, clock) + 30),
                         Job("b", run_at=wall(jq, clock) + 10), Job("c")])
        assert jq.wait("c", timeout=10) is Status.COMPLETED
        assert {jq.status("a"), jq.status("b")} == {Status.SCHEDULED}
        advance(jq, clock, 10)
        assert jq.wait("b", timeout=10) is Status.COMPLETED
        assert jq.status("a") is Status.SCHEDULED
        advance(jq, clock, 20)
        assert jq.wait("a", timeout=10) is Status.COMPLETED

    @pytest.mark.parametrize("store", ["memory"])
    @pytest.mark.parametrize(("delay", "error", "match"), [
        (-1, ValueError, "delay must be from 0"), (math.nan, ValueError, "delay must be from 0"),
        (math.inf, ValueError, "delay must be from 0"), ("5", TypeError, "delay must be a number"),
        (True, TypeError, "delay must be a number"),
    ])
    def test_bad_delays_are_refused(self, build: Build, delay: object, error: type,
                                    match: str) -> None:
        jq = build(handler=lambda p: None)
        with pytest.raises(error, match=match):
            jq.enqueue(Job("x"), delay=delay)  # type: ignore[arg-type]
        assert jq.status("x") is None

    @pytest.mark.parametrize(("run_at", "error"), [
        (math.nan, ValueError), (math.inf, ValueError), (1e300, ValueError), ("now", TypeError),
    ])
    def test_bad_run_at_is_refused(self, run_at: object, error: type) -> None:
        with pytest.raises(error, match="run_at must be"):
            Job("x", run_at=run_at)  # type: ignore[arg-type]

    @pytest.mark.parametrize("store", ["memory"])
    def test_delay_and_run_at_together_are_refused(self, build: Build, clock: Clock) -> None:
        jq = build(handler=lambda p: None)
        with pytest.raises(ValueError, match="give delay= or run_at, not both"):
            jq.enqueue(Job("x", run_at=wall(jq, clock) + 5), delay=5)

    @pytest.mark.bounded
    def test_scheduled_jobs_take_no_room_but_are_bounded(
        self, build: Build, clock: Clock
    ) -> None:
        jq = build(handler=lambda p: None, queue_size=1, max_scheduled=3, num_workers=1)
        gate = hold_worker(jq)
        jq.enqueue(Job("queued", priority=HIGH))  # the HIGH queue is full now
        for n in range(3):
            jq.enqueue(Job(f"s{n}", priority=HIGH), delay=100)
        with pytest.raises(final.QueueFull, match="max_scheduled is 3"):
            jq.enqueue(Job("s3"), delay=100)
        with pytest.raises(final.QueueFull):
            jq.enqueue(Job("full", priority=HIGH), block=False)
        assert jq.status("s3") is None
        gate.release.set()
        advance(jq, clock, 100)
        for n in range(3):
            assert jq.wait(f"s{n}", timeout=10) is Status.COMPLETED

    @pytest.mark.parametrize("store", ["lmdb", "postgres"])
    def test_a_scheduled_job_outlives_a_restart_with_its_due_time(
        self, build: Build, clock: Clock
    ) -> None:
        jq = build(handler=lambda p: None)
        due = wall(jq, clock) + 3600
        jq.enqueue(Job("nightly", b"p"), delay=3600)
        jq.close()
        ran = threading.Event()
        again = build(handler=lambda p: ran.set())
        info = again.info("nightly")
        assert info is not None and info.status is Status.SCHEDULED
        assert info.retry_at == pytest.approx(due)
        advance(again, clock, 3600)
        assert again.wait("nightly", timeout=10) is Status.COMPLETED and ran.is_set()

    def test_a_job_claimed_at_a_restart_wakes_the_timer(self, tmp_path: Path) -> None:
        """The retry timer sleeps with nothing to wait for; a scheduled job the claimer brings
        back must wake it. (The real clock: a fake one would wake it by being moved.)"""
        path = str(tmp_path / "jobs")
        with final.JobQueue(final.Config(persist_path=path, handler=lambda p: None)) as jq:
            jq.enqueue(Job("soon"), delay=0.3)
        with final.JobQueue(final.Config(persist_path=path, handler=lambda p: None)) as jq:
            assert jq.wait("soon", timeout=10) is Status.COMPLETED

    @pytest.mark.parametrize("store", ["memory"])
    def test_scheduled_jobs_lost_by_a_close_from_a_handler_are_named(
        self, build: Build
    ) -> None:
        holder: list[final.JobQueue] = []
        jq = build(handlers={"closer": lambda p: holder[0].close(), "x": lambda p: None})
        holder.append(jq)
        jq.enqueue(Job("tomorrow", kind="x"), delay=86400)
        jq.enqueue(Job("close", kind="closer"))
        assert jq.close(timeout=10) == ["tomorrow"]
        assert jq.metrics().abandoned == 1

    @pytest.mark.parametrize("store", ["memory"])
    def test_close_waits_for_a_scheduled_job_still_being_stored(
        self, build: Build, clock: Clock
    ) -> None:
        from jobqueue.final._states import GONE
        from jobqueue.final._table import Entry

        jq = build(handler=lambda p: None)
        core = jq._core
        with core.mutex:
            assert core.drained_locked()
            entry = Entry(Job("storing"), None, 1, clock(), wall(jq, clock) + 60, clock() + 60)
            core.table.reserve([entry])  # as admission does while the store commits
            assert not core.drained_locked()  # close() must wait for the commit
            assert core.table.scheduled() == 1 and core.table.occupied(MEDIUM) == 0
            core.table.transition(entry, GONE, clock())
            assert core.drained_locked() and core.table.scheduled() == 0

    @pytest.mark.parametrize("store", ["memory"])
    def test_close_does_not_wait_for_scheduled_jobs_and_names_them(
        self, build: Build, caplog: pytest.LogCaptureFixture
    ) -> None:
        jq = build(handler=lambda p: None)
        jq.enqueue(Job("tomorrow"), delay=86400)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            assert jq.close(timeout=30) == ["tomorrow"]
        assert time.monotonic() - started < 10
        assert "1 scheduled jobs were not due yet, and are lost" in caplog.text


# -- cancel -------------------------------------------------------------------------------

class TestCancel:
    def test_queued_scheduled_and_retrying_jobs_are_cancelled(
        self, build: Build, clock: Clock
    ) -> None:
        attempts: list[str] = []

        def flaky(payload: bytes) -> None:
            attempts.append(payload.decode())
            raise ConnectionError("down")

        jq = build(handlers={"flaky": flaky, "ok": lambda p: None}, base_delay=60, jitter=0)
        jq.enqueue(Job("retrying", b"r", kind="flaky"))
        assert until(lambda: jq.status("retrying") is Status.RETRYING)
        jq.enqueue(Job("scheduled", kind="ok"), delay=30)
        for job_id in ("retrying", "scheduled"):
            assert jq.cancel(job_id) is True
            assert jq.status(job_id) is Status.CANCELLED
            assert jq.wait(job_id, timeout=10) is Status.CANCELLED
            with pytest.raises(final.JobCancelled, match=f"job {job_id!r} was cancelled"):
                jq.result(job_id)
        advance(jq, clock, 120)  # neither comes back
        jq.enqueue(Job("after", kind="ok"))
        assert jq.wait("after", timeout=10) is Status.COMPLETED
        assert attempts == ["r"]
        assert jq.cancel("retrying") is False  # finished now
        assert jq.metrics().cancelled == 2 or jq.queue_stats().cancelled == 2

    @pytest.mark.parametrize("store", ["memory", "lmdb"])
    def test_a_queued_job_is_cancelled_and_frees_its_room(self, build: Build) -> None:
        jq = build(handler=lambda p: None, num_workers=1, queue_size=1)
        gate = hold_worker(jq)
        jq.enqueue(Job("waiting", priority=HIGH))
        with pytest.raises(final.QueueFull):
            jq.enqueue(Job("more", priority=HIGH), block=False)
        assert jq.cancel("waiting") is True
        jq.enqueue(Job("more", priority=HIGH), block=False)  # its room is free again
        gate.release.set()
        assert jq.wait("more", timeout=10) is Status.COMPLETED
        assert jq.status("waiting") is Status.CANCELLED

    def test_a_running_job_is_asked_to_stop(self, build: Build) -> None:
        woke = threading.Event()
        started = threading.Event()

        def patient(payload: bytes) -> None:
            started.set()
            if final.current_job().wait(30):  # wakes at the cancel, not after 30 s
                woke.set()
                raise RuntimeError("stopped early")

        jq = build(handler=patient, max_retries=3, base_delay=0)
        jq.enqueue(Job("long"))
        assert started.wait(10)
        assert jq.cancel("long") is False  # running: asked, not cancelled
        assert woke.wait(10)
        # It stopped as asked by raising: CANCELLED, and not retried.
        assert jq.wait("long", timeout=10) is Status.CANCELLED
        assert jq.info("long").attempts == 1  # type: ignore[union-attr]
        assert jq.info("long").last_error == "RuntimeError: stopped early"  # type: ignore[union-attr]

    def test_a_running_job_that_returns_anyway_is_completed(self, build: Build) -> None:
        gate = Gate()
        jq = build(handler=gate)
        jq.enqueue(Job("busy"))
        assert gate.started.wait(10)
        assert jq.cancel("busy") is False
        gate.release.set()
        assert jq.wait("busy", timeout=10) is Status.COMPLETED

    @pytest.mark.parametrize("store", ["memory", "lmdb"])
    def test_cancel_after_close_is_refused(self, build: Build) -> None:
        jq = build(handler=lambda p: None)
        jq.enqueue(Job("later"), delay=3600)
        jq.close()
        with pytest.raises(final.QueueClosed, match="cannot cancel after close"):
            jq.cancel("later")

    def test_finished_and_unknown_jobs_are_not_cancelled(self, build: Build) -> None:
        jq = build(handler=lambda p: None)
        jq.enqueue(Job("done"))
        jq.wait("done", timeout=10)
        assert jq.cancel("done") is False and jq.cancel("never") is False
        with pytest.raises(TypeError):
            jq.cancel(5)  # type: ignore[arg-type]

    @pytest.mark.parametrize("store", ["postgres"])
    def test_in_postgres_a_job_no_process_holds_is_cancelled_in_the_database(
        self, build: Build
    ) -> None:
        producer = build(handler=None, handlers={})  # runs nothing: the job stays unheld
        producer.enqueue(Job("elsewhere", kind="remote"))
        assert producer.status("elsewhere") is Status.QUEUED
        assert producer.cancel("elsewhere") is True
        assert producer.status("elsewhere") is Status.CANCELLED
        assert producer.cancel("elsewhere") is False
        # A job for later waits in the database even from a process that could run it,
        # so that any process can cancel it.
        runner = build(handler=lambda p: None, queue_name="other")
        runner.enqueue(Job("later", run_at=time.time() + 3600))
        assert runner._core.table.get("later") is None  # not held here
        assert runner.cancel("later") is True


# -- periodic jobs ------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ran = threading.Condition()

    def __call__(self, payload: bytes) -> None:
        with self.ran:
            self.ids.append(final.current_job().job.id)
            self.ran.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self.ran:
            assert self.ran.wait_for(lambda: len(self.ids) >= count, timeout=10), self.ids
            return list(self.ids)


class TestPeriodic:
    def test_every_enqueues_one_job_per_tick_with_a_derived_id(
        self, build: Build, clock: Clock
    ) -> None:
        recorder = Recorder()
        jq = build(handlers={"report": recorder})
        jq.every(60, lambda: Job("ignored", b"r", kind="report"), name="report")
        first = (math.floor(wall(jq, clock) / 60) + 1) * 60
        advance(jq, clock, first - wall(jq, clock) + 0.01)  # (a hair past: floats)
        assert recorder.wait_for(1) == [tick_id("report", first)]
        advance(jq, clock, 60)
        assert recorder.wait_for(2)[1] == tick_id("report", first + 60)
        assert tick_id("report", first).startswith("report@") and tick_id(
            "report", first).endswith(":00Z")
        # Five periods at once (the process was busy): the latest tick, once.
        advance(jq, clock, 300)
        assert recorder.wait_for(3)[2] == tick_id("report", first + 360)
        assert until(lambda: jq.status(tick_id("report", first + 360)) is Status.COMPLETED)
        assert len(recorder.ids) == 3

    @pytest.mark.parametrize("store", ["lmdb", "postgres"])
    def test_a_restart_never_enqueues_a_tick_twice(self, build: Build, clock: Clock) -> None:
        recorder = Recorder()
        jq = build(handlers={"report": recorder})
        jq.every(60, lambda: Job("x", kind="report"), name="report")
        tick = (math.floor(wall(jq, clock) / 60) + 1) * 60
        advance(jq, clock, tick - wall(jq, clock) + 0.01)
        recorder.wait_for(1)
        assert jq.wait(tick_id("report", tick), timeout=10) is Status.COMPLETED
        jq.close()
        # The next process starts in the same tick's second: its schedule must not run it
        # again, whether it computes that tick or the next.
        again = build(handlers={"report": recorder})
        again.every(60, lambda: Job("x", kind="report"), name="report")
        again._core.schedules[0].next_tick = tick  # as if started a moment before the tick
        # (A new queue's epoch offset is anchored afresh: move to the tick on its time.)
        advance(again, clock, tick - wall(again, clock) + 0.01)
        # The ticker has handled that tick before the clock moves on: two steps at once
        # would merge into the latest tick only, and hide a tick enqueued twice.
        assert until(lambda: again._core.schedules[0].next_tick == tick + 60)
        advance(again, clock, 60)
        ids = recorder.wait_for(2)
        assert until(lambda: again.status(tick_id("report", tick + 60)) is Status.COMPLETED)
        assert ids.count(tick_id("report", tick)) == 1

    @pytest.mark.parametrize("store", ["postgres"])
    def test_two_processes_sharing_a_queue_enqueue_a_tick_once(
        self, build: Build, clock: Clock
    ) -> None:
        recorder = Recorder()
        first = build(handlers={"report": recorder}, queue_name="shared")
        second = build(handlers={"report": recorder}, queue_name="shared")
        for jq in (first, second):
            jq.every(60, lambda: Job("x", kind="report"), name="report")
        tick = first._core.schedules[0].next_tick
        second._core.schedules[0].next_tick = tick
        advance(first, clock, tick - wall(first, clock) + 0.01)
        advance(second, clock, 0)
        recorder.wait_for(1)
        for jq in (first, second):
            assert until(lambda jq=jq: jq._core.schedules[0].next_tick != tick)
        assert first.wait(tick_id("report", tick), timeout=10) is Status.COMPLETED
        first.close()
        second.close()
        assert recorder.ids == [tick_id("report", tick)]

    def test_cron_uses_croniter_times(self, build: Build, clock: Clock) -> None:
        recorder = Recorder()
        jq = build(handlers={"sweep": recorder})
        jq.cron("*/5 * * * *", lambda: Job("x", kind="sweep"), name="sweep")
        tick = jq._core.schedules[0].next_tick
        assert tick % 300 == 0 and 0 < tick - wall(jq, clock) <= 300
        advance(jq, clock, tick - wall(jq, clock) + 0.01)
        assert recorder.wait_for(1) == [tick_id("sweep", tick)]

    @pytest.mark.parametrize("store", ["memory"])
    def test_bad_schedules_are_refused(self, build: Build) -> None:
        jq = build(handler=lambda p: None)
        make = lambda: Job("x")  # noqa: E731
        for seconds, error in ((0, ValueError), (-1, ValueError), (math.nan, ValueError),
                               (math.inf, ValueError), ("60", TypeError)):
            with pytest.raises(error, match="seconds must be"):
                jq.every(seconds, make, name="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a cron expression"):
            jq.cron("every tuesday", make, name="x")
        with pytest.raises(ValueError, match="must not contain '@'"):
            jq.every(60, make, name="a@b")
        with pytest.raises(ValueError, match="name must be a non-empty str"):
            jq.every(60, make, name="")
        with pytest.raises(TypeError, match="job_factory must be callable"):
            jq.every(60, "job", name="x")  # type: ignore[arg-type]
        jq.every(60, make, name="x")
        with pytest.raises(ValueError, match="named 'x' exists already"):
            jq.every(30, make, name="x")
        jq.close()
        with pytest.raises(final.QueueClosed):
            jq.every(60, make, name="y")

    @pytest.mark.parametrize("seconds", [0.007, 0.029, 0.123, 0.1, 60.0])
    def test_every_tick_is_after_the_last_whatever_the_rounding(self, seconds: float) -> None:
        ticks = every_ticks(seconds)
        for k in range(1, 200_000, 997):
            tick = k * seconds + 1.7e9 // seconds * seconds
            after = ticks.next_after(tick)
            assert after > tick and after - tick <= seconds * 1.0001
            latest = ticks.latest(tick)
            assert latest <= tick < ticks.next_after(latest)

    @pytest.mark.parametrize("store", ["memory"])
    def test_a_schedule_whose_times_ran_out_stops_alone(
        self, build: Build, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        recorder = Recorder()
        jq = build(handlers={"r": recorder})
        with pytest.raises(ValueError, match="has no time after now"):
            jq.cron("* * * * * * 2000-2001", lambda: Job("x", kind="r"), name="past")
        start = wall(jq, clock)
        calls = []

        def next_after(now: float) -> float:
            calls.append(now)
            if len(calls) > 1:
                raise RuntimeError("no more times")
            return start + 1

        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            jq._add_schedule("ends", Ticks(next_after, lambda now: start + 1),
                             lambda: Job("x", kind="r"))
            jq.every(10, lambda: Job("x", kind="r"), name="goes-on")
            with jq._core.mutex:  # its first tick after the other's last, whatever the time
                jq._core.schedules[1].next_tick = (math.floor(start / 10) + 2) * 10
            advance(jq, clock, 1.5)
            assert recorder.wait_for(1) == [tick_id("ends", start + 1)]  # its last tick runs
            assert "has no time after" in caplog.text
            assert [s.name for s in jq._core.schedules] == ["goes-on"]
            tick = jq._core.schedules[0].next_tick
            advance(jq, clock, tick - wall(jq, clock) + 0.01)
            assert recorder.wait_for(2)[1] == tick_id("goes-on", tick)

    @pytest.mark.parametrize("store", ["memory"])
    def test_a_factory_raising_system_exit_does_not_stop_the_thread(
        self, build: Build, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        recorder = Recorder()
        jq = build(handlers={"r": recorder})

        def exits() -> Job:
            raise SystemExit("a factory must not end the periodic thread")

        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            jq.every(10, exits, name="exits")
            jq.every(10, lambda: Job("x", kind="r"), name="fine")
            tick = jq._core.schedules[0].next_tick
            advance(jq, clock, tick - wall(jq, clock) + 0.01)
            assert recorder.wait_for(1) == [tick_id("fine", tick)]
            advance(jq, clock, 10)
            assert recorder.wait_for(2)[1] == tick_id("fine", tick + 10)
        assert "periodic job 'exits': the tick at" in caplog.text

    @pytest.mark.parametrize("store", ["memory"])
    def test_every_from_a_handler_during_close_is_refused_at_once(self, build: Build) -> None:
        holder: list[final.JobQueue] = []
        gate = Gate()
        refused: list[BaseException] = []

        def handler(payload: bytes) -> None:
            gate(payload)
            try:
                holder[0].every(60, lambda: Job("x"), name="late")
            except final.QueueClosed as exc:
                refused.append(exc)

        jq = build(handler=handler)
        holder.append(jq)
        jq.enqueue(Job("a"))
        assert gate.started.wait(10)
        closer = threading.Thread(target=jq.close, kwargs={"timeout": None}, daemon=True)
        closer.start()
        assert until(lambda: jq._core.closing)
        gate.release.set()
        closer.join(30)
        assert not closer.is_alive() and len(refused) == 1
        assert jq.status("a") is Status.COMPLETED

    @pytest.mark.parametrize("store", ["memory"])
    def test_a_factory_that_fails_is_logged_and_the_schedule_goes_on(
        self, build: Build, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        recorder = Recorder()
        jq = build(handlers={"r": recorder})
        calls = []

        def factory() -> Job:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("factory broke")
            return Job("x", kind="r")

        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            jq.every(10, factory, name="r")
            tick = jq._core.schedules[0].next_tick
            advance(jq, clock, tick - wall(jq, clock) + 0.01)
            assert until(lambda: "was not enqueued" in caplog.text)
            advance(jq, clock, 10)
            assert recorder.wait_for(1) == [tick_id("r", tick + 10)]


# -- hooks --------------------------------------------------------------------------------

class TestHooks:
    def test_a_job_done_in_closes_last_second_has_its_hook(self, make: Make) -> None:
        heard: list[str] = []
        started = threading.Event()

        def handler(payload: bytes) -> None:
            started.set()
            final.current_job().wait(None)  # returns once close() stops waiting: COMPLETED

        jq = make(handler=handler, num_workers=1, shutdown_timeout=0.1,  # (a real clock)
                  on_complete=lambda info: heard.append(info.id))
        jq.enqueue(Job("late"))
        assert started.wait(10)
        assert jq.close() == []  # done within the second close() gives handlers
        assert heard == ["late"]

    def test_hooks_see_the_recorded_outcome(self, build: Build) -> None:
        seen: list[tuple[str, str, Status | None]] = []
        holder: list[final.JobQueue] = []
        done = threading.Barrier(2, timeout=10)

        def hook(name: str) -> Callable[[final.JobInfo], None]:
            def called(info: final.JobInfo) -> None:
                seen.append((name, info.id, holder[0].status(info.id)))
                if info.status is not Status.RETRYING:
                    done.wait()
            return called

        def handler(payload: bytes) -> bytes:
            if payload == b"fail":
                raise ValueError("no")
            return b"ok"

        # One worker: with more, another may run the retry (base_delay=0) and call its
        # hook while the first still calls the retry's.
        jq = build(handler=handler, max_retries=1, base_delay=0, num_workers=1,
                   on_complete=hook("complete"), on_failure=hook("failure"),
                   on_retry=hook("retry"))
        holder.append(jq)
        jq.enqueue(Job("good", b"ok"))
        done.wait()
        jq.enqueue(Job("bad", b"fail"))
        done.wait()
        assert seen[0] == ("complete", "good", Status.COMPLETED)
        assert seen[1][:2] == ("retry", "bad")
        assert seen[2] == ("failure", "bad", Status.FAILED)

    def test_a_hook_that_raises_is_logged_and_changes_nothing(
        self, build: Build, caplog: pytest.LogCaptureFixture
    ) -> None:
        called = threading.Event()

        def broken(info: final.JobInfo) -> None:
            called.set()
            raise SystemExit("a hook must not end the worker")

        jq = build(handler=lambda p: None, on_complete=broken, num_workers=1)
        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            jq.enqueue(Job("a"))
            assert called.wait(10)
            jq.enqueue(Job("b"))  # the one worker lives on
            assert jq.wait("b", timeout=10) is Status.COMPLETED
        assert jq.status("a") is Status.COMPLETED
        assert "a hook raised for job 'a'" in caplog.text

    @pytest.mark.parametrize("store", ["memory", "lmdb"])
    def test_a_hook_that_would_wait_for_room_forever_raises_instead(
        self, build: Build, caplog: pytest.LogCaptureFixture
    ) -> None:
        holder: list[final.JobQueue] = []

        def follow_up(info: final.JobInfo) -> None:
            if info.id == "first":
                holder[0].enqueue(Job("follow-up", priority=HIGH))  # HIGH is full

        jq = build(handler=lambda p: None, on_complete=follow_up, num_workers=1,
                   queue_size=1)
        holder.append(jq)
        gate = Gate()
        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            jq.enqueue_with_handler(Job("first", priority=HIGH), gate)
            assert gate.started.wait(10)
            jq.enqueue(Job("queued", priority=HIGH))  # fills HIGH
            gate.release.set()
            assert jq.wait("queued", timeout=10) is Status.COMPLETED  # no hang
        assert "every worker would" in caplog.text or "all 1 workers would be waiting" in (
            caplog.text)
        assert jq.status("follow-up") is None

    @pytest.mark.parametrize("store", ["memory"])
    def test_a_hook_reads_finished_jobs_and_is_refused_a_wait(self, build: Build) -> None:
        holder: list[final.JobQueue] = []
        seen: list[object] = []
        gate = Gate()

        def hook(info: final.JobInfo) -> None:
            seen.append(holder[0].result(info.id))  # its own job: finished
            try:
                holder[0].wait("blocked")
            except RuntimeError as exc:
                seen.append(str(exc))

        jq = build(handlers={"r": lambda p: b"done", "gate": gate}, on_complete=hook)
        holder.append(jq)
        jq.enqueue(Job("blocked", kind="gate"))
        assert gate.started.wait(10)
        jq.enqueue(Job("first", kind="r"))
        assert until(lambda: len(seen) == 2)
        assert seen[0] == b"done"
        assert "from a hook would block a worker" in seen[1]  # type: ignore[operator]
        gate.release.set()

    @pytest.mark.parametrize("store", ["memory"])
    def test_a_hook_may_enqueue_follow_up_work(self, build: Build) -> None:
        holder: list[final.JobQueue] = []

        def follow_up(info: final.JobInfo) -> None:
            if info.id == "first":
                holder[0].enqueue(Job("second"))

        jq = build(handler=lambda p: None, on_complete=follow_up)
        holder.append(jq)
        jq.enqueue(Job("first"))
        assert until(lambda: jq.status("second") is not None)
        assert jq.wait("second", timeout=10) is Status.COMPLETED

    def test_hooks_must_be_plain_callables(self) -> None:
        with pytest.raises(TypeError, match="on_complete must be callable"):
            final.Config(on_complete="print")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="on_failure must be a plain function"):
            async def hook(info: final.JobInfo) -> None:
                pass
            final.Config(on_failure=hook)


# -- eager mode ---------------------------------------------------------------------------

class TestEager:
    def test_a_chain_of_tasks_runs_at_any_depth(self) -> None:
        with final.JobQueue(final.Config(eager=True)) as jq:
            @jq.task()
            def step(n: int) -> int:
                if n:
                    step.enqueue(n - 1, id=f"step-{n - 1}")
                return n

            step.enqueue(400, id="step-400")  # the threaded queue runs it as deep
            assert [jq.result(f"step-{n}") for n in (400, 200, 0)] == [400, 200, 0]
            assert jq.metrics().completed == 401

    def test_a_tree_of_tasks_larger_than_queue_size_runs_whole(self) -> None:
        with final.JobQueue(final.Config(eager=True, queue_size=10)) as jq:
            @jq.task()
            def node(depth: int) -> None:
                if depth:
                    for _ in range(2):
                        node.enqueue(depth - 1)

            node.enqueue(11)  # 4,095 jobs, most of them waiting in the backlog at once
            assert jq.metrics().completed == 4095

    def test_a_handler_waiting_for_the_job_it_enqueued_runs_it_first(self) -> None:
        holder: list[final.JobQueue] = []

        def handler(payload: bytes) -> bytes:
            if payload == b"outer":
                holder[0].enqueue(Job("inner", b"inner"))
                return holder[0].result("inner", timeout=1) + b" via outer"
            return payload

        with final.JobQueue(final.Config(eager=True, handler=handler)) as jq:
            holder.append(jq)
            jq.enqueue(Job("outer", b"outer"))
            assert jq.result("outer") == b"inner via outer"

    def test_requeue_runs_the_job(self) -> None:
        failing = [True]

        def handler(payload: bytes) -> None:
            if failing[0]:
                raise ConnectionError("down")

        config = final.Config(eager=True, handler=handler, max_retries=0, shutdown_timeout=5)
        with final.JobQueue(config) as jq:
            jq.enqueue(Job("hook"))
            assert jq.status("hook") is Status.FAILED
            failing[0] = False
            jq.requeue("hook")  # ran here, before requeue returned
            assert jq.status("hook") is Status.COMPLETED
            assert jq.close() == []

    def test_enqueue_runs_the_job_in_the_callers_thread(self) -> None:
        threads: list[str] = []
        jq = final.JobQueue(final.Config(
            eager=True, handler=lambda p: threads.append(threading.current_thread().name)))
        assert [t for t in threading.enumerate() if t.name.startswith("jobqueue-")] == []
        jq.enqueue(Job("a"))
        assert threads == [threading.current_thread().name]
        assert jq.status("a") is Status.COMPLETED
        jq.enqueue_many([Job("b"), Job("c", run_at=time.time() + 3600)])
        assert jq.status("b") is jq.status("c") is Status.COMPLETED  # run_at is not waited for
        jq.close()

    def test_retries_run_at_once_and_the_outcome_is_kept(self) -> None:
        attempts: list[int] = []

        def flaky(payload: bytes) -> bytes:
            attempts.append(final.current_job().attempt)
            if len(attempts) < 3:
                raise ConnectionError("not yet")
            return b"third time"

        with final.JobQueue(final.Config(eager=True, handler=flaky, base_delay=3600)) as jq:
            started = time.monotonic()
            jq.enqueue(Job("x"))
            assert time.monotonic() - started < 60  # the hour of backoff was not waited
            assert attempts == [1, 2, 3]
            assert jq.result("x") == b"third time"
            assert jq.info("x").attempts == 3  # type: ignore[union-attr]

    def test_a_task_and_its_failure(self) -> None:
        with final.JobQueue(final.Config(eager=True, max_retries=1)) as jq:
            @jq.task(kind="div")
            def div(a: int, b: int) -> float:
                return a / b

            assert jq.result(div.enqueue(1, 4)) == 0.25
            with pytest.raises(final.JobFailed, match="ZeroDivisionError"):
                jq.result(div.enqueue(1, 0))
            div.enqueue(1, 2, id="same")
            assert jq.result("same") == 0.5
            div.enqueue(3, 2, id="same")  # finished: a new life, as without eager
            assert jq.result("same") == 1.5

    def test_a_nested_job_leaves_the_outer_handlers_context_alone(self) -> None:
        seen: list[str] = []
        holder: list[final.JobQueue] = []

        def handler(payload: bytes) -> None:
            if payload == b"outer":
                holder[0].enqueue(Job("inner", b"inner"))
            seen.append(final.current_job().job.id)

        with final.JobQueue(final.Config(eager=True, handler=handler)) as jq:
            holder.append(jq)
            jq.enqueue(Job("outer", b"outer"))
            assert jq.status("outer") is Status.COMPLETED
        # The nested job runs once the outer one is done, as a worker would run it next.
        assert seen == ["outer", "inner"]

    def test_a_handler_waiting_for_its_own_job_is_refused(self) -> None:
        errors: list[str] = []
        holder: list[final.JobQueue] = []

        def handler(payload: bytes) -> None:
            for call in (lambda: holder[0].wait("a"), lambda: holder[0].join()):
                try:
                    call()
                except RuntimeError as exc:
                    errors.append(str(exc))

        with final.JobQueue(final.Config(eager=True, handler=handler)) as jq:
            holder.append(jq)
            jq.enqueue(Job("a"))
            assert jq.status("a") is Status.COMPLETED
        assert "called by that job's own handler" in errors[0]
        assert "join() called from the handler of job 'a'" in errors[1]

    def test_close_from_a_handler_closes_once_the_job_is_done(self) -> None:
        holder: list[final.JobQueue] = []
        jq = final.JobQueue(final.Config(eager=True, handler=lambda p: holder[0].close()))
        holder.append(jq)
        jq.enqueue(Job("a"))
        assert jq._core.closed and jq.status("a") is Status.COMPLETED
        with pytest.raises(final.QueueClosed):
            jq.enqueue(Job("b"))
        assert jq.close() == []

    def test_ctrl_c_in_a_handler_reaches_the_caller(self) -> None:
        def interrupted(payload: bytes) -> None:
            raise KeyboardInterrupt

        with final.JobQueue(final.Config(eager=True, handler=interrupted)) as jq:
            with pytest.raises(KeyboardInterrupt):
                jq.enqueue(Job("a"))
            assert jq.status("a") is Status.FAILED  # settled, not left PROCESSING
            assert jq.info("a").attempts == 1  # type: ignore[union-attr]  # not retried

    def test_ctrl_c_in_a_nested_job_fails_it_and_reaches_the_caller(self) -> None:
        holder: list[final.JobQueue] = []

        def handler(payload: bytes) -> None:
            if payload == b"outer":
                holder[0].enqueue(Job("inner", b"inner"))
            else:
                raise KeyboardInterrupt

        with final.JobQueue(final.Config(eager=True, handler=handler)) as jq:
            holder.append(jq)
            with pytest.raises(KeyboardInterrupt):
                jq.enqueue(Job("outer", b"outer"))
            # The outer job was done when the nested one ran.
            assert jq.status("outer") is Status.COMPLETED
            assert jq.status("inner") is Status.FAILED

    def test_ctrl_c_in_a_batch_cancels_the_jobs_not_run(self) -> None:
        def handler(payload: bytes) -> None:
            if payload == b"stop":
                raise KeyboardInterrupt

        with final.JobQueue(final.Config(eager=True, handler=handler,
                                         shutdown_timeout=60)) as jq:
            with pytest.raises(KeyboardInterrupt):
                jq.enqueue_many([Job("a"), Job("b", b"stop"), Job("c"), Job("d")])
            assert [jq.status(i) for i in "abcd"] == [
                Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.CANCELLED]
            started = time.monotonic()
        assert time.monotonic() - started < 30  # close() had nothing left to wait for

    def test_eager_is_for_memory_only(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="eager=True runs each job in the caller's thread"):
            final.Config(eager=True, persist_path=str(tmp_path))
        with pytest.raises(TypeError, match="eager must be a bool"):
            final.Config(eager=1)  # type: ignore[arg-type]


# -- Prometheus ---------------------------------------------------------------------------

class TestPrometheus:
    @pytest.mark.parametrize("store", ["memory"])
    def test_a_scrape_exposes_the_snapshot(self, build: Build, clock: Clock) -> None:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.parser import text_string_to_metric_families

        from jobqueue.final.prometheus import QueueCollector

        def handler(payload: bytes) -> None:
            if payload == b"fail":
                raise ValueError("no")

        jq = build(handler=handler, max_retries=1, base_delay=0, num_workers=1)
        gate = hold_worker(jq)  # runs at once: a latency of 0
        jq.enqueue_many([Job(f"ok-{n}", priority=HIGH) for n in range(3)])
        jq.enqueue(Job("bad", b"fail", priority=LOW))
        jq.enqueue(Job("later"), delay=600)
        advance(jq, clock, 2.5)  # the four queued jobs wait 2.5 s for the worker
        gate.release.set()
        assert jq.wait("bad", timeout=10) is Status.FAILED  # its retry waits 0 s
        for n in range(3):
            jq.wait(f"ok-{n}", timeout=10)
        registry = CollectorRegistry()
        registry.register(QueueCollector(jq, queue="emails"))
        families = {f.name: f for f in text_string_to_metric_families(
            generate_latest(registry).decode())}
        assert families["jobqueue_jobs_finished"].type == "counter"
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in families.values() for s in f.samples}

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted({"queue": "emails", **labels}.items())))]

        assert value("jobqueue_jobs_finished_total", priority="high", outcome="completed") == 4
        assert value("jobqueue_jobs_finished_total", priority="low", outcome="failed") == 1
        assert value("jobqueue_retries_total", priority="low") == 1
        assert families["jobqueue_jobs"].type == "gauge"
        assert value("jobqueue_jobs", priority="medium", status="scheduled") == 1
        assert value("jobqueue_workers") == 1 and value("jobqueue_busy_workers") == 0
        assert value("jobqueue_abandoned_jobs_total") == 0
        assert families["jobqueue_queue_latency_seconds"].type == "histogram"
        # Six starts: the blocker and the retry at once, four after 2.5 s.
        assert value("jobqueue_queue_latency_seconds_count") == 6
        assert value("jobqueue_queue_latency_seconds_sum") == pytest.approx(10.0)
        assert value("jobqueue_queue_latency_seconds_bucket", le="1.0") == 2
        assert value("jobqueue_queue_latency_seconds_bucket", le="5.0") == 6
        assert value("jobqueue_queue_latency_seconds_bucket", le="+Inf") == 6
        with pytest.raises(TypeError, match="jq must be a jobqueue.final.JobQueue"):
            QueueCollector("not a queue")  # type: ignore[arg-type]


# -- what a newcomer meets ----------------------------------------------------------------

class TestNewcomer:
    @pytest.mark.parametrize("store", ["memory"])
    def test_metrics_print_as_a_few_readable_lines(self, build: Build) -> None:
        jq = build(handler=lambda p: None)
        jq.enqueue(Job("a"))
        jq.wait("a", timeout=10)
        text = str(jq.metrics())
        lines = text.splitlines()
        assert len(lines) == 6 and max(map(len, lines)) < 120
        assert lines[0].startswith("queued 0  scheduled 0  processing 0")
        assert "completed 1" in lines[0] and "utilization" in lines[1]
        assert lines[3].startswith("high ") and "Priority" not in text

    def test_priority_by_name_and_a_hint_for_a_str_payload(self) -> None:
        assert Job("a", priority="high").priority is HIGH  # type: ignore[arg-type]
        assert Job("a", priority="LOW").priority is LOW  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"Priority.HIGH, Priority.MEDIUM, Priority.LOW"):
            Job("a", priority="urgent")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"encode it \(payload.encode\(\)\)"):
            Job("a", "text")  # type: ignore[arg-type]
