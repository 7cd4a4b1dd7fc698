"""What only the PostgreSQL store promises: one queue shared by many processes.

The contract suites (test_final_contract.py, test_store_contract.py) run over PostgreSQL as
over the other stores; these tests check what sharing adds, with real child processes
(pg_child.py) where a claim is about processes: exactly once across four of them, a process
killed mid-run, one stopped past its lease and resumed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from conftest import open_queue
from test_final_contract import Gate, held, until

from jobqueue import cli, final
from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final import Priority, Status
from jobqueue.final.stores.postgres.schema import SCHEMA_VERSION

CHILD = str(Path(__file__).with_name("pg_child.py"))


class TestConfig:
    def test_database_url_and_persist_path_are_exclusive(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="database_url and persist_path are exclusive"):
            final.Config(database_url="postgresql:///x", persist_path=str(tmp_path))

    @pytest.mark.parametrize(("fields", "error", "message"), [
        ({"database_url": 42}, TypeError, "database_url must be a str"),
        ({"database_url": " "}, ValueError, "database_url must not be empty"),
        ({"database_url": "mysql://x"}, ValueError, "not a mysql:// URL"),
        ({"database_url": "postgresql:///x", "queue_name": ""}, ValueError, "queue_name"),
        ({"database_url": "postgresql:///x", "queue_name": "a\0b"}, ValueError, "NUL"),
        ({"database_url": "postgresql:///x", "lease": 0}, ValueError, "lease"),
        ({"database_url": "postgresql:///x", "lease": float("nan")}, ValueError, "lease"),
        ({"database_url": "postgresql:///x", "lease": float("inf")}, ValueError, "lease"),
        ({"database_url": "postgresql:///x", "lease": "30"}, TypeError, "lease"),
    ])
    def test_bad_values_are_named(self, fields: dict, error: type, message: str) -> None:
        with pytest.raises(error, match=message):
            final.Config(**fields)

    def test_an_unreachable_database_is_a_store_error(self, tmp_path: Path) -> None:
        config = final.Config(database_url=f"host={tmp_path} dbname=none connect_timeout=2",
                              handler=print)
        with pytest.raises(StoreError, match="cannot connect to the database"):
            final.JobQueue(config)

    def test_a_connection_needs_a_database_queue(self) -> None:
        with final.JobQueue(final.Config(handler=print)) as queue, pytest.raises(
            ValueError, match="needs a queue in PostgreSQL"
        ):
            queue.enqueue(final.Job("x"), connection=object())


class TestSchema:
    def test_made_once_by_processes_starting_together(self, database_url: str) -> None:
        script = ("import sys; from jobqueue.final.stores.postgres.store import PostgresStore; "
                  "PostgresStore(sys.argv[1]).close()")
        children = [subprocess.Popen([sys.executable, "-c", script, database_url])
                    for _ in range(4)]
        assert [child.wait(60) for child in children] == [0, 0, 0, 0]
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT value FROM jobqueue_meta").fetchall() == [
                (str(SCHEMA_VERSION),)
            ]

    def test_a_newer_schema_is_refused(self, config: final.Config) -> None:
        final.JobQueue(config).close()
        with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
            conn.execute("UPDATE jobqueue_meta SET value = %s", (str(SCHEMA_VERSION + 1),))
        with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}, newer than"):
            final.JobQueue(config)

    @pytest.mark.parametrize("version", ["0", "-3", "three"])
    def test_a_version_no_jobqueue_wrote_is_refused(self, config: final.Config,
                                                    version: str) -> None:
        final.JobQueue(config).close()
        with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
            conn.execute("UPDATE jobqueue_meta SET value = %s", (version,))
        with pytest.raises(StoreError, match="not a version this jobqueue can read"):
            final.JobQueue(config)

    def test_a_version_1_database_is_upgraded_by_the_first_queue(
        self, config: final.Config
    ) -> None:
        producer = dataclasses.replace(config, handler=None)  # runs nothing: "old" waits
        with final.JobQueue(producer) as jq:
            jq.enqueue(final.Job("old", b"from version 1", kind="later"))
        with psycopg.connect(config.database_url, autocommit=True) as conn:  # type: ignore[arg-type]
            # The tables as version 1 made them.
            conn.execute("ALTER TABLE jobqueue_jobs DROP COLUMN result")
            conn.execute("ALTER TABLE jobqueue_jobs DROP COLUMN result_json")
            conn.execute("DROP INDEX jobqueue_jobs_scheduled")
            conn.execute("DROP INDEX jobqueue_jobs_finished")
            conn.execute("CREATE INDEX jobqueue_jobs_finished ON jobqueue_jobs "
                         "(queue, finished_at) WHERE status IN ('completed', 'failed')")
            conn.execute("DROP TABLE jobqueue_processes")
            conn.execute("UPDATE jobqueue_meta SET value = '1'")
        url = config.database_url or ""
        uri = (f"postgresql://postgres@/{url.rsplit('dbname=', 1)[1]}"
               f"?host={url.split('host=', 1)[1].split()[0]}")
        assert cli.main(["stats", uri]) == 2  # the command line does not upgrade: a queue does
        config = dataclasses.replace(config, handlers={"later": lambda p: p.upper()})
        with final.JobQueue(config) as jq:
            assert jq.result("old", timeout=10) == b"FROM VERSION 1"
            jq.enqueue(final.Job("after", kind="later"), delay=3600)
            assert jq.cancel("after") is True
        with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
            assert conn.execute("SELECT value FROM jobqueue_meta").fetchone() == (
                str(SCHEMA_VERSION),)
            assert conn.execute("SELECT to_regclass('jobqueue_jobs_scheduled') IS NOT NULL"
                                ).fetchone() == (True,)
            assert conn.execute("SELECT to_regclass('jobqueue_processes') IS NOT NULL"
                                ).fetchone() == (True,)

    def test_a_database_without_the_processes_table_gains_it(
        self, config: final.Config, queues: list, capsys: pytest.CaptureFixture[str]
    ) -> None:
        old = open_queue(queues, config)  # as a process of an earlier jobqueue runs on
        with psycopg.connect(config.database_url, autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute("DROP TABLE jobqueue_processes")
        old.enqueue(final.Job("before"))
        assert old.wait("before", 10) is Status.COMPLETED
        # No table: the command lists none (a process that holds jobs would be, from them).
        assert cli.main(["stats", config.database_url or "", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["processes"] == []
        new = open_queue(queues, config)
        new.enqueue(final.Job("after"))
        assert old.wait("after", 10) is Status.COMPLETED
        with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
            assert conn.execute("SELECT value FROM jobqueue_meta").fetchone() == (
                str(SCHEMA_VERSION),)  # (no new version: nothing depends on the table)
            owners = [row[0] for row in conn.execute("SELECT owner FROM jobqueue_processes")]
        assert owners == [new._core.store.owner]  # type: ignore[attr-defined]


class TestSharing:
    def test_queue_names_never_mix(self, config: final.Config, queues: list) -> None:
        ran: dict[str, list[str]] = {"a": [], "b": []}
        a = open_queue(queues, config, queue_name="a",
                       handler=lambda p: ran["a"].append(final.current_job().job.id))
        b = open_queue(queues, config, queue_name="b",
                       handler=lambda p: ran["b"].append(final.current_job().job.id))
        a.enqueue(final.Job("same-id"))
        b.enqueue(final.Job("same-id"))  # another queue: not a duplicate
        a.enqueue(final.Job("only-a"))
        assert a.wait("only-a", 10) is Status.COMPLETED
        assert b.wait("same-id", 10) is Status.COMPLETED
        assert a.wait("same-id", 10) is Status.COMPLETED
        assert b.status("only-a") is None
        assert sorted(ran["a"]) == ["only-a", "same-id"] and ran["b"] == ["same-id"]

    def test_an_id_is_unique_across_queues_sharing_it(self, config: final.Config,
                                                      queues: list) -> None:
        gate = Gate()
        first = open_queue(queues, config, handler=gate, num_workers=1)
        second = open_queue(queues, config, handler=None, handlers={"other": print})
        first.enqueue(final.Job("one"))
        assert gate.started.wait(10)
        # As the other process sees it: queued until its "started" reaches the database.
        with pytest.raises(DuplicateJob, match="'one' is already (queued|processing)"):
            second.enqueue(final.Job("one"))
        assert until(lambda: second.status("one") is Status.PROCESSING)
        gate.release.set()
        assert second.wait("one", 10) is Status.COMPLETED  # finished by the other process
        second.enqueue(final.Job("one"))  # a finished id starts a new life
        assert first.wait("one", 10) is Status.COMPLETED

    def test_a_producer_without_handlers_feeds_the_workers_elsewhere(
        self, config: final.Config, queues: list
    ) -> None:
        ran: list[str] = []
        producer = open_queue(queues, config, handler=None)
        worker = open_queue(queues, config, handler=lambda p: ran.append(p.decode()))
        producer.enqueue_many(final.Job(f"j{i}", b"%d" % i) for i in range(50))
        assert producer.join(10)  # joins the whole queue: the worker's jobs too
        assert sorted(ran, key=int) == [str(i) for i in range(50)]
        assert producer.metrics().completed == 0 and worker.metrics().completed == 50
        stats = producer.queue_stats()
        assert (stats.queued, stats.completed) == (0, 50)

    def test_requeue_and_dead_letters_from_another_process(
        self, config: final.Config, queues: list
    ) -> None:
        fails = threading.Event()
        fails.set()

        def flaky(payload: bytes) -> None:
            if fails.is_set():
                raise RuntimeError("down")

        runner = open_queue(queues, config, handler=flaky, max_retries=0)
        other = open_queue(queues, config, handler=None, handlers={"other": print})
        runner.enqueue(final.Job("bad"))
        assert other.wait("bad", 10) is Status.FAILED
        assert [info.id for info in other.dead_letters()] == ["bad"]
        assert other.info("bad").last_error == "RuntimeError: down"  # type: ignore[union-attr]
        fails.clear()
        other.requeue("bad")
        with pytest.raises(ValueError, match="not failed"):
            runner.requeue("bad")
        assert other.wait("bad", 10) is Status.COMPLETED
        assert other.dead_letters() == []
        with pytest.raises(KeyError):
            other.requeue("never")

    def test_queue_stats_count_every_process(self, config: final.Config,
                                             queues: list) -> None:
        gate = Gate()
        busy = open_queue(queues, config, handler=gate, num_workers=1)
        idle = open_queue(queues, config, handler=None, handlers={"other": print})
        busy.enqueue(final.Job("running", priority=Priority.HIGH))
        assert gate.started.wait(10)
        idle.enqueue_many(final.Job(f"q{i}", kind="other-kind") for i in range(3))
        # Another process's moves reach the database a batch later: a moment, not at once.
        assert until(lambda: idle.queue_stats().processing == 1)
        stats = idle.queue_stats()
        assert (stats.queued, stats.processing, stats.processes) == (3, 1, 1)
        assert stats.per_priority[Priority.HIGH][Status.PROCESSING] == 1
        gate.release.set()


class TestTransactionalEnqueue:
    def test_a_rolled_back_enqueue_never_runs_and_a_committed_one_does(
        self, config: final.Config, queues: list
    ) -> None:
        ran: list[str] = []
        queue = open_queue(queues, config, handler=lambda p: ran.append(final.current_job().job.id))
        with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
            conn.execute("CREATE TABLE orders (id text)")
            conn.commit()
            with pytest.raises(ZeroDivisionError), conn.transaction():
                conn.execute("INSERT INTO orders VALUES ('rolled')")
                queue.enqueue(final.Job("rolled"), connection=conn)
                1 / 0  # noqa: B018 - the caller's transaction fails
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES ('committed')")
                queue.enqueue_many([final.Job("committed"), final.Job("also")],
                                   connection=conn)
                # Not committed yet: invisible to the queue, and so not run.
                assert queue.status("committed") is None
            assert queue.wait("committed", 10) is Status.COMPLETED
            assert queue.wait("also", 10) is Status.COMPLETED
            assert conn.execute("SELECT id FROM orders").fetchall() == [("committed",)]
        assert queue.status("rolled") is None
        assert sorted(ran) == ["also", "committed"]

    def test_a_duplicate_undoes_only_the_enqueue(self, config: final.Config,
                                                 queues: list) -> None:
        queue = open_queue(queues, config, handler=None)  # holds nothing: stays queued
        queue.enqueue(final.Job("taken"))
        with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
            conn.execute("CREATE TABLE orders (id text)")
            conn.execute("INSERT INTO orders VALUES ('kept')")
            with pytest.raises(DuplicateJob, match="'taken' is already queued"):
                queue.enqueue_many([final.Job("fresh"), final.Job("taken")], connection=conn)
            conn.commit()  # the caller's own work survives the refused enqueue
            assert conn.execute("SELECT id FROM orders").fetchall() == [("kept",)]
        assert queue.status("fresh") is None

    def test_a_failed_transaction_or_a_wrong_object_is_refused(
        self, config: final.Config, queues: list
    ) -> None:
        queue = open_queue(queues, config)
        with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT * FROM missing")
            with pytest.raises(StoreError, match="roll it back"):
                queue.enqueue_many([final.Job("a"), final.Job("b")], connection=conn)
        with pytest.raises(TypeError, match="psycopg.Connection"):
            queue.enqueue(final.Job("c"), connection="postgresql://")


    def test_any_row_factory_and_only_this_database(
        self, config: final.Config, queues: list, postgres_server: object
    ) -> None:
        from psycopg.rows import dict_row

        queue = open_queue(queues, config, handler=None)
        with psycopg.connect(config.database_url, row_factory=dict_row) as conn:  # type: ignore[arg-type]
            queue.enqueue_many([final.Job("a"), final.Job("b")], connection=conn)
        assert queue.status("a") is Status.QUEUED
        other = postgres_server.new_database()  # type: ignore[attr-defined]
        final.JobQueue(dataclasses.replace(config, database_url=other)).close()
        with psycopg.connect(other) as conn, pytest.raises(
            ValueError, match="but this queue is in"
        ):
            queue.enqueue(final.Job("elsewhere"), connection=conn)


class TestLeases:
    def test_close_hands_held_jobs_to_the_other_processes(
        self, config: final.Config, queues: list
    ) -> None:
        gate = Gate()
        first = open_queue(queues, config, handler=gate, num_workers=1, shutdown_timeout=0.1,
                           prefetch=4)  # it holds four beyond the running one
        first.enqueue_many(final.Job(f"j{i}") for i in range(5))
        held(first, *(f"j{i}" for i in range(5)))
        assert gate.started.wait(10)
        abandoned = first.close()  # gives up: the running job and the four waiting
        assert len(abandoned) == 5
        gate.release.set()
        second = open_queue(queues, config, handler=lambda p: None)
        for i in range(5):  # claimed at once, not after a lease: they were handed back
            assert second.wait(f"j{i}", 10) is Status.COMPLETED

    def test_a_lost_lease_refuses_the_late_outcome(
        self, config: final.Config, queues: list, caplog: pytest.LogCaptureFixture
    ) -> None:
        gate = Gate()
        slow = open_queue(queues, config, handler=gate, num_workers=1, lease=0.3)
        slow.enqueue(final.Job("contested"))
        assert gate.started.wait(10)
        store = slow._core.store
        store.sync()  # its attempt is written: PROCESSING, held by this queue
        with store._writer.lock:  # as if the process stalled: no heartbeat, no write
            quick = open_queue(queues, config, handler=lambda p: None, lease=0.3,
                               base_delay=0.01)
            assert quick.wait("contested", 10) is Status.COMPLETED
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            gate.release.set()
            assert until(lambda: any("taken over by another process" in r.getMessage()
                                     for r in caplog.records))
        assert quick.info("contested").attempts == 2  # type: ignore[union-attr]
        assert quick.status("contested") is Status.COMPLETED

    def test_a_paused_queue_never_runs_its_old_life_of_a_reused_id(
        self, config: final.Config, queues: list, caplog: pytest.LogCaptureFixture
    ) -> None:
        gate = Gate()
        ran: list[tuple[str, str, bytes]] = []

        def recorder(where: str) -> final.Handler:
            return lambda payload: ran.append((where, final.current_job().job.id, payload))

        paused = open_queue(queues, config, handler=recorder("paused"), num_workers=1,
                            lease=0.5)
        paused.enqueue_with_handler(final.Job("blocker"), gate)
        assert gate.started.wait(10)
        paused.enqueue(final.Job("X", b"old"))
        held(paused, "X")  # queued behind the blocker
        store = paused._core.store
        store.sync()
        with store._writer.lock:  # paused: no heartbeat, no write; its claimer still claims
            other = open_queue(queues, config, handler=None, handlers={"": recorder("other")},
                               lease=0.5, base_delay=0.01)
            assert other.wait("X", 10) is Status.COMPLETED  # taken over, run there
            # A new life of the id, of a kind only the paused queue runs: it claims it
            # while still holding the old life, and must not take one for the other.
            with caplog.at_level(logging.INFO, logger="jobqueue"):
                other.enqueue(final.Job("X", b"new", kind="paused-only"))
                with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
                    assert until(lambda: "claimed a new life of it" in caplog.text or (
                        conn.execute("SELECT owner FROM jobqueue_jobs WHERE id = 'X'")
                        .fetchone()[0] == store.owner))
        gate.release.set()
        assert other.wait("X", 10) is Status.COMPLETED
        runs_of_x = sorted((payload, where) for where, job_id, payload in ran if job_id == "X")
        assert runs_of_x == [(b"new", "paused"), (b"old", "other")]  # each life once
        assert other.info("X").attempts == 1  # type: ignore[union-attr]

    def test_old_finished_jobs_are_deleted_past_the_retention(
        self, config: final.Config, queues: list
    ) -> None:
        queue = open_queue(queues, config, status_retention=10)
        queue.enqueue_many(final.Job(f"j{i:03}") for i in range(300))
        assert queue.join(30)
        queue._core.store.sync()
        with psycopg.connect(config.database_url) as conn:  # type: ignore[arg-type]
            kept = conn.execute("SELECT count(*) FROM jobqueue_jobs").fetchone()[0]
        assert 10 <= kept <= 11 + 300 // 10  # trimmed every retention/10 finishes


# -- many processes ------------------------------------------------------------------------


class Child:
    def __init__(self, mode: str, url: str, runlog: Path, workers: int = 2,
                 lease: float = 30.0, queue_name: str = "default",
                 max_retries: int | None = None) -> None:
        retries = [] if max_retries is None else [str(max_retries)]
        self.process = subprocess.Popen(
            [sys.executable, CHILD, mode, url, queue_name, str(workers), str(runlog),
             str(lease), *retries],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("started"), self.finish()
        self.owner = line.split()[1]

    def say(self, line: str) -> None:
        self.process.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]

    def finish(self, timeout: float = 60) -> str:
        _, err = self.process.communicate(timeout=timeout)
        return err


def runs(runlog: Path) -> collections.Counter[str]:
    if not runlog.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in runlog.read_text().splitlines())


def statuses(url: str) -> collections.Counter[str]:
    with psycopg.connect(url) as conn:
        return collections.Counter(dict(conn.execute(
            "SELECT status, count(*) FROM jobqueue_jobs GROUP BY 1").fetchall()))


def enqueue(url: str, count: int) -> None:
    config = final.Config(database_url=url, handler=None)
    with final.JobQueue(config) as producer:
        for start in range(0, count, 1000):
            producer.enqueue_many(final.Job(f"j{i:05}", kind="work")
                                  for i in range(start, min(count, start + 1000)))


@pytest.mark.slow
class TestManyProcesses:
    def test_four_processes_run_20000_jobs_exactly_once(self, database_url: str,
                                                         tmp_path: Path) -> None:
        enqueue(database_url, 20_000)
        runlog = tmp_path / "runs"
        children = [Child("drain", database_url, runlog) for _ in range(4)]
        errors = [child.finish(120) for child in children]
        assert [child.process.returncode for child in children] == [0, 0, 0, 0], errors
        ran = runs(runlog)
        assert len(ran) == 20_000 and set(ran.values()) == {1}
        assert statuses(database_url) == {"completed": 20_000}

    def test_a_killed_process_costs_at_most_the_jobs_it_held(self, database_url: str,
                                                              tmp_path: Path) -> None:
        enqueue(database_url, 4_000)
        runlog = tmp_path / "runs"
        children = [Child("drain", database_url, runlog, lease=1.0) for _ in range(3)]
        victim = children[0]
        assert until(lambda: sum(runs(runlog).values()) >= 1_000, timeout=60)
        victim.process.send_signal(signal.SIGKILL)
        victim.finish(10)
        with psycopg.connect(database_url) as conn:  # what it held when it died
            held_by_victim = conn.execute(
                "SELECT count(*) FROM jobqueue_jobs WHERE owner = %s", (victim.owner,)
            ).fetchone()[0]
        for child in children[1:]:
            assert child.finish(120) is not None
            assert child.process.returncode == 0
        ran = runs(runlog)
        assert len(ran) == 4_000
        assert statuses(database_url) == {"completed": 4_000}
        duplicates = sum(count - 1 for count in ran.values())
        assert duplicates <= held_by_victim

    @pytest.mark.parametrize("max_retries", [0, 2])
    def test_a_job_that_kills_every_process_ends_failed(
        self, database_url: str, tmp_path: Path, max_retries: int
    ) -> None:
        config = final.Config(database_url=database_url, handler=None)
        with final.JobQueue(config) as producer:
            producer.enqueue(final.Job("poison", kind="work"))
            producer.enqueue_many(final.Job(f"j{i}", kind="work") for i in range(20))
        runlog = tmp_path / "runs"
        exits = []
        for _ in range(8):
            child = Child("poison", database_url, runlog, workers=1, lease=0.5,
                          max_retries=max_retries)
            errors = child.finish(60)
            exits.append(child.process.returncode)
            if child.process.returncode == 0:
                break
        assert exits[-1] == 0, (exits, errors)
        # Its start is committed before its handler runs: every death counts, the first too.
        assert exits.count(3) == max_retries + 1, exits
        with psycopg.connect(database_url) as conn:
            status, attempts, error = conn.execute(
                "SELECT status, attempts, last_error FROM jobqueue_jobs WHERE id = 'poison'"
            ).fetchone()
        assert (status, attempts) == ("failed", max_retries + 1)
        assert error == "the process died while running it"
        assert set(runs(runlog)) == {f"j{i}" for i in range(20)}

    def test_a_process_stopped_past_its_lease_has_its_late_outcomes_refused(
        self, database_url: str, tmp_path: Path
    ) -> None:
        config = final.Config(database_url=database_url, handler=None)
        with final.JobQueue(config) as producer:
            producer.enqueue_many(final.Job(f"s{i}", kind="work") for i in range(10))
        runlog = tmp_path / "runs"
        stalled = Child("hold", database_url, runlog, workers=1, lease=1.0)
        assert until(lambda: sum(runs(runlog).values()) == 1)  # in a handler now
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM jobqueue_jobs WHERE owner = %s",
                                (stalled.owner,)).fetchone()[0] == 10
        stalled.process.send_signal(signal.SIGSTOP)
        try:
            taker = Child("drain", database_url, runlog, workers=2, lease=1.0)
            assert taker.finish(60) is not None and taker.process.returncode == 0
            assert statuses(database_url) == {"completed": 10}
        finally:
            stalled.process.send_signal(signal.SIGCONT)
        stalled.say("go")  # its handler raises now: an outcome it must not write
        stalled.say("quit")  # close(): the jobs it still holds are found taken, not run
        errors = stalled.finish()
        assert stalled.process.returncode == 0, errors
        assert statuses(database_url) == {"completed": 10}  # nothing overwritten
        assert "job 's0' was taken over by another process" in errors
        assert errors.count("is not run here: another process took it over") == 9, errors
        by_stalled = [line for line in runlog.read_text().splitlines()
                      if line.split()[1] == str(stalled.process.pid)]
        assert len(by_stalled) == 1  # the job it was running when stopped, and no other
        assert set(runs(runlog)) == {f"s{i}" for i in range(10)}


class TestCommandLine:
    """``jobqueue`` given a postgresql:// URL, while a queue's processes run."""

    @pytest.fixture
    def uri(self, database_url: str) -> str:
        name = database_url.rsplit("dbname=", 1)[1]
        host = database_url.split("host=", 1)[1].split()[0]
        return f"postgresql://postgres@/{name}?host={host}"

    def test_a_libpq_string_an_unknown_queue_and_idle_processes(
        self, database_url: str, config: final.Config, queues: list,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        idle = open_queue(queues, config, queue_name="emails")  # holds nothing
        other = open_queue(queues, config, queue_name="other", handler=None)
        other.enqueue(final.Job("waits", kind="nobody"))
        assert cli.main(["stats", database_url, "--queue", "emails", "--json"]) == 0
        processes = json.loads(capsys.readouterr().out)["processes"]
        assert [(p["owner"], p["held"], p["alive"]) for p in processes] == [
            (idle._core.store.owner, 0, True)]  # type: ignore[attr-defined]
        assert processes[0]["lease_until"] > processes[0]["heartbeat_at"]
        assert cli.main(["stats", database_url, "--queue", "emial"]) == 2
        err = capsys.readouterr().err
        assert "no queue 'emial'" in err and "'emails' (0 jobs), 'other' (1 job)" in err
        assert cli.main(["list", database_url, "--queue", "emial"]) == 2
        idle.close()  # says goodbye: no longer listed, and no job names the queue
        assert cli.main(["stats", database_url, "--queue", "emails"]) == 2
        assert "no queue 'emails'" in capsys.readouterr().err

    def test_purge_refuses_live_jobs_unless_forced(
        self, config: final.Config, queues: list, uri: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        queue = open_queue(queues, config, queue_name="q")
        queue.enqueue(final.Job("later"), delay=3600)
        queue.enqueue(final.Job("done"))
        assert queue.wait("done", 10) is Status.COMPLETED
        queue.close()
        assert cli.main(["purge", uri, "later", "--queue", "q"]) == 2
        assert "'later' (scheduled); purging deletes them unrun" in capsys.readouterr().err
        assert cli.main(["purge", uri, "--queue", "q", "--status", "scheduled"]) == 2
        capsys.readouterr()
        assert cli.main(["list", uri, "--queue", "q", "--newest"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in lines[1:]] == ["done", "later"]
        assert cli.main(["purge", uri, "--queue", "q", "--status", "scheduled",
                         "--status", "completed", "--force"]) == 0
        assert "purged 2 jobs" in capsys.readouterr().out

    def test_without_psycopg_the_command_says_how_to_install_it(self, uri: str) -> None:
        script = ("import sys; sys.modules['psycopg'] = None; from jobqueue.cli import main; "
                  "sys.exit(main(['stats', sys.argv[1]]))")
        done = subprocess.run([sys.executable, "-c", script, uri], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "needs psycopg 3: pip install 'psycopg[binary]>=3.1'" in done.stderr

    def test_stats_list_show_requeue_and_purge(
        self, config: final.Config, queues: list, uri: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        gate = Gate()
        fails = threading.Event()
        fails.set()

        def handler(payload: bytes) -> None:
            if payload == b"gate":
                gate(payload)
            elif fails.is_set():
                raise ConnectionError("https://hooks.example/down")

        queue = open_queue(queues, config, handler=handler, max_retries=0, queue_name="hooks")
        queue.enqueue(final.Job("held", b"gate"))
        assert gate.started.wait(10)
        queue.enqueue_many(final.Job(f"bad{i}") for i in range(2))
        for i in range(2):
            assert queue.wait(f"bad{i}", 10) is Status.FAILED
        queue._core.store.sync()

        assert cli.main(["stats", uri, "--queue", "hooks", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["by_status"]["failed"] == 2 and data["by_status"]["processing"] == 1
        assert data["queue"] == "hooks"
        assert [(p["owner"], p["held"], p["alive"]) for p in data["processes"]] == [
            (queue._core.store.owner, 1, True)]  # type: ignore[attr-defined]
        assert cli.main(["stats", uri, "--queue", "hooks"]) == 0
        out = capsys.readouterr().out
        assert "processes         1 alive" in out and "holds 1 job; last heartbeat" in out
        assert cli.main(["list", uri, "--queue", "hooks", "--status", "failed"]) == 0
        assert "ConnectionError" in capsys.readouterr().out
        assert cli.main(["show", uri, "bad0", "--queue", "hooks"]) == 0
        assert "failed" in capsys.readouterr().out
        assert cli.main(["show", uri, "bad0"]) == 2  # another queue: not there
        assert "no job 'bad0' in queue 'default'" in capsys.readouterr().err

        # A job a process is running is neither requeued nor purged from under it.
        assert cli.main(["requeue", uri, "held", "--queue", "hooks"]) == 2
        assert "'held' is processing and held by process" in capsys.readouterr().err
        assert cli.main(["purge", uri, "held", "--queue", "hooks"]) == 2
        assert "held by process" in capsys.readouterr().err
        assert queue.status("held") is Status.PROCESSING

        fails.clear()
        assert cli.main(["requeue", uri, "--queue", "hooks", "--all-failed"]) == 0
        assert "requeued 2 jobs" in capsys.readouterr().out
        for i in range(2):  # the running queue heard of them, and ran them
            assert queue.wait(f"bad{i}", 10) is Status.COMPLETED
        gate.release.set()
        assert queue.wait("held", 10) is Status.COMPLETED
        queue._core.store.sync()
        assert cli.main(["purge", uri, "--queue", "hooks", "--completed"]) == 0
        assert "purged 3 jobs" in capsys.readouterr().out
        assert queue.status("held") is None

    def test_bad_urls_are_one_line(self, uri: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["stats", uri]) == 2  # a database no queue has used
        assert "holds no jobqueue tables" in capsys.readouterr().err
        assert cli.main(["stats", f"postgresql://postgres@/none?host={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("jobqueue: error: cannot connect") and err.count("\n") <= 1

