"""final under hostile conditions: poison jobs, misbehaving handlers, odd values, reentrant
calls, forks, and races on a new store. Each test here failed before the fix it checks."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Make, jobqueue_threads
from test_final_contract import Gate, hold_worker, until

from jobqueue import final
from jobqueue.final import Priority, Status

POISON_CHILD = str(Path(__file__).with_name("poison_child.py"))
HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW
INF, NAN = math.inf, math.nan


def ignore(payload: bytes) -> None:
    pass


def run_in_handler(queue: final.JobQueue, call: Callable[[], object], job_id: str = "inside",
                   priority: Priority = MEDIUM) -> object:
    """Run ``call`` in a handler of ``queue``; return what it returned or raised."""
    result: list[object] = []

    def handler(payload: bytes) -> None:
        try:
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            result.append(exc)

    queue.enqueue_with_handler(final.Job(job_id, priority=priority), handler)
    assert queue.wait(job_id, timeout=10) is Status.COMPLETED
    return result[0]


def run_poison_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, POISON_CHILD, *args], capture_output=True,
                          text=True, timeout=30)


class TestPoisonJobs:
    @pytest.mark.parametrize("how", ["exit", "sigkill"])
    def test_a_job_that_kills_its_process_ends_failed_and_the_others_run(
        self, tmp_path: Path, how: str
    ) -> None:
        path, runlog = str(tmp_path / "jobs"), str(tmp_path / "runs")
        others = 300
        seeded = run_poison_child("seed", path, runlog, how, str(others))
        assert seeded.returncode != 0, seeded.stderr  # the poison job killed it
        # max_retries=2: three attempts kill three processes; the fourth start counts the
        # third death, fails the job, and runs what is left.
        restarts = []
        for _ in range(6):
            restarted = run_poison_child("restart", path, runlog, how)
            restarts.append(restarted.returncode)
            if restarted.returncode == 0:
                break
        assert restarts[-1] == 0, restarts
        assert len(restarts) == 3, restarts  # deaths 2 and 3, then the end
        status, attempts, error = restarted.stdout.split(" ", 2)
        assert (status, attempts) == ("failed", "3")
        assert "the process died while running it" in error
        ran = Path(runlog).read_text().split()
        assert set(ran) == {f"job-{i}" for i in range(others)}

    def test_a_job_that_finished_as_the_process_died_is_not_charged_with_the_death(
        self, tmp_path: Path
    ) -> None:
        # "finisher" returns, with its start already in LMDB; "poison" kills the process as
        # soon as finisher is COMPLETED, before the batch with that outcome is written.
        child = (
            "import os, sys\n"
            "from jobqueue import final\n"
            "queue = None\n"
            "def finisher(payload):\n"
            "    if sys.argv[2] == 'seed':\n"
            "        queue._core.store.flush()  # its start is in LMDB now\n"
            "def poison(payload):\n"
            "    queue.wait('finisher', timeout=10)\n"
            "    os._exit(3)\n"
            "config = final.Config(num_workers=2, persist_path=sys.argv[1], max_retries=0,\n"
            "                      handlers={'finisher': finisher, 'poison': poison})\n"
            "queue = final.JobQueue(config)\n"
            "if sys.argv[2] == 'seed':\n"
            "    queue.enqueue(final.Job('finisher', kind='finisher'))\n"
            "    queue.enqueue(final.Job('poison', kind='poison'))\n"
            "queue.join(timeout=10)\n"
            "print(queue.status('finisher').value, queue.status('poison').value)\n"
            "queue.close()\n"
        )
        path = str(tmp_path / "jobs")
        seeded = subprocess.run([sys.executable, "-c", child, path, "seed"],
                                capture_output=True, text=True, timeout=30)
        assert seeded.returncode == 3, seeded.stderr
        restarted = subprocess.run([sys.executable, "-c", child, path, "restart"],
                                   capture_output=True, text=True, timeout=30)
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.split() == ["completed", "failed"]


class TestMisbehavingHandlers:
    class StrRaises(Exception):
        def __str__(self) -> str:
            raise KeyboardInterrupt  # not even an Exception

    class StrNotStr(Exception):
        def __str__(self) -> str:
            return 42  # type: ignore[return-value]

    @pytest.mark.parametrize("error", [StrRaises, StrNotStr])
    def test_an_exception_that_cannot_be_told_fails_its_job_and_the_worker_lives(
        self, make: Make, error: type[Exception]
    ) -> None:
        def handler(payload: bytes) -> None:
            if payload == b"bad":
                raise error()

        queue = make(num_workers=1, handler=handler, max_retries=0)
        queue.enqueue(final.Job("bad", b"bad"))
        assert queue.wait("bad", timeout=10) is Status.FAILED
        info = queue.info("bad")
        assert info is not None and info.last_error == error.__name__
        queue.enqueue(final.Job("next", b"fine"))  # the one worker still runs jobs
        assert queue.wait("next", timeout=10) is Status.COMPLETED
        assert queue.close() == []

    def test_an_exception_class_whose_name_raises(self, make: Make) -> None:
        class NamelessMeta(type):
            @property
            def __name__(cls) -> str:  # type: ignore[override]
                raise RuntimeError("no name")

        class Nameless(Exception, metaclass=NamelessMeta):
            pass

        def handler(payload: bytes) -> None:
            if payload == b"bad":
                raise Nameless("what")

        queue = make(num_workers=1, handler=handler, max_retries=0)
        queue.enqueue(final.Job("bad", b"bad"))
        assert queue.wait("bad", timeout=10) is Status.FAILED
        queue.enqueue(final.Job("next", b"fine"))
        assert queue.wait("next", timeout=10) is Status.COMPLETED

    def test_a_handler_object_is_called_however_it_answers_bool(self, make: Make) -> None:
        ran: list[str] = []

        class Empty:  # falsy: len() is 0
            def __len__(self) -> int:
                return 0

            def __call__(self, payload: bytes) -> None:
                ran.append("empty")

        class Moody:
            def __bool__(self) -> bool:
                raise RuntimeError("no opinion")

            def __call__(self, payload: bytes) -> None:
                ran.append("moody")

        queue = make(num_workers=1, handler=lambda payload: ran.append("default"))
        queue.enqueue_with_handler(final.Job("a"), Empty())
        queue.enqueue_with_handler(final.Job("b"), Moody())
        assert queue.wait("a", timeout=10) is Status.COMPLETED
        assert queue.wait("b", timeout=10) is Status.COMPLETED
        assert ran == ["empty", "moody"]

    def test_a_huge_error_message_is_cut_to_a_bound(self, make: Make) -> None:
        def handler(payload: bytes) -> None:
            raise ValueError("x" * 1_000_000)

        queue = make(num_workers=1, handler=handler, max_retries=0)
        queue.enqueue(final.Job("big"))
        assert queue.wait("big", timeout=10) is Status.FAILED
        info = queue.info("big")
        assert info is not None and info.last_error is not None
        assert info.last_error.startswith("ValueError: xxx") and len(info.last_error) <= 2000


async def async_handler(payload: bytes) -> None:
    raise AssertionError("never runs")


async def async_generator_handler(payload: bytes):  # type: ignore[no-untyped-def]
    yield


def generator_handler(payload: bytes):  # type: ignore[no-untyped-def]
    yield


class AsyncCallable:
    async def __call__(self, payload: bytes) -> None:
        raise AssertionError("never runs")


UNRUNNABLE = [
    pytest.param(async_handler, id="async-def"),
    pytest.param(async_generator_handler, id="async-generator"),
    pytest.param(generator_handler, id="generator"),
    pytest.param(AsyncCallable(), id="async-__call__"),
    pytest.param(functools.partial(async_handler), id="partial-of-async"),
]


class TestAsyncAndGeneratorHandlers:
    @pytest.mark.parametrize("handler", UNRUNNABLE)
    def test_refused_wherever_a_handler_is_given(self, make: Make, handler: object) -> None:
        with pytest.raises(TypeError, match="must be a plain function"):
            final.Config(handler=handler)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"handlers\['k'\] must be a plain function"):
            final.Config(handlers={"k": handler})  # type: ignore[dict-item]
        queue = make(handler=ignore)
        with pytest.raises(TypeError, match="must be a plain function"):
            queue.register("k", handler)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be a plain function"):
            queue.enqueue_with_handler(final.Job("j"), handler)  # type: ignore[arg-type]
        assert queue.status("j") is None

    def test_a_handler_that_returns_a_coroutine_fails_instead_of_completing(
        self, make: Make
    ) -> None:
        queue = make(num_workers=1, handler=lambda payload: async_handler(payload),
                     max_retries=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "coroutine was never awaited" would be a failure
            queue.enqueue(final.Job("sneaky"))
            assert queue.wait("sneaky", timeout=10) is Status.FAILED
        info = queue.info("sneaky")
        assert info is not None and "returned coroutine" in (info.last_error or "")


class TestOddNumbers:
    @pytest.mark.parametrize("field", ["base_delay", "max_delay"])
    @pytest.mark.parametrize("value", [INF, 1e300])
    def test_retry_delays_must_be_finite_and_within_what_a_thread_can_wait(
        self, field: str, value: float
    ) -> None:
        with pytest.raises(ValueError, match=field):
            final.Config(**{field: value})  # type: ignore[arg-type]

    def test_a_retry_centuries_away_leaves_the_retry_thread_serving_others(
        self, make: Make
    ) -> None:
        failed_once: set[str] = set()

        def handler(payload: bytes) -> None:
            if payload not in failed_once:
                failed_once.add(payload)  # type: ignore[arg-type]
                raise RuntimeError("first attempt fails")

        far = make(num_workers=1, handler=handler, base_delay=1e9, max_delay=1e9)
        far.enqueue(final.Job("far", b"far"))
        assert until(lambda: far.status("far") is Status.RETRYING)
        info = far.info("far")
        assert info is not None and info.retry_at is not None and info.retry_at > 1e9
        near = make(num_workers=1, handler=handler, base_delay=0.01, max_delay=0.01)
        near.enqueue(final.Job("near", b"near"))
        assert near.wait("near", timeout=10) is Status.COMPLETED
        assert "jobqueue-final-retry" in [t.name for t in jobqueue_threads()]

    @pytest.mark.parametrize("call", ["enqueue", "wait", "join", "close"])
    @pytest.mark.parametrize("value", [NAN, -1.0, "5"])
    def test_a_timeout_must_be_a_non_negative_number(
        self, make: Make, call: str, value: object
    ) -> None:
        queue = make(handler=ignore)
        queue.enqueue(final.Job("known"))
        calls: dict[str, Callable[[], object]] = {
            "enqueue": lambda: queue.enqueue(final.Job("new"), timeout=value),  # type: ignore[arg-type]
            "wait": lambda: queue.wait("known", timeout=value),  # type: ignore[arg-type]
            "join": lambda: queue.join(timeout=value),  # type: ignore[arg-type]
            "close": lambda: queue.close(timeout=value),  # type: ignore[arg-type]
        }
        error = TypeError if isinstance(value, str) else ValueError
        with pytest.raises(error, match="timeout"):
            calls[call]()
        assert queue.close() == []  # refused, the queue was left as it was

    def test_infinite_timeouts_mean_no_limit(self, make: Make) -> None:
        queue = make(num_workers=1, handler=ignore, queue_size=1, shutdown_timeout=INF)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("fills-the-queue"))
        entered = threading.Event()
        outcome: list[object] = []

        def produce() -> None:
            entered.set()
            try:
                queue.enqueue(final.Job("waits-for-room"), timeout=INF)
                outcome.append("enqueued")
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        assert entered.wait(5)
        assert until(lambda: queue._core.room[MEDIUM].waiting == 1 or bool(outcome))
        gate.release.set()
        producer.join(10)
        assert outcome == ["enqueued"]
        assert queue.wait("waits-for-room", timeout=INF) is Status.COMPLETED
        assert queue.join(timeout=INF)
        assert queue.close(timeout=INF) == []

    def test_a_handler_may_wait_forever_for_cancellation(self, make: Make) -> None:
        results: list[object] = []

        def handler(payload: bytes) -> None:
            context = final.current_job()
            results.append(context.wait(INF))  # ends at job_timeout
            try:
                context.wait(NAN)
            except ValueError as exc:
                results.append(exc)

        queue = make(num_workers=1, handler=handler, job_timeout=0.05, max_retries=0)
        queue.enqueue(final.Job("sleeper"))
        assert queue.wait("sleeper", timeout=10) is Status.FAILED
        assert results[0] is True and isinstance(results[1], ValueError)

    def test_an_infinite_job_timeout_means_none(self, make: Make) -> None:
        queue = make(num_workers=1, handler=ignore, job_timeout=INF)
        queue.enqueue(final.Job("j"))
        assert queue.wait("j", timeout=10) is Status.COMPLETED


class TestCallsFromInsideAHandler:
    def test_join_raises(self, make: Make) -> None:
        queue = make(num_workers=2, handler=ignore)
        error = run_in_handler(queue, queue.join)
        assert isinstance(error, RuntimeError) and "join()" in str(error)

    def test_waiting_for_its_own_job_raises_and_for_another_works(self, make: Make) -> None:
        queue = make(num_workers=2, handler=ignore)
        error = run_in_handler(queue, lambda: queue.wait("inside", timeout=INF))
        assert isinstance(error, RuntimeError) and "own handler" in str(error)
        queue.enqueue(final.Job("other"))
        assert run_in_handler(queue, lambda: queue.wait("other"), "second") is Status.COMPLETED

    @pytest.mark.bounded
    def test_a_blocking_enqueue_no_worker_could_make_room_for_raises(self, make: Make) -> None:
        queue = make(num_workers=1, handler=ignore, queue_size=1)
        gate = Gate()

        def fill_then_enqueue() -> object:
            queue.enqueue_with_handler(final.Job("fills-the-queue"), gate)
            return queue.enqueue(final.Job("no-room"))  # only this worker could make room

        error = run_in_handler(queue, fill_then_enqueue, priority=HIGH)
        assert isinstance(error, RuntimeError) and "all 1 workers" in str(error)
        gate.release.set()
        assert queue.wait("fills-the-queue", timeout=10) is Status.COMPLETED
        assert queue.status("no-room") is None

    @pytest.mark.bounded
    def test_a_blocking_enqueue_waits_while_another_worker_can_make_room(
        self, make: Make
    ) -> None:
        queue = make(num_workers=2, handler=ignore, queue_size=1)
        gate = hold_worker(queue)  # the other worker, busy
        inside = threading.Event()

        def enqueue_when_room() -> object:
            queue.enqueue(final.Job("fills-the-queue"))  # no worker is free to take it
            inside.set()
            return queue.enqueue(final.Job("waited"))

        result: list[object] = []
        runner = threading.Thread(
            target=lambda: result.append(run_in_handler(queue, enqueue_when_room,
                                                        priority=HIGH)),
            daemon=True,
        )
        runner.start()
        assert inside.wait(5)
        assert until(lambda: queue._core.room[MEDIUM].waiting == 1)
        gate.release.set()  # the other worker takes the queued job: room for the handler's
        runner.join(10)
        assert result == [None]
        assert queue.wait("waited", timeout=10) is Status.COMPLETED

    def test_a_handler_enqueueing_while_stored_jobs_are_claimed_never_hangs(
        self, tmp_path: Path
    ) -> None:
        from test_final_lmdb import queued, stored_backlog

        path = str(tmp_path / "jobs")
        stored_backlog(path, [queued(f"stored-{i}", i + 1) for i in range(13)])
        outcome: list[object] = []

        def handler(payload: bytes) -> None:
            if payload == b"stored-0":
                try:
                    outcome.append(queue.enqueue(final.Job("from-handler")))
                except RuntimeError as exc:  # the claimer filled the room first
                    outcome.append(type(exc))

        queue = final.JobQueue(final.Config(handler=handler, persist_path=path, num_workers=1,
                                            queue_size=5))
        try:
            assert queue.join(timeout=30)
            assert outcome in ([None], [RuntimeError])
        finally:
            assert queue.close() == []

    @pytest.mark.parametrize("workers", [1, 2])
    def test_close_from_a_handler_does_not_wait_for_its_own_job(
        self, make: Make, store: str, tmp_path: Path, workers: int
    ) -> None:
        queue = make(num_workers=workers, handler=ignore, shutdown_timeout=INF)
        returned = threading.Event()
        closed_with: list[object] = []

        def closer(payload: bytes) -> None:
            queue.enqueue(final.Job("queued-before-close"))
            closed_with.append(queue.close())
            returned.set()

        queue.enqueue_with_handler(final.Job("closer"), closer)
        assert returned.wait(10), "close() from a handler waited for its own job"
        assert closed_with == [[]]
        assert until(lambda: not jobqueue_threads()), [t.name for t in jobqueue_threads()]
        assert queue.close() == []
        if store == "lmdb":  # the store was given up, with the closer's outcome in it
            config = final.Config(handler=ignore, persist_path=str(tmp_path / "jobs-0"))
            with final.JobQueue(config) as again:
                assert again.status("closer") is Status.COMPLETED
                assert again.status("queued-before-close") is Status.COMPLETED
        elif store == "postgres":  # the closer's outcome is written; the other job stays
            config = dataclasses.replace(queue._config, handler=ignore)  # for any process
            with final.JobQueue(config) as again:
                assert again.status("closer") is Status.COMPLETED
                assert again.wait("queued-before-close", 10) is Status.COMPLETED
        else:
            assert queue.status("closer") is Status.COMPLETED
            assert queue.status("queued-before-close") is Status.COMPLETED


class CallingLogHandler(logging.Handler):
    """A log handler that calls the queue back when a job fails for good, as a hostile
    operator's alerting hook might: it runs on the worker thread that logs."""

    def __init__(self, queue: final.JobQueue | None = None) -> None:
        super().__init__(logging.ERROR)
        self.ready = threading.Event()  # set once the queue is known
        if queue is not None:
            self.call_back(queue)
        self.outcomes: list[object] = []

    def call_back(self, queue: final.JobQueue) -> None:
        self.queue = queue
        self.ready.set()

    def emit(self, record: logging.LogRecord) -> None:
        assert self.ready.wait(10)
        for call in (self.queue.join, lambda: self.queue.wait("doomed"), self.queue.close):
            try:
                self.outcomes.append(call())
            except RuntimeError as exc:
                self.outcomes.append(type(exc))


class TestCallsFromALogHandler:
    def test_join_wait_and_close_from_a_log_handler_on_a_worker(self, make: Make) -> None:
        def fail(payload: bytes) -> None:
            raise ValueError("doomed")

        queue = make(num_workers=1, handler=fail, max_retries=0, shutdown_timeout=INF)
        calling = CallingLogHandler(queue)
        logger = logging.getLogger("jobqueue")
        logger.addHandler(calling)
        try:
            queue.enqueue(final.Job("doomed"))
            assert queue.wait("doomed", timeout=10) is Status.FAILED
        finally:
            logger.removeHandler(calling)
        assert calling.outcomes == [RuntimeError, RuntimeError, []]
        assert until(lambda: not jobqueue_threads())
        assert queue.close() == []


class RaisingLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("the log handler is broken")


class TestHostileLogHandlers:
    def test_a_log_handler_that_raises_does_not_kill_the_worker(self, make: Make) -> None:
        def fail(payload: bytes) -> None:
            if payload == b"fail":
                raise ValueError("fails")

        queue = make(num_workers=1, handler=fail, max_retries=0)
        raising = RaisingLogHandler()
        logger = logging.getLogger("jobqueue")
        logger.addHandler(raising)
        try:
            queue.enqueue(final.Job("fails", b"fail"))
            assert queue.wait("fails", timeout=10) is Status.FAILED
            queue.enqueue(final.Job("next"))
            assert queue.wait("next", timeout=10) is Status.COMPLETED
            assert queue.close() == []
        finally:
            logger.removeHandler(raising)

    def test_the_claimer_is_refused_too_when_a_log_handler_calls_back(
        self, tmp_path: Path
    ) -> None:
        from test_final_lmdb import stored_backlog

        from jobqueue.final.stores.base import JobRecord

        path = str(tmp_path / "jobs")
        died_in = JobRecord("doomed", b"", MEDIUM, "", 0, 0.0, Status.PROCESSING, 1, None,
                            1.0, None, None, 1)
        stored_backlog(path, [died_in])  # as a process that died running it leaves it
        calling = CallingLogHandler()  # the claimer logs as soon as the queue starts
        logger = logging.getLogger("jobqueue")
        logger.addHandler(calling)
        try:
            queue = final.JobQueue(final.Config(handler=ignore, persist_path=path,
                                                shutdown_timeout=INF))
            calling.call_back(queue)
            assert until(lambda: len(calling.outcomes) == 3)
        finally:
            logger.removeHandler(calling)
        assert calling.outcomes == [RuntimeError, RuntimeError, []]
        assert until(lambda: not jobqueue_threads())
        assert queue.close() == []
        config = final.Config(handler=ignore, persist_path=path)
        with final.JobQueue(config) as again:  # settled then, or by this claimer now
            assert again.wait("doomed", timeout=10) is Status.FAILED

    def test_a_log_handler_calling_close_as_the_store_closes(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from jobqueue.final.stores.lmdb import writer as _lmdb_writer

        queue = final.JobQueue(final.Config(handler=ignore, persist_path=tmp_path / "jobs"))
        queue.enqueue(final.Job("j"))
        assert queue.wait("j", timeout=10) is Status.COMPLETED
        # The store's close() logs an error when not everything reached LMDB.
        monkeypatch.setattr(_lmdb_writer.Writer, "everything_written_locked", lambda self: False)
        closes: list[object] = []

        class Closing(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                closes.append(queue.close())

        closing = Closing(logging.ERROR)
        logger = logging.getLogger("jobqueue")
        logger.addHandler(closing)
        try:
            assert queue.close() == []  # before: RecursionError
        finally:
            logger.removeHandler(closing)
        assert closes == [[]]


class TestFork:
    def test_a_handler_that_forks_leaves_the_queue_to_the_parent(
        self, make: Make, tmp_path: Path
    ) -> None:
        runlog = tmp_path / "runs"
        runlog.touch()
        children: list[int] = []

        def handler(payload: bytes) -> None:
            if payload == b"fork":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
                if pid == 0:
                    return  # the child returns into the worker, which must stop there
                children.append(pid)
                return
            with open(runlog, "a") as log:
                log.write(f"{os.getpid()} {payload.decode()}\n")

        queue = make(num_workers=1, handler=handler)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("forker", b"fork"))
        for i in range(5):
            queue.enqueue(final.Job(f"job-{i}", f"job-{i}".encode()))
        gate.release.set()
        assert queue.join(timeout=10)
        assert len(children) == 1
        reaped: list[int] = []
        reaper = threading.Thread(target=lambda: reaped.append(os.waitpid(children[0], 0)[1]),
                                  daemon=True)
        reaper.start()
        reaper.join(10)
        assert reaped and os.waitstatus_to_exitcode(reaped[0]) == 0, "the child went on"
        runs = runlog.read_text().split("\n")[:-1]
        assert sorted(line.split()[1] for line in runs) == [f"job-{i}" for i in range(5)]
        assert {line.split()[0] for line in runs} == {str(os.getpid())}
        assert queue.close() == []


    def test_a_forked_child_refuses_every_call_and_leaves_the_parent_whole(
        self, make: Make, store: str, tmp_path: Path
    ) -> None:
        queue = make(num_workers=1, handler=ignore)
        gate = hold_worker(queue)
        queue.enqueue(final.Job("acknowledged"))
        report_r, report_w = os.pipe()
        go_r, go_w = os.pipe()
        calls: dict[str, Callable[[], object]] = {
            "enqueue": lambda: queue.enqueue(final.Job("from-child")),
            "enqueue_many": lambda: queue.enqueue_many([final.Job("from-child-2")]),
            "enqueue_with_handler": lambda: queue.enqueue_with_handler(final.Job("c"), ignore),
            "register": lambda: queue.register("k", ignore),
            "requeue": lambda: queue.requeue("acknowledged"),
            "status": lambda: queue.status("acknowledged"),
            "info": lambda: queue.info("acknowledged"),
            "wait": lambda: queue.wait("acknowledged"),
            "join": lambda: queue.join(),
            "dead_letters": lambda: queue.dead_letters(),
            "metrics": lambda: queue.metrics(),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
            pid = os.fork()
        if pid == 0:  # the child: report, wait for the parent, and leave without cleanup
            try:
                refused = []
                for name, call in calls.items():
                    try:
                        call()
                    except RuntimeError as exc:
                        if "fork" in str(exc):
                            refused.append(name)
                with queue:  # leaving the block closes: it must not hang or touch a file
                    pass
                refused.append(f"close={queue.close()!r}")
                os.write(report_w, " ".join(refused).encode())
            finally:
                os.close(report_w)
                os.read(go_r, 1)
                os._exit(0)
        os.close(report_w)
        try:
            report = os.read(report_r, 65536).decode().split()
            assert report == [*calls, "close=[]"]
            # The parent goes on, its log intact, and can close and open its store again
            # while the child lives (the child's copy of the lock does not hold it).
            gate.release.set()
            queue.enqueue(final.Job("after-fork"))
            assert queue.wait("after-fork", timeout=10) is Status.COMPLETED
            assert queue.wait("acknowledged", timeout=10) is Status.COMPLETED
            assert queue.close() == []
            if store == "lmdb":
                config = final.Config(handler=ignore, persist_path=str(tmp_path / "jobs-0"))
                with final.JobQueue(config) as again:
                    assert again.status("acknowledged") is Status.COMPLETED
                    assert again.status("from-child") is None
        finally:
            os.write(go_w, b"x")
            os.close(go_w)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


SURROGATE = "bad\udcffid"


class TestOneSetOfRules:
    """Validated once, in Job and Config, the same for every store."""

    @pytest.mark.parametrize(
        ("fields", "error", "message"),
        [
            ({"id": SURROGATE}, ValueError, "id must be valid Unicode"),
            ({"id": "x", "kind": SURROGATE}, ValueError, "kind must be valid Unicode"),
            ({"id": "x", "kind": "k" * 65_536}, ValueError, "kind must be at most 256"),
            ({"id": "é" * 129}, ValueError, "id must be at most 256 UTF-8 bytes"),
            ({"id": "x", "max_retries": 2**31}, ValueError, "max_retries must be <="),
            ({"id": "x", "created": NAN}, ValueError, "created must be a finite"),
            ({"id": "x", "created": INF}, ValueError, "created must be a finite"),
            ({"id": "x", "created": -INF}, ValueError, "created must be a finite"),
        ],
    )
    def test_job(self, fields: dict[str, object], error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=message):
            final.Job(**fields)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("fields", "error", "message"),
        [
            ({"persist_path": "/tmp/\udcffjobs"}, ValueError, "persist_path must be encodable"),
            ({"persist_path": "/tmp/a\0b"}, ValueError, "persist_path must not contain a NUL"),
            ({"persist_path": ""}, ValueError, "persist_path must not be empty"),
            ({"persist_path": b"/tmp/jobs"}, TypeError, "persist_path must be a path"),
            ({"max_retries": 2**31}, ValueError, "max_retries must be <="),
            ({"handlers": {SURROGATE: ignore}}, ValueError, "must be valid Unicode"),
            ({"shutdown_timeout": NAN}, ValueError, "shutdown_timeout"),
            ({"job_timeout": NAN}, ValueError, "job_timeout"),
        ],
    )
    def test_config(self, fields: dict[str, object], error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=message):
            final.Config(**fields)  # type: ignore[arg-type]

    def test_the_largest_values_a_job_may_have_are_stored(self, make: Make) -> None:
        queue = make(num_workers=1, handler=ignore)
        job = final.Job("é" * 128, kind="k" * 256, max_retries=2**31 - 1, created=1e300)
        queue.enqueue(job)
        assert queue.wait(job.id, timeout=10) is Status.COMPLETED
        info = queue.info(job.id)
        assert info is not None and (info.kind, info.created_at) == (job.kind, 1e300)

    def test_every_entry_point_names_what_is_wrong(self, make: Make) -> None:
        queue = make(handler=ignore)
        job = final.Job("fine")
        bad: list[tuple[Callable[[], object], type[Exception], str]] = [
            (lambda: queue.enqueue("job"), TypeError, "job must be a jobqueue.final.Job"),  # type: ignore[arg-type]
            (lambda: queue.enqueue(job, timeout=NAN), ValueError, "timeout"),
            (lambda: queue.enqueue_many([job, None]), TypeError, "job must be"),  # type: ignore[list-item]
            (lambda: queue.enqueue_many(42), TypeError, "not iterable"),  # type: ignore[arg-type]
            (lambda: queue.enqueue_many([job, job]), final.DuplicateJob, "appears twice"),
            (lambda: queue.enqueue_with_handler(job, 42), TypeError, "handler must be"),  # type: ignore[arg-type]
            (lambda: queue.register(42, ignore), TypeError, "kind must be a str"),  # type: ignore[arg-type]
            (lambda: queue.register("k", None), TypeError, "handler must be"),  # type: ignore[arg-type]
            (lambda: queue.requeue(42), TypeError, "job_id must be a str"),  # type: ignore[arg-type]
            (lambda: queue.wait("x", timeout=-INF), ValueError, "timeout"),
            (lambda: queue.join(timeout=NAN), ValueError, "timeout"),
            (lambda: queue.close(timeout=NAN), ValueError, "timeout"),
            (lambda: final.JobQueue("config"), TypeError, "config must be"),  # type: ignore[arg-type]
        ]
        for call, error, message in bad:
            with pytest.raises(error, match=message):
                call()
        assert queue.status("fine") is None  # nothing was let in
        assert queue.close() == []

    @pytest.mark.parametrize("job_id", [None, 42, b"bytes", ["list"]])
    def test_an_id_that_is_not_a_str_is_a_type_error_everywhere(
        self, make: Make, job_id: object
    ) -> None:
        queue = make(handler=ignore)
        for call in (queue.status, queue.info, queue.wait, queue.requeue):
            with pytest.raises(TypeError, match="job_id must be a str"):
                call(job_id)  # type: ignore[operator]

    @pytest.mark.parametrize("job_id", ["", SURROGATE, "x" * 1000, "é" * 200])
    def test_an_id_no_job_can_have_is_unknown_everywhere(self, make: Make, job_id: str) -> None:
        queue = make(handler=ignore)
        assert queue.status(job_id) is None
        assert queue.info(job_id) is None
        with pytest.raises(KeyError):
            queue.wait(job_id)
        with pytest.raises(KeyError):
            queue.requeue(job_id)


class TestNewStore:
    def test_a_store_left_half_created_is_completed_at_the_next_open(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "jobs"
        path.mkdir()
        (path / "owner.lock").write_text("12345\n")  # killed between the lock and LMDB
        config = final.Config(handler=ignore, persist_path=path)
        with final.JobQueue(config) as queue:
            queue.enqueue(final.Job("works"))
            assert queue.wait("works", timeout=10) is Status.COMPLETED

    def test_a_store_another_queue_is_creating_is_locked_not_foreign(
        self, tmp_path: Path
    ) -> None:
        from jobqueue.final.stores.lmdb.directory import give_up_ownership, take_ownership

        path = tmp_path / "jobs"
        path.mkdir()
        creating = take_ownership(str(path))  # holds the lock; no LMDB files yet
        try:
            with pytest.raises(final.StoreLocked):
                final.JobQueue(final.Config(handler=ignore, persist_path=path))
        finally:
            give_up_ownership(creating)

    def test_two_processes_creating_one_store_at_once(self, tmp_path: Path) -> None:
        opener = (
            "import sys, time\n"
            "from jobqueue import final\n"
            "start = float(sys.argv[2])\n"
            "while time.time() < start: pass\n"
            "try:\n"
            "    queue = final.JobQueue(final.Config(handler=print, persist_path=sys.argv[1]))\n"
            "except final.StoreLocked:\n"
            "    print('locked')\n"
            "else:\n"
            "    print('opened'); time.sleep(0.2); queue.close()\n"
        )
        for round_ in range(8):
            path = str(tmp_path / f"jobs-{round_}")
            start = str(time.time() + 0.5)
            children = [
                subprocess.Popen([sys.executable, "-c", opener, path, start],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)
            ]
            outcomes = []
            for child in children:
                out, err = child.communicate(timeout=30)
                assert child.returncode == 0, err
                outcomes.append(out.strip())
            assert "opened" in outcomes and set(outcomes) <= {"opened", "locked"}, outcomes


class TestLogSize:
    def test_a_new_store_needs_little_room(self, tmp_path: Path) -> None:
        path = tmp_path / "jobs"
        with final.JobQueue(final.Config(handler=ignore, persist_path=path)):
            logs = [p for p in path.iterdir() if p.name.startswith("wal-")]
            assert logs and all(p.stat().st_size <= 64 << 10 for p in logs)

    def test_a_full_disk_at_open_says_how_much_room_is_needed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import errno

        def no_space(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "posix_fallocate", no_space)
        with pytest.raises(final.StoreError, match=r"the disk is full.*needs 65536 bytes"):
            final.JobQueue(final.Config(handler=ignore, persist_path=tmp_path / "jobs"))
