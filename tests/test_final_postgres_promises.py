"""Promises the PostgreSQL store keeps when something goes wrong: one test for each way it was
found to break one (a cancel over a lapsed claim, a poison job's first death, a deadlock, a
refused outcome, another process's read, a producer declaring tasks, a server restart, an
application transaction holding a row), and the tests that catch the one-line bugs
``tests/mutants.py`` plants. The scenarios with many processes and a server taken down are in
``tests/faults/``.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import open_queue, start_server
from test_final_contract import Gate, held, hold_worker, until

from bench.pgserver import PostgresServer
from jobqueue import cli, final
from jobqueue.errors import StoreError
from jobqueue.final import Job, Status
from jobqueue.final.stores.postgres.store import PostgresStore

COMPLETED = Status.COMPLETED


def uri_of(url: str) -> str:
    """A key=value URL of the test server as the postgresql:// URI the command line takes."""
    name = url.rsplit("dbname=", 1)[1]
    host = url.split("host=", 1)[1].split()[0]
    return f"postgresql://postgres@/{name}?host={host}"


def row(url: str, job_id: str, queue: str = "default") -> tuple:
    """(status, owner, lease lapsed, attempts) of a job, as the database has it."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT status, owner, lease_until < now(), attempts FROM jobqueue_jobs "
            "WHERE queue = %s AND id = %s", (queue, job_id)).fetchone()


def finish_by_hand(url: str, job_id: str, status: str) -> None:
    """A repair made outside jobqueue: the row finished, its claim left as it was."""
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE jobqueue_jobs SET status = %s, finished_at = 1 WHERE id = %s",
                     (status, job_id))


def lease_until(url: str, job_id: str) -> datetime.datetime:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT lease_until FROM jobqueue_jobs WHERE id = %s",
                            (job_id,)).fetchone()[0]


def _seconds(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def recorder(ran: list, where: str) -> final.Handler:
    return lambda payload: ran.append((where, final.current_job().job.id))


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of this test's own, to restart or crash without disturbing the others."""
    server = start_server()
    yield server
    server.remove()


def holding_x(queues: list, config: final.Config, ran: list[tuple[str, str]],
              gate: Gate) -> final.JobQueue:
    """A process running "blocker" until ``gate`` opens, holding job "x" (kind "x") queued
    behind it, with every move written. It runs kind "x" only: it claims nothing the
    others enqueue."""
    holder = open_queue(queues, config, handler=None, num_workers=1, lease=0.5,
                        handlers={"x": recorder(ran, "holder")})
    holder.enqueue_with_handler(Job("blocker"), gate)
    assert gate.started.wait(10)
    holder.enqueue(Job("x", kind="x"))
    held(holder, "x")
    holder._core.store.sync()
    return holder


class TestFinishedJobsStayFinished:
    @pytest.mark.parametrize("how", ["command line", "another process"])
    def test_a_job_cancelled_over_a_lapsed_claim_never_runs(
        self, config: final.Config, queues: list, how: str
    ) -> None:
        url = config.database_url or ""
        ran: list[tuple[str, str]] = []
        gate = Gate()
        holder = holding_x(queues, config, ran, gate)
        with holder._core.store._writer.lock:  # the holder stalls: no heartbeat, no write
            assert until(lambda: row(url, "x")[2] is True)  # its claim of x lapsed
            feeder = open_queue(queues, config, num_workers=0, handler=None)
            if how == "command line":
                assert cli.main(["cancel", uri_of(url), "x"]) == 0
            else:
                assert feeder.cancel("x") is True
            assert row(url, "x")[:2] == ("cancelled", None)  # the claim it overrode: cleared
            other = open_queue(queues, config, handler=recorder(ran, "other"), lease=0.5,
                               handlers={"x": recorder(ran, "other")})
            feeder.enqueue(Job("probe"))  # claimed by `other`, older jobs of MEDIUM first
            assert other.wait("probe", 10) is COMPLETED
        gate.release.set()
        assert holder.wait("blocker", 10) is COMPLETED
        # The holder takes x next: its start is refused, and x does not run there either.
        assert until(lambda: holder._core.table.get("x") is None)
        assert holder.join(10)
        assert row(url, "x")[:2] == ("cancelled", None)
        assert ("holder", "x") not in ran and ("other", "x") not in ran

    def test_a_finished_row_whose_claim_lapsed_is_never_claimed(
        self, config: final.Config, queues: list
    ) -> None:
        url = config.database_url or ""
        ran: list[tuple[str, str]] = []
        gate = Gate()
        holder = holding_x(queues, config, ran, gate)
        with holder._core.store._writer.lock:  # the holder stalls: no heartbeat, no write
            finish_by_hand(url, "x", "cancelled")
            owner = row(url, "x")[1]
            assert until(lambda: row(url, "x")[2] is True)  # the claim lapsed
            other = open_queue(queues, config, handler=recorder(ran, "other"), lease=0.5,
                               handlers={"x": recorder(ran, "other")})
            feeder = open_queue(queues, config, num_workers=0, handler=None)
            feeder.enqueue(Job("probe"))  # claimed by `other`, older jobs of MEDIUM first
            assert other.wait("probe", 10) is COMPLETED
            assert row(url, "x")[:2] == ("cancelled", owner)  # not taken
        gate.release.set()
        assert holder.wait("blocker", 10) is COMPLETED
        assert holder.join(10) and other.join(10)
        assert row(url, "x")[0] == "cancelled"
        assert ("holder", "x") not in ran and ("other", "x") not in ran

    def test_a_late_outcome_never_moves_a_finished_row(
        self, config: final.Config, queues: list, caplog: pytest.LogCaptureFixture
    ) -> None:
        url = config.database_url or ""
        gate = Gate()
        slow = open_queue(queues, config, handler=gate, num_workers=1, lease=0.5)
        slow.enqueue(Job("x"))
        assert gate.started.wait(10)
        store = slow._core.store
        store.sync()
        with store._writer.lock:  # stalled mid-run, past its lease
            assert until(lambda: row(url, "x")[2] is True)
            finish_by_hand(url, "x", "failed")  # a repair finishes the row by hand
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            gate.release.set()  # its handler returns: COMPLETED here, refused there
            assert until(lambda: slow._core.table.get("x") is None)
            slow.close()
        assert "was taken over by another process, or changed by a repair" in caplog.text or (
            "was taken over by another process" in caplog.text
            and "will not run it or write its outcome" in caplog.text)
        assert row(url, "x")[0] == "failed"

    def test_an_outcome_never_moves_a_row_finished_under_its_live_lease(
        self, config: final.Config, queues: list, caplog: pytest.LogCaptureFixture
    ) -> None:
        # No heartbeat comes between the repair and the outcome (a 30 s lease): the move's
        # own condition is all that refuses it.
        url = config.database_url or ""
        gate = Gate()
        worker = open_queue(queues, config, handler=gate, num_workers=1, lease=30.0)
        worker.enqueue(Job("x"))
        assert gate.started.wait(10)
        finish_by_hand(url, "x", "cancelled")
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            gate.release.set()
            assert worker.wait("x", 10) is Status.CANCELLED
            assert until(lambda: worker._core.table.get("x") is None)
            worker.close()
        assert row(url, "x")[0] == "cancelled"
        assert "is not written" in caplog.text


class TestStarts:
    def test_a_handler_runs_only_once_its_start_is_committed(
        self, config: final.Config, queues: list
    ) -> None:
        url = config.database_url or ""
        seen: list[tuple[str, int]] = []

        def handler(payload: bytes) -> None:
            with psycopg.connect(url) as conn:  # another process's view, as the handler runs
                seen.append(conn.execute(
                    "SELECT status, attempts FROM jobqueue_jobs WHERE id = %s",
                    (final.current_job().job.id,)).fetchone())

        queue = open_queue(queues, config, handler=handler, num_workers=2)
        queue.enqueue_many(Job(f"claimed-{i}") for i in range(5))  # claimed from the table
        queue.enqueue(Job("held"))  # held by this process from the start
        assert queue.join(10)
        assert seen == [("processing", 1)] * 6

    def test_a_start_the_database_cannot_confirm_does_not_run(
        self, config: final.Config, queues: list, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        url = config.database_url or ""
        ran: list[tuple[str, str]] = []
        gate = Gate()
        queue = open_queue(queues, config, handler=recorder(ran, "here"), num_workers=1,
                           lease=0.5)
        queue.enqueue_with_handler(Job("blocker"), gate)
        assert gate.started.wait(10)
        queue.enqueue(Job("x"))
        held(queue, "x")
        writer = queue._core.store._writer
        answer = threading.Event()
        real = writer._execute

        def unanswered(*args: object) -> dict[str, str]:  # the database does not answer
            answer.wait(30)
            return real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(writer, "_execute", unanswered)
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            gate.release.set()  # the worker takes x, whose start is never confirmed
            assert until(lambda: "did not confirm this process's lease" in caplog.text,
                         timeout=10)
            assert ran == []
            monkeypatch.setattr(writer, "_execute", real)
            answer.set()  # the answers come: x goes back to the queue, and runs once
            assert queue.wait("x", 10) is COMPLETED
        assert ran == [("here", "x")]
        assert row(url, "x")[3] == 1  # the attempt it never began is not counted


class TestWriterFaults:
    @pytest.mark.parametrize("error", [
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.OutOfMemory("out of memory"),
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
    ], ids=lambda error: type(error).__name__)
    def test_a_transient_failure_writes_the_batch_again(
        self, config: final.Config, queues: list, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, error: Exception,
    ) -> None:
        queue = open_queue(queues, config, handler=lambda payload: None, num_workers=1)
        writer = queue._core.store._writer
        real, failures = writer._execute, [error, error]

        def flaky(*args: object) -> dict[str, str]:
            if failures:
                raise failures.pop()
            return real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(writer, "_execute", flaky)
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            queue.enqueue_many(Job(f"j{i}") for i in range(10))
            assert queue.join(10)  # one process, nothing lost: it would hang otherwise
        # Told apart as what it is: a warning, the batch written again whole (an error of
        # unknown kind is logged at ERROR and splits the batch, move by move).
        assert [record.levelname for record in caplog.records
                if "writing to PostgreSQL failed" in record.getMessage()] == ["WARNING"] * 2
        with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
            assert conn.execute("SELECT status, count(*) FROM jobqueue_jobs GROUP BY 1"
                                ).fetchall() == [("completed", 10)]

    def test_a_transaction_locking_rows_in_reverse_order_drops_nothing(
        self, config: final.Config, queues: list
    ) -> None:
        url = config.database_url or ""
        gates = {"a": Gate(), "b": Gate()}
        queue = open_queue(queues, config, num_workers=2,
                           handler=lambda payload: gates[payload.decode()](payload))
        queue.enqueue(Job("a", b"a"))
        queue.enqueue(Job("b", b"b"))
        assert gates["a"].started.wait(10) and gates["b"].started.wait(10)
        queue._core.store.sync()
        with psycopg.connect(url) as app:
            app.execute("SET lock_timeout = '10s'")
            app.execute("SELECT id FROM jobqueue_jobs WHERE id = 'b' FOR UPDATE")
            for gate in gates.values():
                gate.release.set()  # the writer's batch finishes a, then b
            with psycopg.connect(url, autocommit=True) as watch:  # the writer has tried
                assert until(lambda: row(url, "a")[0] == "completed" or watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ).fetchone()[0] > 0, timeout=10)
            try:  # and now a, in the other order
                app.execute("SELECT id FROM jobqueue_jobs WHERE id = 'a' FOR UPDATE")
            except psycopg.errors.DeadlockDetected:
                app.rollback()  # (this side lost: the writer's batch went on)
            else:
                app.commit()
        for job_id in ("a", "b"):
            assert queue.wait(job_id, 10) is COMPLETED
        assert queue.join(10)
        assert row(url, "a")[0] == row(url, "b")[0] == "completed"

    def test_a_value_postgresql_refuses_drops_only_its_move(
        self, config: final.Config, queues: list, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        url = config.database_url or ""
        gates = {name: Gate() for name in ("bad", "good")}
        queue = open_queue(queues, config, num_workers=2,
                           handler=lambda payload: gates[payload.decode()](payload))
        for name in gates:
            queue.enqueue(Job(name, name.encode()))
        assert all(gate.started.wait(10) for gate in gates.values())
        store = queue._core.store
        store.sync()
        # one batch for both
        monkeypatch.setattr("jobqueue.final.stores.postgres.writer._LINGER", 5.0)
        bad = queue._core.table.get("bad").record  # type: ignore[union-attr]
        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            # A move whose attempt count no integer column holds (a job past 2**31 - 1
            # retries), and a good one, in one batch.
            store.retrying(bad._replace(status=Status.RETRYING, attempts=2**31, due_at=1.0))
            gates["good"].release.set()
            assert queue.wait("good", 10) is COMPLETED  # (its wait ends the lingering)
            assert until(lambda: row(url, "bad")[0] == "failed")
        assert "job 'bad': PostgreSQL refused to record this job as retrying" in caplog.text
        with psycopg.connect(url) as conn:
            error = conn.execute("SELECT last_error FROM jobqueue_jobs WHERE id = 'bad'"
                                 ).fetchone()[0]
        assert "out of range for type integer" in error
        gates["bad"].release.set()
        assert queue.wait("bad", 10) is Status.FAILED  # what the database says counts

    def test_a_move_an_application_trigger_refuses_is_dropped_not_retried_forever(
        self, config: final.Config, queues: list, caplog: pytest.LogCaptureFixture,
    ) -> None:
        url = config.database_url or ""
        queue = open_queue(queues, config, handler=lambda payload: None)
        queue.enqueue(Job("first"))
        assert queue.wait("first", 10) is COMPLETED  # the tables exist
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("""
                CREATE FUNCTION veto() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'vetoed by the application'; END $$;
                CREATE TRIGGER veto BEFORE UPDATE ON jobqueue_jobs FOR EACH ROW
                WHEN (NEW.id = 'vetoed' AND NEW.status = 'completed') EXECUTE FUNCTION veto();
            """)
        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            queue.enqueue_many([Job("vetoed"), Job("fine")])
            assert queue.wait("fine", 10) is COMPLETED
            assert queue.wait("vetoed", 10) is Status.FAILED  # not a writer stuck on it
        assert "vetoed by the application" in (queue.info("vetoed").last_error or "")
        assert "job 'vetoed': PostgreSQL refused to record this job as completed" in caplog.text
        assert queue.join(10)


class TestCancelDuringAClaim:
    """Found by the model-based test: a job this process's claimer had just claimed (its
    row this process's in the database, not yet in the queue's table) was refused by
    cancel() as if another process held it, though it was QUEUED here."""

    def test_a_job_being_claimed_here_is_cancelled_once_the_claim_lands(
        self, config: final.Config, queues: list[final.JobQueue],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        worker = open_queue(queues, config, num_workers=1)
        gate = hold_worker(worker)  # the only worker is busy: a claimed job stays QUEUED
        store = worker._core.store
        real_claim, claimed, release = store.claim, threading.Event(), threading.Event()

        def slow_to_land(*args: object) -> list[final.JobRecord]:
            records = real_claim(*args)  # type: ignore[arg-type]
            if any(record.id == "x" for record in records):
                claimed.set()
                assert release.wait(10)
            return records

        monkeypatch.setattr(store, "claim", slow_to_land)
        producer = open_queue(queues, config, num_workers=0)
        producer.enqueue(Job("x"))
        assert claimed.wait(10)  # its row is the worker's in the database, not yet held
        outcome: list[bool] = []
        cancelling = threading.Thread(target=lambda: outcome.append(worker.cancel("x")))
        cancelling.start()
        release.set()
        cancelling.join(10)
        assert outcome == [True]
        assert worker.status("x") is Status.CANCELLED
        assert producer.status("x") is Status.CANCELLED
        gate.release.set()


class TestOutcomes:
    def test_a_hook_fires_once_for_the_outcome_that_was_committed(
        self, config: final.Config, queues: list
    ) -> None:
        hooked: list[tuple[str, str]] = []
        gate = Gate()
        slow = open_queue(queues, config, handler=gate, num_workers=1, lease=0.3,
                          on_complete=lambda info: hooked.append(("slow", info.id)))
        slow.enqueue(Job("contested"))
        assert gate.started.wait(10)
        store = slow._core.store
        store.sync()
        with store._writer.lock:  # the slow process stalls past its lease
            quick = open_queue(queues, config, handler=lambda p: None, lease=0.3,
                               base_delay=0.01,
                               on_complete=lambda info: hooked.append(("quick", info.id)))
            assert quick.wait("contested", 10) is COMPLETED
        assert until(lambda: ("quick", "contested") in hooked)
        gate.release.set()  # the slow handler returns: its outcome is refused
        assert until(lambda: slow._core.table.get("contested") is None)
        slow.close()  # every hook it would call has been called
        assert hooked == [("quick", "contested")]

    def test_an_outcome_is_reported_once_every_process_sees_it(
        self, config: final.Config, queues: list
    ) -> None:
        observer = open_queue(queues, config, num_workers=0, handler=None)
        in_hooks: list[Status | None] = []
        worker = open_queue(queues, config, handler=lambda payload: payload,
                            on_complete=lambda info: in_hooks.append(observer.status(info.id)))
        worker.enqueue_many(Job(f"j{i}", b"%d" % i) for i in range(20))
        for i in range(20):
            if i % 2:
                assert worker.wait(f"j{i}", 10) is COMPLETED
            else:
                assert worker.result(f"j{i}", 10) == b"%d" % i
            assert observer.status(f"j{i}") is COMPLETED  # another process reads it so
        assert until(lambda: len(in_hooks) == 20)
        assert in_hooks == [COMPLETED] * 20


class TestProducers:
    def test_a_producer_declares_tasks_that_other_processes_run(
        self, config: final.Config, queues: list
    ) -> None:
        where: list[str] = []
        producer = open_queue(queues, config, num_workers=0, handler=None)

        @producer.task(kind="add")
        def add(a: int, b: int) -> dict:
            where.append("producer")
            return {"sum": a + b}

        worker = open_queue(queues, config, handler=None)

        @worker.task(kind="add")
        def add_there(a: int, b: int) -> dict:
            where.append("worker")
            return {"sum": a + b}

        ids = [add.enqueue(i, 1) for i in range(5)]
        reader = open_queue(queues, config, num_workers=0, handler=None)  # declares nothing
        for i, job_id in enumerate(ids):
            assert producer.result(job_id, 10) == {"sum": i + 1}
            assert reader.result(job_id, 10) == {"sum": i + 1}  # JSON, marked so
        assert where == ["worker"] * 5
        assert producer.metrics().num_workers == 0 and producer.metrics().utilization == 0
        assert [t.name for t in threading.enumerate() if t.name.startswith(
            "jobqueue-final-worker")] == [f"jobqueue-final-worker-{n}" for n in range(4)]
        with pytest.raises(ValueError, match="this queue has no workers"):
            producer.enqueue_with_handler(Job("closure"), print)

    def test_a_plain_handlers_bytes_stay_bytes_everywhere(
        self, config: final.Config, queues: list
    ) -> None:
        worker = open_queue(queues, config, handler=lambda payload: b'{"a": 1}')
        worker.enqueue(Job("raw"))
        reader = open_queue(queues, config, num_workers=0, handler=None)
        assert reader.result("raw", 10) == b'{"a": 1}'

    def test_no_workers_needs_a_database(self) -> None:
        with pytest.raises(ValueError, match="only a queue in PostgreSQL"):
            final.Config(num_workers=0, handler=print)


class TestServerRestart:
    @pytest.mark.parametrize("first", ["enqueue", "status", "cancel", "result"])
    def test_the_first_call_after_a_restart_works(
        self, own_server: PostgresServer, first: str
    ) -> None:
        url = own_server.new_database()
        config = final.Config(database_url=url, handler=lambda payload: b"ok", lease=5.0)
        with final.JobQueue(config) as queue:
            queue.enqueue(Job("before"))
            assert queue.wait("before", 10) is COMPLETED
            own_server.restart("fast")
            if first == "enqueue":
                queue.enqueue(Job("after"))
                assert queue.wait("after", 30) is COMPLETED
            elif first == "status":
                assert queue.status("before") is COMPLETED
            elif first == "cancel":
                assert queue.cancel("unknown") is False
            else:
                assert queue.result("before", 10) == b"ok"
            queue.enqueue(Job("later"))
            assert queue.wait("later", 30) is COMPLETED
            assert queue.join(30)


class TestApplicationTransactions:
    def test_a_row_an_application_holds_stops_no_heartbeat(
        self, config: final.Config, queues: list
    ) -> None:
        url = config.database_url or ""
        ran: collections.Counter[str] = collections.Counter()
        gates = {"long": Gate(timeout=30), "short": Gate()}

        def handler(payload: bytes) -> None:
            job_id = final.current_job().job.id
            ran[job_id] += 1
            if job_id in gates:
                gates[job_id](payload)

        lease = 0.6
        holder = open_queue(queues, config, handler=handler, num_workers=2, lease=lease)
        holder.enqueue(Job("long"))
        holder.enqueue(Job("short"))
        assert gates["long"].started.wait(10) and gates["short"].started.wait(10)
        holder.enqueue(Job("locked"))  # queued, held: the next job of whichever is free
        held(holder, "locked")
        watcher = open_queue(queues, config, handler=handler, lease=lease)
        with psycopg.connect(url) as app:
            app.execute("SELECT id FROM jobqueue_jobs WHERE id = 'locked' FOR UPDATE")
            since = app.execute("SELECT clock_timestamp()").fetchone()[0]
            gates["short"].release.set()  # its worker takes "locked": a start it cannot write
            # Held past several leases, while the heartbeats renew "long" all along.
            assert until(lambda: lease_until(url, "long") > since + _seconds(4 * lease),
                         timeout=10)
            app.commit()
        gates["long"].release.set()
        for job_id in ("long", "short", "locked"):
            assert holder.wait(job_id, 10) is COMPLETED
        assert watcher.join(10)
        assert ran == {"long": 1, "short": 1, "locked": 1}  # none taken over, none twice
        assert row(url, "long")[3] == 1


class TestWakeUps:
    """Tests that fail for one-line bugs a whole suite once let through (tests/mutants.py)."""

    def test_a_handler_running_past_many_leases_runs_once(
        self, config: final.Config, queues: list
    ) -> None:
        url = config.database_url or ""
        ran: list[tuple[str, str]] = []
        lease = 0.5
        gate = Gate(timeout=30)
        runner = open_queue(queues, config, handler=gate, num_workers=1, lease=lease)
        runner.enqueue(Job("long"))
        assert gate.started.wait(10)
        watcher = open_queue(queues, config, handler=recorder(ran, "watcher"), lease=lease)
        with psycopg.connect(url) as conn:
            since = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        # It runs past several leases, renewed all along while the watcher looks.
        assert until(lambda: lease_until(url, "long") > since + _seconds(5 * lease),
                     timeout=10)
        gate.release.set()
        assert runner.wait("long", 30) is COMPLETED
        assert watcher.join(10)
        assert ran == [] and gate.payloads == [b""]  # it ran once, in the runner

    def test_a_row_locked_by_an_open_transaction_holds_up_no_claim(
        self, config: final.Config, queues: list
    ) -> None:
        url = config.database_url or ""
        producer = open_queue(queues, config, num_workers=0, handler=None)
        producer.enqueue(Job("locked"))
        producer.enqueue_many(Job(f"j{i}") for i in range(3))
        with psycopg.connect(url) as app:
            app.execute("SELECT id FROM jobqueue_jobs WHERE id = 'locked' FOR UPDATE")
            worker = open_queue(queues, config, handler=lambda payload: None)
            for i in range(3):
                assert worker.wait(f"j{i}", 10) is COMPLETED
            app.commit()
        assert worker.wait("locked", 10) is COMPLETED

    def test_an_idle_process_starts_a_job_well_before_its_poll(
        self, config: final.Config, queues: list, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(PostgresStore, "poll_interval", 60.0)  # a notice, or nothing
        worker = open_queue(queues, config, handler=lambda payload: None)
        assert until(lambda: not any(worker._core.unclaimed))  # its first look: empty
        producer = open_queue(queues, config, num_workers=0, handler=None)
        producer.enqueue(Job("woken"))
        assert worker.wait("woken", 10) is COMPLETED

    def test_a_job_for_later_stays_in_the_table_after_a_claim(
        self, config: final.Config, queues: list
    ) -> None:
        url = config.database_url or ""
        producer = open_queue(queues, config, num_workers=0, handler=None)
        producer.enqueue(Job("later"), delay=3600)
        worker = open_queue(queues, config, handler=lambda payload: None)
        producer.enqueue(Job("now"))  # claimed by the worker: a claim after "later"'s insert
        assert worker.wait("now", 10) is COMPLETED
        assert row(url, "later")[:2] == ("scheduled", None)
        assert worker.status("later") is Status.SCHEDULED

    def test_a_scheduled_job_claimed_once_due_is_queued_in_the_table(
        self, config: final.Config, queues: list
    ) -> None:
        url = config.database_url or ""
        gate = Gate()
        worker = open_queue(queues, config, handler=gate, num_workers=1)
        worker.enqueue(Job("blocker"))
        assert gate.started.wait(10)
        producer = open_queue(queues, config, num_workers=0, handler=None)
        producer.enqueue(Job("due", run_at=time.time() - 1))  # due at once: QUEUED
        producer.enqueue(Job("soon"), delay=0.2)
        assert until(lambda: worker._core.table.get("soon") is not None)  # claimed, waiting
        assert row(url, "soon")[0] == "queued"
        stats = producer.queue_stats()
        assert (stats.scheduled, stats.queued, stats.processing) == (0, 2, 1)
        gate.release.set()
        assert worker.join(10)

    def test_queue_stats_count_a_job_waiting_for_its_retry_as_retrying(
        self, config: final.Config, queues: list
    ) -> None:
        failed = threading.Event()

        def flaky(payload: bytes) -> None:
            failed.set()
            raise ConnectionError("down")

        worker = open_queue(queues, config, handler=flaky, base_delay=3600, jitter=0)
        worker.enqueue(Job("flaky"))
        assert failed.wait(10)
        assert until(lambda: worker.status("flaky") is Status.RETRYING)
        stats = worker.queue_stats()
        assert (stats.retrying, stats.queued) == (1, 0)


class TestSameDatabase:
    def test_a_connection_to_the_same_database_by_another_name_is_accepted(
        self, config: final.Config, queues: list
    ) -> None:
        url = config.database_url or ""
        queue = open_queue(queues, config, handler=None)
        host = url.split("host=", 1)[1].split()[0]
        other_spelling = url.replace(f"host={host}", f"host={host}/")  # a trailing slash
        with psycopg.connect(other_spelling) as conn:
            queue.enqueue(Job("spelt"), connection=conn)
        assert queue.status("spelt") is Status.QUEUED


class TestPasswords:
    URL = "postgresql://app:s3cret-pw@127.0.0.1:1/db?connect_timeout=1"

    def test_no_repr_shows_the_password(self) -> None:
        config = final.Config(database_url=self.URL)
        for text in (repr(config), str(config)):
            assert "s3cret-pw" not in text and "app:***@127.0.0.1" in text
        keys = final.Config(database_url="host=x password='s3cret pw' dbname=db")
        assert "s3cret" not in repr(keys) and "password=***" in repr(keys)

    @pytest.mark.parametrize("url", [
        URL,
        "host=127.0.0.1 port=1 password=s3cret-pw connect_timeout=1",
        "host=127.0.0.1 port=notaport password=s3cret-pw",
        "postgresql://app:s3cret-pw@127.0.0.1:1/db?nonsense=1",
        "postgresql://app:s3cret-pw%zz@127.0.0.1:1/db",  # libpq quotes the bad token
    ])
    def test_no_error_shows_the_password(self, url: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG, logger="jobqueue"), pytest.raises(
            StoreError
        ) as raised:
            final.JobQueue(final.Config(database_url=url, handler=print))
        assert "s3cret-pw" not in str(raised.value) and "s3cret-pw" not in caplog.text

