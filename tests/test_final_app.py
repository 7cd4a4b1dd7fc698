"""An App of tasks declared at import time, typed task calls, and per-task retry policies."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobqueue import final
from jobqueue.final import Priority, Status
from jobqueue.final._claimer import _split
from tests.conftest import jobqueue_threads
from tests.test_final_contract import Gate, until

pytestmark = pytest.mark.timeout(60)


def adder_app(config: final.Config | None = None) -> final.App:
    app = final.App(config)

    @app.task(kind="add")
    def add(a: int, b: int) -> int:
        return a + b

    return app


class TestApp:
    def test_declaring_tasks_opens_nothing(self) -> None:
        before = jobqueue_threads()
        app = adder_app(final.Config())
        assert set(app.tasks) == {"add"}
        assert jobqueue_threads() == before
        with pytest.raises(RuntimeError, match="no JobQueue is bound"):
            app.tasks["add"].enqueue(1, 2)

    def test_a_queue_bound_to_the_app_runs_its_tasks(self) -> None:
        app = adder_app(final.Config(num_workers=2))
        add = app.tasks["add"]
        with app.open() as jq:
            assert app.queue is jq
            handle = add.enqueue(2, 3)
            assert handle.result(10) == 5
            assert jq.result(handle, 10) == 5  # a handle is an id
        with pytest.raises(RuntimeError, match="no JobQueue is bound"):
            add.enqueue(1, 1)  # closed, and unbound

    def test_open_changes_the_config(self) -> None:
        app = adder_app(final.Config(num_workers=2))
        with app.open(num_workers=1, queue_size=7) as jq:
            assert (jq._config.num_workers, jq._config.queue_size) == (1, 7)
        with app.open(final.Config(num_workers=3)) as jq:
            assert jq._config.num_workers == 3

    def test_an_app_without_a_config_says_so(self) -> None:
        app = adder_app()
        with pytest.raises(RuntimeError, match="made without a config"):
            app.open()
        with app.open(final.Config(num_workers=1)) as jq:
            assert jq.result(app.tasks["add"].enqueue(1, 1), 10) == 2

    def test_one_open_queue_binds_an_app(self) -> None:
        app = adder_app(final.Config(num_workers=1))
        with app.open():
            with pytest.raises(ValueError, match="bound to this App already"):
                app.open()
        with app.open():  # once closed, another may bind it
            pass

    def test_a_task_declared_after_the_queue_opened_runs_too(self) -> None:
        app = adder_app(final.Config(num_workers=1))
        with app.open() as jq:
            @app.task(kind="double")
            def double(x: int) -> int:
                return 2 * x

            assert double.enqueue(21).result(10) == 42
            assert jq.result(double.enqueue(1), 10) == 2

    def test_a_kind_taken_twice_is_refused(self) -> None:
        app = adder_app(final.Config(num_workers=1))
        with pytest.raises(ValueError, match="is the task"):
            @app.task(kind="add")
            def other(a: int, b: int) -> int:
                return a - b
        config = final.Config(num_workers=1, handlers={"add": lambda p: None})
        with pytest.raises(ValueError, match="has a handler already"):
            app.open(config)
        assert jobqueue_threads() == []
        with app.open():  # the failed open did not keep the app
            pass

    def test_wrong_types_are_refused(self) -> None:
        with pytest.raises(TypeError, match="config must be"):
            final.App({"num_workers": 1})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="app must be"):
            final.JobQueue(final.Config(), app=object())  # type: ignore[arg-type]


class TestTaskCalls:
    @pytest.fixture
    def jq(self) -> Any:
        with final.JobQueue(final.Config(num_workers=1)) as queue:
            yield queue

    def test_options_set_one_jobs_id_priority_and_time(self, jq: final.JobQueue) -> None:
        @jq.task(kind="echo")
        def echo(text: str) -> str:
            return text

        handle = echo.options(id="e-1", priority="high").enqueue("hi")
        assert handle == "e-1" and handle.id == "e-1" and type(handle.id) is str
        assert handle.result(10) == "hi"
        assert jq.info("e-1").priority is Priority.HIGH  # type: ignore[union-attr]
        later = echo.options(delay=3600).enqueue("later")
        assert later.status() is Status.SCHEDULED
        assert later.cancel() and later.wait(10) is Status.CANCELLED
        job = echo.options(id="e-2", run_at=time.time() + 3600).job("x")
        assert (job.id, job.kind, job.run_at is not None) == ("e-2", "echo", True)
        assert echo.options(delay=60).job("x").run_at > time.time() + 50  # type: ignore[operator]

    def test_the_old_keywords_still_work(self, jq: final.JobQueue) -> None:
        @jq.task(kind="echo")
        def echo(text: str) -> str:
            return text

        assert echo.enqueue(text="a", id="old-1") == "old-1"  # type: ignore[call-arg]
        assert jq.result("old-1", 10) == "a"
        assert echo.job("b", id="old-2").id == "old-2"  # type: ignore[call-arg]

    @pytest.mark.parametrize(("options", "error"), [
        ({"delay": float("nan")}, ValueError),
        ({"delay": -1}, ValueError),
        ({"delay": "5"}, TypeError),
        ({"run_at": float("inf")}, ValueError),
        ({"delay": 1, "run_at": time.time()}, ValueError),
        ({"priority": "urgent"}, TypeError),
    ])
    def test_bad_options_are_refused(self, jq: final.JobQueue, options: dict[str, Any],
                                     error: type[Exception]) -> None:
        @jq.task(kind="echo")
        def echo(text: str) -> str:
            return text

        with pytest.raises(error):
            echo.options(**options)

    def test_a_handle_pickles_and_copies_as_its_id(self, jq: final.JobQueue) -> None:
        @jq.task(kind="echo")
        def echo(text: str) -> str:
            return text

        handle = echo.enqueue("x")
        for other in (pickle.loads(pickle.dumps(handle)), copy.copy(handle)):
            assert other == handle and type(other) is str
        job = final.Job(handle)  # kept as a plain str, whatever a store does with it
        assert type(job.id) is str


class TestRetryPolicy:
    def run(self, config: final.Config, raising: BaseException, **task: Any) -> final.JobInfo:
        with final.JobQueue(config) as jq:
            @jq.task(kind="t", **task)
            def fails() -> None:
                raise raising

            job_id = fails.enqueue()
            assert jq.wait(job_id, 10) is Status.FAILED
            info = jq.info(job_id)
            assert info is not None
            return info

    @pytest.fixture
    def config(self) -> final.Config:
        return final.Config(num_workers=1, max_retries=2, base_delay=0, jitter=0)

    def test_everything_is_retried_by_default(self, config: final.Config) -> None:
        assert self.run(config, ValueError("x")).attempts == 3

    def test_fail_ends_the_job_at_once(self, config: final.Config,
                                        caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            info = self.run(config, final.Fail("no such recipient"))
        assert (info.attempts, info.last_error) == (1, "Fail: no such recipient")
        assert "not retried" in caplog.text

    def test_give_up_on_per_task(self, config: final.Config) -> None:
        assert self.run(config, KeyError("k"), give_up_on=LookupError).attempts == 1
        assert self.run(config, ValueError("v"), give_up_on=LookupError).attempts == 3

    def test_retry_on_per_task(self, config: final.Config) -> None:
        retry_on = (ConnectionError, TimeoutError)
        assert self.run(config, ConnectionResetError(), retry_on=retry_on).attempts == 3
        assert self.run(config, ValueError("v"), retry_on=retry_on).attempts == 1

    def test_the_config_sets_the_default_and_a_task_overrides_it(
        self, config: final.Config
    ) -> None:
        strict = final.Config(num_workers=1, max_retries=2, base_delay=0, jitter=0,
                              retry_on=ConnectionError, give_up_on=ValueError)
        assert self.run(strict, KeyError("k")).attempts == 1  # retry_on does not name it
        assert self.run(strict, ConnectionError()).attempts == 3
        assert self.run(strict, ValueError()).attempts == 1
        assert self.run(strict, KeyError("k"), retry_on=KeyError).attempts == 3
        assert self.run(strict, ValueError(), retry_on=Exception, give_up_on=TypeError
                        ).attempts == 3  # each field falls back on its own

    def test_plain_handlers_follow_the_config(self) -> None:
        def handler(payload: bytes) -> None:
            raise PermissionError("denied")

        config = final.Config(num_workers=1, max_retries=5, base_delay=0, jitter=0,
                              handler=handler, give_up_on=PermissionError)
        with final.JobQueue(config) as jq:
            jq.enqueue(final.Job("p"))
            assert jq.wait("p", 10) is Status.FAILED
            assert jq.info("p").attempts == 1  # type: ignore[union-attr]

    def test_a_class_whose_instance_check_raises_retries(
        self, config: final.Config, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Meta(type):
            def __instancecheck__(cls, instance: object) -> bool:
                raise RuntimeError("broken metaclass")

        class Odd(Exception, metaclass=Meta):
            pass

        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            assert self.run(config, ValueError(), give_up_on=Odd).attempts == 3
        assert "could not classify" in caplog.text

    @pytest.mark.parametrize("value", [ValueError("x"), "ValueError", (ValueError, 3), int])
    def test_what_is_not_exception_classes_is_refused(self, value: object) -> None:
        with pytest.raises(TypeError, match="retry_on must be an exception class"):
            final.Config(retry_on=value)  # type: ignore[arg-type]
        with final.JobQueue(final.Config(num_workers=1)) as jq, pytest.raises(
                TypeError, match="give_up_on must be an exception class"):
            jq.task(kind="x", give_up_on=value)(lambda: None)  # type: ignore[arg-type]


class TestCloseHurried:
    def test_a_second_close_with_a_shorter_timeout_ends_the_wait(self) -> None:
        started = threading.Event()

        def handler(payload: bytes) -> None:
            started.set()
            if final.current_job().wait(30):  # until close() gives up on it
                raise RuntimeError("stopped unfinished")

        jq = final.JobQueue(final.Config(num_workers=1, handler=handler))
        jq.enqueue(final.Job("stuck"))
        assert started.wait(10)
        first: list[list[str]] = []
        closer = threading.Thread(target=lambda: first.append(jq.close(timeout=600)))
        closer.start()
        assert until(lambda: jq._core.closing)
        assert jq.close(timeout=0) == ["stuck"]  # the first one gives up now
        closer.join(10)
        assert first == [["stuck"]]


class TestClaimSplit:
    """How a shared store's claims are split among priorities: by weight, one at a time."""

    def test_claims_of_one_follow_the_weights(self) -> None:
        weights = {Priority.HIGH: 6, Priority.MEDIUM: 3, Priority.LOW: 1}
        credit = dict.fromkeys(Priority, 0)
        claimed = dict.fromkeys(Priority, 0)
        everything = [(p, 1000) for p in Priority]
        for _ in range(100):
            for priority, count in _split(everything, 1, weights, credit):
                claimed[priority] += count
        assert claimed == {Priority.HIGH: 60, Priority.MEDIUM: 30, Priority.LOW: 10}

    def test_a_batch_is_shared_and_room_bounds_it(self) -> None:
        weights = {Priority.HIGH: 6, Priority.MEDIUM: 3, Priority.LOW: 1}
        credit = dict.fromkeys(Priority, 0)
        split = dict(_split([(p, 1000) for p in Priority], 100, weights, credit))
        assert split == {Priority.HIGH: 60, Priority.MEDIUM: 30, Priority.LOW: 10}
        split = dict(_split([(Priority.HIGH, 5), (Priority.LOW, 1000)], 100, weights, credit))
        assert split == {Priority.HIGH: 5, Priority.LOW: 95}  # what HIGH has no room for


def prefetches_seen(database_url: str, jobs: int, change_store: Any = None) -> list[int]:
    """The prefetch of a one-worker queue at each of ``jobs`` no-op jobs it runs from a
    database they were put in first (``change_store`` may change its store before that)."""
    seen: list[int] = []
    opened: list[final.JobQueue] = []

    def handler(payload: bytes) -> None:
        if opened:
            seen.append(opened[0]._core.prefetch)

    config = final.Config(database_url=database_url, num_workers=1, handler=handler)
    with final.JobQueue(dataclasses.replace(config, num_workers=0)) as producer:
        producer.enqueue_many(final.Job(f"j{i}") for i in range(jobs))
    jq = final.JobQueue(config)
    try:
        if change_store is not None:
            change_store(jq._core.store)
        opened.append(jq)
        assert jq.join(60)
    finally:
        jq.close()
    return seen


class TestSharedStore:
    """With PostgreSQL: producers that declare tasks and never run them, and claims that
    fit the work."""

    def test_a_producer_declares_tasks_and_never_runs_them(self, database_url: str) -> None:
        ran_in: list[str] = []

        def app_of(num_workers: int, name: str) -> final.App:
            app = final.App(final.Config(database_url=database_url, num_workers=num_workers))

            @app.task(kind="add")
            def add(a: int, b: int) -> int:
                ran_in.append(name)
                return a + b

            return app

        worker_app, producer_app = app_of(2, "worker"), app_of(0, "producer")
        with worker_app.open() as worker, producer_app.open() as producer:
            handles = [producer_app.tasks["add"].enqueue(i, i) for i in range(20)]
            assert [handle.result(10) for handle in handles] == [2 * i for i in range(20)]
            assert set(ran_in) == {"worker"} and len(ran_in) == 20
            assert producer.metrics().completed == 0
            assert worker.metrics().completed == 20
            assert sorted(t.name for t in jobqueue_threads() if "worker" in t.name) == [
                "jobqueue-final-worker-0", "jobqueue-final-worker-1"]

    @pytest.mark.parametrize("prefetch", [0, None])
    def test_slow_jobs_go_to_idle_processes(self, database_url: str,
                                            prefetch: int | None) -> None:
        gates = [Gate(), Gate()]
        config = final.Config(database_url=database_url, num_workers=1, prefetch=prefetch)
        queues = [final.JobQueue(dataclasses.replace(config, handler=gate)) for gate in gates]
        try:
            with final.JobQueue(dataclasses.replace(config, num_workers=0)) as producer:
                producer.enqueue_many(final.Job(f"slow-{i}") for i in range(2))
                # One each: a process holds no job its busy worker cannot start.
                assert all(gate.started.wait(10) for gate in gates)
        finally:
            for gate in gates:
                gate.release.set()
            for queue in queues:
                queue.close()

    def test_a_fixed_prefetch_holds_that_many_more(self, database_url: str) -> None:
        gate = Gate()
        config = final.Config(database_url=database_url, num_workers=1, prefetch=2,
                              handler=gate)
        try:
            with final.JobQueue(dataclasses.replace(config, num_workers=0)) as producer:
                producer.enqueue_many(final.Job(f"j{i}") for i in range(6))
            jq = final.JobQueue(config)
            assert gate.started.wait(10)
            assert until(lambda: len(jq._core.table) == 3)  # running one, holding two
            with psycopg.connect(database_url) as conn:
                unclaimed = conn.execute("SELECT count(*) FROM jobqueue_jobs WHERE owner IS "
                                         "NULL AND status = 'queued'").fetchone()[0]
            assert unclaimed == 3
        finally:
            gate.release.set()
        assert jq.join(10)
        jq.close()

    def test_short_jobs_are_claimed_in_batches(self, database_url: str) -> None:
        seen = prefetches_seen(database_url, 3000)
        assert max(seen) > 1  # it learns the pace, from nothing held


class TestNewcomer:
    def test_join_can_wait_for_due_work_only(self) -> None:
        ran: list[bytes] = []
        with final.JobQueue(final.Config(num_workers=1, handler=ran.append)) as jq:
            jq.enqueue(final.Job("later", b"later"), delay=3600)
            jq.enqueue(final.Job("now", b"now"))
            assert jq.join(0.2) is False  # the job an hour ahead counts
            assert jq.join(10, scheduled=False) is True
            assert ran == [b"now"] and jq.status("later") is Status.SCHEDULED
            with pytest.raises(TypeError, match="scheduled must be a bool"):
                jq.join(1, scheduled="no")  # type: ignore[arg-type]
            jq.cancel("later")

    def test_queue_stats_print_as_a_few_lines(self) -> None:
        with final.JobQueue(final.Config(num_workers=1, handler=lambda p: None)) as jq:
            jq.enqueue(final.Job("a", priority="high"))
            assert jq.join(10)
            text = str(jq.queue_stats())
        lines = text.splitlines()
        assert len(lines) == 4 and all(len(line) < 120 for line in lines)
        assert lines[0].startswith("queued 0  scheduled 0  processing 0  retrying 0  "
                                   "completed 1")
        assert lines[1].startswith("high   queued 0") and "completed 1" in lines[1]

    def test_install_hints_name_packages_an_index_has(self) -> None:
        root = Path(final.__file__).parent.parent
        for path in root.rglob("*.py"):
            assert "'jobqueue[" not in path.read_text(), path  # no index has jobqueue


def enqueue_at_once(producer: final.JobQueue, job_ids: list[str],
                    ) -> tuple[list[object], list[int]]:
    """Enqueue each id from a thread of its own, all at once, the first statement held
    until the others wait behind it: what each call came to ("added", or what it raised),
    in the order of ``job_ids``, and how many jobs each statement carried."""
    group = producer._core.store._inserts._group  # type: ignore[attr-defined]
    real = group._insert_batch
    sizes: list[int] = []

    def grouped(records: list[Any], *args: Any) -> Any:
        if not sizes:  # the first leader waits until the others queue behind it
            assert until(lambda: len(group._waiting) == len(job_ids) - 1)
        sizes.append(len(records))
        return real(records, *args)

    group._insert_batch = grouped
    barrier = threading.Barrier(len(job_ids))
    outcomes: list[object] = [None] * len(job_ids)

    def produce(n: int) -> None:
        barrier.wait()
        try:
            producer.enqueue(final.Job(job_ids[n]))
            outcomes[n] = "added"
        except final.JobQueueError as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(len(job_ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes, sizes


class TestGroupInsert:
    """Concurrent single enqueues share statements (PostgreSQL); each job stays its own."""

    def test_concurrent_enqueues_share_a_statement_and_refuse_only_duplicates(
        self, database_url: str
    ) -> None:
        config = final.Config(database_url=database_url, num_workers=0)
        with final.JobQueue(config) as producer:
            ids = ["same" if n % 2 else f"own-{n}" for n in range(8)]
            outcomes, sizes = enqueue_at_once(producer, ids)
            assert sum(outcome == "added" for outcome in outcomes) == 5
            assert [type(o) for o in outcomes if o != "added"] == [final.DuplicateJob] * 3
            assert sizes[0] == 1 and max(sizes) > 1  # the others went in one or two more
            with psycopg.connect(database_url) as conn:
                ids = sorted(row[0] for row in conn.execute("SELECT id FROM jobqueue_jobs"))
            assert ids == ["own-0", "own-2", "own-4", "own-6", "same"]

    def test_a_failed_statement_fails_every_job_it_carried(
        self, database_url: str
    ) -> None:
        config = final.Config(database_url=database_url, num_workers=0)
        with final.JobQueue(config) as producer:
            group = producer._core.store._inserts._group  # type: ignore[attr-defined]
            release = threading.Event()
            real = group._insert_batch

            def failing(records: list[Any], *args: Any) -> Any:
                if len(records) == 1 and records[0].id == "first":
                    release.wait(30)
                    return real(records, *args)
                raise final.StoreError("could not store the job: the database is away")

            group._insert_batch = failing
            errors: list[str] = []

            def produce(job_id: str) -> None:
                try:
                    producer.enqueue(final.Job(job_id))
                except final.StoreError as exc:
                    errors.append(f"{job_id}: {exc}")

            first = threading.Thread(target=produce, args=("first",))
            first.start()
            assert until(lambda: group._leading)
            others = [threading.Thread(target=produce, args=(f"j{i}",)) for i in range(3)]
            for thread in others:
                thread.start()
            assert until(lambda: len(group._waiting) == 3)
            release.set()
            for thread in [first, *others]:
                thread.join(30)
            assert sorted(errors) == [f"j{i}: could not store the job: the database is away"
                                      for i in range(3)]
            assert producer.status("first") is Status.QUEUED
            assert [producer.status(f"j{i}") for i in range(3)] == [None] * 3


class TestReviewFindings:
    """What a review of this issue's change found, each reproduced first."""

    def test_a_caller_interrupted_while_it_waits_holds_up_no_one(self) -> None:
        from jobqueue.final.stores.postgres.group_insert import GroupInsert

        release = threading.Event()
        inserted: list[str] = []

        def insert_batch(records: list[Any], *args: Any) -> dict[str, Any]:
            if records[0].id == "leader":
                release.wait(30)
            inserted.extend(record.id for record in records)
            return {record.id: None for record in records}

        group = GroupInsert(insert_batch, lambda record: final.DuplicateJob(record.id))

        def job(job_id: str) -> final.JobRecord:
            return final.JobRecord(job_id, b"", Priority.MEDIUM, "", None, 0.0, Status.QUEUED,
                             0, None, None, None, None, 0, None)

        real_wait = group._turn.wait

        def wait(timeout: float | None = None) -> bool:
            if threading.current_thread().name == "interrupted":
                raise KeyboardInterrupt
            return real_wait(timeout)

        group._turn.wait = wait  # type: ignore[method-assign]
        outcomes: dict[str, str] = {}

        def insert(job_id: str) -> None:
            try:
                group.insert(job(job_id), None, (), True)
                outcomes[job_id] = "inserted"
            except KeyboardInterrupt:
                outcomes[job_id] = "interrupted"

        leader = threading.Thread(target=insert, args=("leader",))
        leader.start()
        assert until(lambda: group._leading)
        interrupted = threading.Thread(target=insert, args=("gone",), name="interrupted")
        interrupted.start()
        interrupted.join(10)
        later = threading.Thread(target=insert, args=("later",))
        later.start()
        assert until(lambda: len(group._waiting) == 1)
        release.set()
        for thread in (leader, later):
            thread.join(10)
        assert outcomes == {"leader": "inserted", "gone": "interrupted", "later": "inserted"}
        assert inserted == ["leader", "later"]  # the interrupted caller's job never went in
        assert not group._leading and not group._waiting

    def test_a_forked_child_opens_the_app_it_inherited_bound(self) -> None:
        app = adder_app(final.Config(num_workers=1))
        with app.open():
            pid = os.fork()
            if pid == 0:  # the child: the parent's queue is not its own
                code = 1
                try:
                    with app.open() as mine:
                        code = 0 if app.tasks["add"].enqueue(2, 2).result(10) == 4 else 2
                        mine.close()
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0

    def test_join_of_due_work_counts_a_scheduled_job_come_due(
        self, database_url: str
    ) -> None:
        config = final.Config(database_url=database_url, num_workers=0)
        with final.JobQueue(config) as producer:
            producer.enqueue(final.Job("soon"), delay=0.3)
            due = time.time() + 0.3
            assert producer.join(0.05, scheduled=False) is True  # not due yet
            assert until(lambda: time.time() > due + 0.05)
            assert producer.join(0.05, scheduled=False) is False  # due, and no one ran it
            producer.cancel("soon")

    def test_one_refused_job_of_a_group_fails_alone(self, database_url: str) -> None:
        config = final.Config(database_url=database_url, num_workers=0)
        with final.JobQueue(config) as producer:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("""
                    CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN
                        IF NEW.id = 'bad' THEN RAISE EXCEPTION 'no bad jobs here'; END IF;
                        RETURN NEW; END $$ LANGUAGE plpgsql""")
                conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON jobqueue_jobs "
                             "FOR EACH ROW EXECUTE FUNCTION refuse()")
            results, sizes = enqueue_at_once(producer, ["a", "bad", "c", "d"])
            outcomes = dict(zip(["a", "bad", "c", "d"], map(str, results), strict=True))
            assert max(sizes) > 1
            assert "no bad jobs here" in outcomes.pop("bad")
            assert outcomes == {"a": "added", "c": "added", "d": "added"}
            assert isinstance(results[1], final.StoreError)

    def test_a_slow_claim_lets_the_prefetch_grow(self, database_url: str) -> None:
        def far_away(store: Any) -> None:
            real_claim = store.claim

            def remote_claim(*args: Any) -> Any:  # a database 60 ms away
                time.sleep(0.06)
                return real_claim(*args)

            store.claim = remote_claim

        seen = prefetches_seen(database_url, 300, far_away)
        assert max(seen) >= 2  # not stuck at 0: the claim's own time counts
