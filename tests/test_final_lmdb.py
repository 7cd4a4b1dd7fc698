"""The LMDB store: persistence, crashes (really killed), ownership, bad paths, hygiene.

The contract shared with the memory store is tested in test_final.py over both stores; this
file tests what only a persistent store promises.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from jobqueue import final
from jobqueue.final import admin
from jobqueue.final.admin import StoreReader
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.lmdb import tables as _lmdb_files
from jobqueue.final.stores.lmdb import wal as _wal
from jobqueue.final.stores.lmdb import writer as _lmdb_writer
from jobqueue.final.stores.lmdb.store import LmdbStore

CHILD = str(Path(__file__).with_name("lmdb_child.py"))


def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "jobs")


def leave_jobs_stored(path: str, jobs: list[final.Job], **config: object) -> None:
    """Enqueue jobs into a store and close it with them unfinished (a held handler)."""
    started = threading.Event()

    def held(payload: bytes) -> None:
        started.set()
        if final.current_job().wait(10):
            raise RuntimeError("cancelled by close()")  # unfinished: stays stored

    queue = final.JobQueue(
        final.Config(num_workers=1, handler=held, persist_path=path, **config)  # type: ignore[arg-type]
    )
    try:
        for job in jobs:
            queue.enqueue(job)
        assert started.wait(5)
    finally:
        abandoned = queue.close(timeout=0.05)
    assert sorted(abandoned) == sorted(job.id for job in jobs)


def add(store: LmdbStore, records: list[JobRecord]) -> None:
    """Give a store new jobs as a queue does: add(), then commit() if it asks for one."""
    ticket = store.add(store.prepare(records))
    if ticket is not None:
        store.commit(ticket)


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Wait for a state no event announces (a status change inside the queue)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def run_child(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, CHILD, *args], capture_output=True, text=True, timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def stored_backlog(path: str, records: list[JobRecord]) -> None:
    """Leave jobs in a store as a run that stopped would have: queued, unclaimed."""
    store = LmdbStore(path)
    try:
        add(store, records)
    finally:
        store.close()


def queued(job_id: str, seq: int, priority: final.Priority = final.Priority.MEDIUM,
           kind: str = "") -> JobRecord:
    return JobRecord(job_id, job_id.encode(), priority, kind, None, 0.0, final.Status.QUEUED,
                     0, None, None, None, None, seq)


class TestPersistence:
    def test_jobs_survive_a_clean_restart(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        jobs = [final.Job(f"job-{i}", f"payload-{i}".encode()) for i in range(5)]
        leave_jobs_stored(path, jobs)

        ran: list[bytes] = []
        config = final.Config(num_workers=1, handler=ran.append, persist_path=path)
        with final.JobQueue(config) as queue:
            assert queue.join(timeout=10)
            statuses = [queue.status(job.id) for job in jobs]
        assert sorted(ran) == sorted(job.payload for job in jobs)
        assert statuses == [final.Status.COMPLETED] * 5

    def test_recovery_keeps_priority_and_arrival_order(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        # The first job is the one the held handler runs; the rest stay queued in order.
        first = final.Job("first", b"first", priority=final.Priority.HIGH)
        rest = [
            final.Job(f"{p.name}-{i}", f"{p.name}-{i}".encode(), priority=p)
            for i in range(3)
            for p in (final.Priority.LOW, final.Priority.MEDIUM, final.Priority.HIGH)
        ]
        leave_jobs_stored(path, [first, *rest])

        ran: list[bytes] = []
        # One worker, and the whole backlog loaded before it picks: strict order shows.
        weights = {final.Priority.HIGH: 100, final.Priority.MEDIUM: 100, final.Priority.LOW: 1}
        config = final.Config(num_workers=1, handler=ran.append, persist_path=path,
                              weights=weights)
        with final.JobQueue(config) as queue:
            assert queue.join(timeout=10)
        high = [j.payload for j in rest if j.priority is final.Priority.HIGH]
        medium = [j.payload for j in rest if j.priority is final.Priority.MEDIUM]
        low = [j.payload for j in rest if j.priority is final.Priority.LOW]
        assert ran == [b"first", *high, *medium, *low]

    def test_retry_state_survives_a_restart(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        failed = threading.Event()

        def fail(payload: bytes) -> None:
            failed.set()
            raise RuntimeError("down for maintenance")

        config = final.Config(num_workers=1, handler=fail, persist_path=path, base_delay=30.0)
        with final.JobQueue(config) as queue:
            queue.enqueue(final.Job("retry-me", b"x"))
            assert failed.wait(5)
            # The failure is recorded as the handler returns; the retry then waits 30 s.
            assert until(lambda: queue.status("retry-me") is final.Status.RETRYING)
        # close() leaves a retrying job stored instead of waiting 30 s for it.
        with StoreReader(path) as reader:
            stored = reader.get("retry-me")
        assert stored is not None
        assert stored.status is final.Status.RETRYING
        assert stored.attempts == 1
        assert stored.last_error == "RuntimeError: down for maintenance"
        assert stored.due_at is not None and stored.due_at >= stored.started_at + 30.0  # type: ignore[operator]

        ran: list[bytes] = []
        config = final.Config(num_workers=1, handler=ran.append, persist_path=path)
        with final.JobQueue(config) as queue:
            info = queue.info("retry-me")
            assert info is not None
            assert (info.status, info.attempts) == (final.Status.RETRYING, 1)
            assert queue.join(timeout=0.2) is False  # still waiting for its due time
            assert ran == []

    def test_due_retry_runs_after_restart_with_its_attempts(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        failed = threading.Event()

        def fail(payload: bytes) -> None:
            failed.set()
            raise RuntimeError("flaky")

        config = final.Config(num_workers=1, handler=fail, persist_path=path, base_delay=0.01)
        queue = final.JobQueue(config)
        queue.enqueue(final.Job("flaky", b"x"))
        assert failed.wait(5)
        queue.close(timeout=0)
        ran: list[bytes] = []
        config = final.Config(num_workers=1, handler=ran.append, persist_path=path)
        with final.JobQueue(config) as queue:
            assert queue.wait("flaky", timeout=10) is final.Status.COMPLETED
            info = queue.info("flaky")
        assert ran == [b"x"]
        assert info is not None and info.attempts >= 2

    def test_finished_jobs_and_dead_letters_survive_a_restart(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)

        def handler(payload: bytes) -> None:
            if payload == b"bad":
                raise ValueError("bad payload")

        config = final.Config(handler=handler, persist_path=path, max_retries=0)
        with final.JobQueue(config) as queue:
            queue.enqueue(final.Job("good", b"good"))
            queue.enqueue(final.Job("bad", b"bad"))
            assert queue.join(timeout=10)
        ran: list[bytes] = []
        config = final.Config(handler=ran.append, persist_path=path)
        with final.JobQueue(config) as queue:
            assert queue.status("good") is final.Status.COMPLETED
            assert [info.id for info in queue.dead_letters()] == ["bad"]
            queue.requeue("bad")
            assert queue.wait("bad", timeout=10) is final.Status.COMPLETED
            assert queue.dead_letters() == []
        assert ran == [b"bad"]

    def test_retention_prunes_the_oldest_finished_records(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        config = final.Config(num_workers=1, handler=lambda p: None, persist_path=path,
                              status_retention=3)
        with final.JobQueue(config) as queue:
            for i in range(10):
                queue.enqueue(final.Job(f"job-{i}"))
                queue.wait(f"job-{i}", timeout=10)
        with StoreReader(path) as reader:
            kept = sorted(record.id for record in reader.records())
        assert kept == ["job-7", "job-8", "job-9"]

    def test_retention_forgets_by_finish_time_not_by_the_order_told(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # One batch that learns of a new job before the end of an older one (the older one's
        # move waits among the events until the batch is taken): the job that finished last
        # is the one a retention of 1 keeps. (Under load, the sequential test above met this.)
        monkeypatch.setattr(_lmdb_writer, "_FLUSH_LINGER", 30.0)  # one batch, taken by flush()
        path = store_path(tmp_path)
        store = LmdbStore(path, retention=1)
        try:
            add(store, [queued("older", 1)])
            store.flush()
            store.finished(queued("older", 1)._replace(status=final.Status.COMPLETED,
                                                      finished_at=1.0))
            add(store, [queued("newer", 2)])
            store.finished(queued("newer", 2)._replace(status=final.Status.COMPLETED,
                                                      finished_at=2.0))
            store.flush()
        finally:
            store.close()
        with StoreReader(path) as reader:
            assert [record.id for record in reader.records()] == ["newer"]


class TestCrash:
    """Children killed with SIGKILL mid-run; every job they acknowledged must run."""

    KILLS = 4
    JOBS_PER_ROUND = 3000

    @pytest.mark.parametrize("fsync", ["nosync", "fsync"])
    def test_no_acknowledged_job_is_lost(self, tmp_path: Path, fsync: str) -> None:
        path = store_path(tmp_path)
        runlog = str(tmp_path / "runs.log")
        acknowledged: list[str] = []
        rng = random.Random()
        for round_number in range(self.KILLS):
            child = subprocess.Popen(
                [sys.executable, CHILD, "produce", path, runlog, fsync,
                 f"r{round_number}", str(self.JOBS_PER_ROUND)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdout is not None
            kill_after = rng.randrange(200, self.JOBS_PER_ROUND // 2)
            for _ in range(kill_after):
                line = child.stdout.readline()
                if not line:
                    break
                acknowledged.append(line.strip())
            child.send_signal(signal.SIGKILL)
            rest, _ = child.communicate(timeout=30)
            acknowledged.extend(rest.split())  # printed before the kill landed
            assert child.returncode == -signal.SIGKILL
            with open(runlog, "a") as log:
                log.write("KILLED\n")

        drained = run_child("drain", path, runlog, fsync)
        assert drained.returncode == 0, drained.stderr
        assert drained.stdout.split() == ["drained"]

        with open(runlog) as log:
            lines = log.read().split()
        runs = Counter(line for line in lines if line != "KILLED")
        lost = [job_id for job_id in acknowledged if job_id not in runs]
        assert lost == []
        # A job runs twice only across a crash: never twice within one process's life.
        lifetimes: list[Counter[str]] = [Counter()]
        for line in lines:
            if line == "KILLED":
                lifetimes.append(Counter())
            else:
                lifetimes[-1][line] += 1
        twice_in_one_life = [j for life in lifetimes for j, n in life.items() if n > 1]
        assert twice_in_one_life == []
        # The kills did land mid-stream: acknowledged jobs were left for a later life.
        run_in_own_life = sum(
            1 for number, life in enumerate(lifetimes[: self.KILLS])
            for job_id in life if job_id.startswith(f"r{number}-")
        )
        assert run_in_own_life < len(acknowledged)
        # Each crash re-runs at most what was in flight or in an unwritten completion batch.
        duplicates = sum(n - 1 for n in runs.values())
        assert duplicates <= self.KILLS * self.JOBS_PER_ROUND // 2


class TestCancelCrash:
    """A cancel is in the log before cancel() returns: a crash right after it holds it."""

    @pytest.mark.parametrize("fsync", ["nosync", "fsync"])
    def test_a_job_cancelled_just_before_a_crash_never_runs(
        self, tmp_path: Path, fsync: str
    ) -> None:
        path = store_path(tmp_path)
        runlog = str(tmp_path / "runs.log")
        child = run_child("cancel-and-die", path, runlog, fsync, "c", "50")
        assert child.returncode == -signal.SIGKILL, child.stderr
        cancelled = child.stdout.split()
        assert len(cancelled) == 50
        drained = run_child("drain", path, runlog, fsync)
        assert drained.returncode == 0, drained.stderr
        ran = Path(runlog).read_text().split()
        assert ran == ["blocker"]  # the held job ran again; no cancelled one did
        with StoreReader(path) as reader:
            assert {reader.get(job_id).status for job_id in cancelled} == {  # type: ignore[union-attr]
                final.Status.CANCELLED}


class TestCancelLog:
    def test_a_cancel_the_full_log_cannot_take_is_said_and_kept(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = store_path(tmp_path)
        started = threading.Event()

        def held(payload: bytes) -> None:
            started.set()
            final.current_job().wait(10)

        queue = final.JobQueue(final.Config(persist_path=path, handler=held, num_workers=1))
        queue.enqueue(final.Job("blocker"))
        assert started.wait(10)
        queue.enqueue(final.Job("x"))
        log = queue._core.store._writer.log  # type: ignore[attr-defined]

        def full(frames: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(log, "append", full)
        with pytest.raises(final.StoreError, match="is cancelled, but the cancel could not be "
                                                   "written to the log"):
            queue.cancel("x")
        assert queue.status("x") is final.Status.CANCELLED  # in memory, and in the batch
        monkeypatch.undo()
        queue.close(timeout=0.1)
        with StoreReader(path) as reader:
            assert reader.get("x").status is final.Status.CANCELLED  # type: ignore[union-attr]


class TestPrivacy:
    def test_a_new_store_is_its_owners_alone(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        with final.JobQueue(final.Config(persist_path=path, handler=lambda p: None)) as jq:
            jq.enqueue(final.Job("a", b"ada@example.com"))
            assert jq.wait("a", 10) is final.Status.COMPLETED
            modes = {name: os.stat(os.path.join(path, name)).st_mode & 0o777
                     for name in os.listdir(path)}
        assert os.stat(path).st_mode & 0o777 == 0o700
        assert set(modes.values()) == {0o600}, modes
        assert {"data.mdb", "lock.mdb", "owner.lock", "attempts.ring"} <= set(modes)

    @pytest.mark.parametrize("name", ["lock.mdb", "data.mdb", "owner.lock"])
    def test_a_symlinked_store_file_is_refused(self, tmp_path: Path, name: str) -> None:
        path = store_path(tmp_path)
        final.JobQueue(final.Config(persist_path=path, handler=print)).close()
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        os.remove(os.path.join(path, name))
        os.symlink(victim, os.path.join(path, name))
        with pytest.raises(final.StoreError, match=f"store file '{name}' in .* is a symbolic "
                                                   "link: refused"):
            final.JobQueue(final.Config(persist_path=path, handler=print))
        with pytest.raises(final.StoreError, match="is a symbolic link"):
            StoreReader(path)
        assert victim.read_bytes() == b"precious"


class TestWriteAheadLog:
    def test_completed_jobs_in_a_leftover_log_do_not_run_again(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        runlog = str(tmp_path / "runs.log")
        died = run_child("finish-and-die", path, runlog, "nosync", "done", "500")
        assert died.returncode == 0, died.stderr
        assert _wal.segment_paths(path), "the child should have left its log behind"
        drained = run_child("drain", path, runlog)
        assert drained.returncode == 0, drained.stderr
        assert _wal.segment_paths(path) == []  # replayed into LMDB, then removed
        with open(runlog) as log:
            runs = Counter(log.read().split())
        assert len(runs) == 500
        assert max(runs.values()) == 1

    def test_jobs_only_in_the_log_are_readable_and_replayed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = store_path(tmp_path)
        record = JobRecord("logged-only", b"p", final.Priority.HIGH, "", None, 0.0,
                           final.Status.QUEUED, 0, None, None, None, None, 1)

        def lmdb_down(self: _lmdb_files.Tables, *args: object) -> object:
            raise lmdb.DiskError("mdb_txn_commit: Input/output error")

        with monkeypatch.context() as patch:
            patch.setattr(_lmdb_files.Tables, "write_batch", lmdb_down)
            store = LmdbStore(path)
            add(store, [record])
            store.close()  # cannot write LMDB: the log keeps the job
        assert _wal.segment_paths(path)
        with StoreReader(path) as reader:  # (one process cannot open an env twice)
            assert reader.get("logged-only") == record
            assert [r.id for r in reader.records()] == ["logged-only"]
        ran: list[bytes] = []
        with final.JobQueue(final.Config(handler=ran.append, persist_path=path)) as queue:
            assert queue.wait("logged-only", timeout=10) is final.Status.COMPLETED
        assert ran == [b"p"]

    def test_torn_frame_ends_a_segment(self, tmp_path: Path) -> None:
        segment = tmp_path / "wal-00000001.log"
        first, second = b"first record", b"second record"
        torn = _wal.frame(second)[:-3]
        segment.write_bytes(_wal.frame(first) + torn + bytes(64))
        assert [r for _, r in _wal.read_segment(str(segment))] == [first]

    def test_damaged_frame_ends_a_segment(self, tmp_path: Path) -> None:
        segment = tmp_path / "wal-00000001.log"
        good, bad = _wal.frame(b"good"), bytearray(_wal.frame(b"flipped bits"))
        bad[-1] ^= 0xFF
        segment.write_bytes(good + bytes(bad) + _wal.frame(b"after") + bytes(64))
        assert [r for _, r in _wal.read_segment(str(segment))] == [b"good"]


class TestClosedStore:
    def test_status_after_close_says_the_store_is_closed(self, tmp_path: Path) -> None:
        queue = final.JobQueue(final.Config(handler=print, persist_path=store_path(tmp_path)))
        queue.close()
        with pytest.raises(final.StoreError, match="is closed"):
            queue.status("anything")


class TestStoreLocked:
    def test_second_queue_in_the_same_process_is_refused(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        config = final.Config(handler=lambda p: None, persist_path=path)
        with final.JobQueue(config):
            with pytest.raises(final.StoreLocked,
                               match=rf"another JobQueue of this process \({os.getpid()}\)"
                               ) as caught:
                final.JobQueue(config)
        assert caught.value.owner_pid == os.getpid()
        assert path in str(caught.value)
        # Free again once closed.
        with final.JobQueue(config):
            pass

    def test_queue_in_another_process_is_refused(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        runlog = str(tmp_path / "runs.log")
        child = subprocess.Popen(
            [sys.executable, CHILD, "hold", path, runlog],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            config = final.Config(handler=lambda p: None, persist_path=path)
            with pytest.raises(final.StoreLocked, match=rf"process {child.pid}"):
                final.JobQueue(config)
            assert admin.owner_pid(path) == child.pid
        finally:
            child.communicate(input="", timeout=30)
        assert child.returncode == 0
        assert admin.owner_pid(path) is None

    def test_store_can_be_read_while_owned(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        leave_jobs_stored(path, [final.Job("waiting", b"w")])
        runlog = str(tmp_path / "runs.log")
        child = subprocess.Popen(
            [sys.executable, CHILD, "hold", path, runlog],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            with StoreReader(path) as reader:
                assert reader.owner_pid() == child.pid
                assert {r.id for r in reader.records()} == {"waiting"}
        finally:
            child.communicate(input="", timeout=30)


class TestBadPath:
    def test_regular_file(self, tmp_path: Path) -> None:
        path = tmp_path / "file"
        path.write_text("not a store")
        with pytest.raises(final.StoreError, match="is not a directory"):
            final.JobQueue(final.Config(handler=print, persist_path=path))

    def test_cannot_be_created(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "jobs"
        with pytest.raises(final.StoreError, match="cannot create store directory"):
            final.JobQueue(final.Config(handler=print, persist_path=path))

    def test_directory_with_other_files(self, tmp_path: Path) -> None:
        (tmp_path / "notes.txt").write_text("mine")
        with pytest.raises(final.StoreError, match="is not a jobqueue store"):
            final.JobQueue(final.Config(handler=print, persist_path=tmp_path))
        assert os.listdir(tmp_path) == ["notes.txt"]  # nothing written into it

    def test_someone_elses_lmdb(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        env = lmdb.open(path)
        with env.begin(write=True) as txn:
            txn.put(b"their", b"data")
        env.close()
        with pytest.raises(final.StoreError, match="is not a jobqueue store"):
            final.JobQueue(final.Config(handler=print, persist_path=path))
        env = lmdb.open(path)
        with env.begin() as txn:
            assert list(txn.cursor()) == [(b"their", b"data")]  # left as it was
        env.close()

    def test_newer_format(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        with final.JobQueue(final.Config(handler=print, persist_path=path)):
            pass
        env = lmdb.open(path, max_dbs=8)
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"format", b"99", db=meta)
        env.close()
        with pytest.raises(final.StoreError, match="written by a newer jobqueue"):
            final.JobQueue(final.Config(handler=print, persist_path=path))

    def test_not_a_path(self) -> None:
        with pytest.raises(TypeError, match="persist_path"):
            final.Config(persist_path=42)  # type: ignore[arg-type]


class TestCorruptRecord:
    def test_corrupt_record_is_set_aside_and_the_rest_run(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = store_path(tmp_path)
        jobs = [final.Job(f"job-{i}", f"p{i}".encode()) for i in range(4)]
        leave_jobs_stored(path, jobs)
        env = lmdb.open(path, max_dbs=8)
        jobs_db = env.open_db(b"jobs")
        with env.begin(write=True) as txn:
            txn.put(b"job-2", b"\x01garbage", db=jobs_db)
        env.close()

        ran: list[bytes] = []
        config = final.Config(num_workers=1, handler=ran.append, persist_path=path)
        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            with final.JobQueue(config) as queue:
                assert queue.join(timeout=10)
        assert sorted(ran) == [b"p0", b"p1", b"p3"]
        assert any("job-2" in r.getMessage() and "set aside" in r.getMessage()
                   for r in caplog.records)
        env = lmdb.open(path, max_dbs=8)
        with env.begin() as txn:
            assert txn.get(b"job-2", db=env.open_db(b"corrupt", txn=txn)) == b"\x01garbage"
        env.close()
        # Set aside once: the next start neither runs nor logs it again.
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="jobqueue"):
            with final.JobQueue(config) as queue:
                assert queue.join(timeout=10)
        assert not caplog.records


class TestMapGrowth:
    def test_map_grows_when_full(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_lmdb_files, "INITIAL_MAP_SIZE", 1 << 20)
        path = store_path(tmp_path)
        payload = os.urandom(64 << 10)
        ran: list[int] = []
        release = threading.Event()

        def handler(data: bytes) -> None:
            release.wait(10)
            ran.append(len(data))

        config = final.Config(num_workers=1, handler=handler, persist_path=path,
                              queue_size=100)
        with final.JobQueue(config) as queue:
            queue.enqueue_many([final.Job(f"big-{i}", payload) for i in range(60)])
            queue.dead_letters()  # writes the 60 queued jobs, payloads and all, to LMDB now
            release.set()
            assert queue.join(timeout=30)
        assert ran == [len(payload)] * 60
        with StoreReader(path) as reader:
            assert reader.map_size() > 1 << 20

    def test_full_disk_fails_enqueue_and_keeps_accepted_jobs(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_wal, "SEGMENT_SIZE", 4096)
        path = store_path(tmp_path)
        release = threading.Event()
        config = final.Config(num_workers=1, handler=lambda p: release.wait(10),
                              persist_path=path)
        queue = final.JobQueue(config)
        try:
            queue.enqueue(final.Job("accepted", b"a"))

            def no_space(fd: int, offset: int, length: int) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            with monkeypatch.context() as patch:
                patch.setattr(os, "posix_fallocate", no_space)
                # Too big for the current log segment: a new one must be allocated.
                with pytest.raises(final.StoreError, match="No space left on device"):
                    queue.enqueue(final.Job("refused", b"r" * 8192))
            assert queue.status("refused") is None
            assert queue.status("accepted") in (final.Status.QUEUED, final.Status.PROCESSING)
            queue.enqueue(final.Job("after", b"r" * 8192))  # the disk has room again
        finally:
            release.set()
            queue.close()
        with StoreReader(path) as reader:
            assert {r.id: r.status for r in reader.records()} == {
                "accepted": final.Status.COMPLETED,
                "after": final.Status.COMPLETED,
            }

    def test_failing_lmdb_writes_are_retried_from_the_log(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setattr(_lmdb_writer, "_RETRY_AFTER_ERROR", 0.01)
        path = store_path(tmp_path)
        failed = threading.Event()
        real_write_batch = _lmdb_files.Tables.write_batch

        def disk_error(self: _lmdb_files.Tables, *args: object) -> object:
            failed.set()
            raise lmdb.DiskError("mdb_txn_commit: No space left on device")

        ran: list[bytes] = []
        config = final.Config(num_workers=1, handler=ran.append, persist_path=path)
        with caplog.at_level(logging.ERROR, logger="jobqueue"), final.JobQueue(config) as queue:
            monkeypatch.setattr(_lmdb_files.Tables, "write_batch", disk_error)
            queue.enqueue(final.Job("logged", b"l"))  # durable in the log all the same
            assert failed.wait(5)
            monkeypatch.setattr(_lmdb_files.Tables, "write_batch", real_write_batch)
            assert queue.wait("logged", timeout=10) is final.Status.COMPLETED
        assert ran == [b"l"]
        assert any("No space left on device" in r.getMessage() for r in caplog.records)
        with StoreReader(path) as reader:
            assert {r.id: r.status for r in reader.records()} == {
                "logged": final.Status.COMPLETED
            }


class TestRecoveredWithoutHandler:
    def test_parked_until_registered(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = store_path(tmp_path)
        jobs = [final.Job(f"resize-{i}", b"img", kind="resize") for i in range(3)]
        leave_jobs_stored(path, jobs)

        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            queue = final.JobQueue(final.Config(num_workers=1, persist_path=path))
            try:
                assert queue.join(timeout=10)  # nothing it can run
                assert queue.status("resize-1") in (final.Status.QUEUED, final.Status.PROCESSING)
                warnings = [r for r in caplog.records if "no handler" in r.getMessage()]
                assert len(warnings) == 1
                with pytest.raises(final.DuplicateJob):
                    queue.enqueue_with_handler(jobs[0], lambda p: None)

                ran: list[bytes] = []
                queue.register("resize", ran.append)
                for job in jobs:
                    assert queue.wait(job.id, timeout=10) is final.Status.COMPLETED
            finally:
                queue.close()
        assert ran == [b"img"] * 3

    def test_parked_jobs_stay_stored_for_the_next_start(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        leave_jobs_stored(path, [final.Job("mail-1", b"m", kind="email")])
        with final.JobQueue(final.Config(persist_path=path)) as queue:
            assert queue.join(timeout=10)
        ran: list[bytes] = []
        config = final.Config(persist_path=path, handlers={"email": ran.append})
        with final.JobQueue(config) as queue:
            assert queue.wait("mail-1", timeout=10) is final.Status.COMPLETED
        assert ran == [b"m"]


class TestLargeBacklogRestart:
    def test_backlog_is_streamed_into_bounded_memory(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        total = 50_000
        store = LmdbStore(path)
        try:
            for start in range(0, total, 10_000):
                add(store, [
                    JobRecord(f"job-{i}", b"x" * 16, final.Priority(i % 3), "", None, 0.0,
                              final.Status.QUEUED, 0, None, None, None, None, i + 1)
                    for i in range(start, start + 10_000)
                ])
        finally:
            store.close()

        queue_size = 50
        samples: list[tuple[int, int]] = []
        holder: list[final.JobQueue] = []
        count = 0

        def sample(payload: bytes) -> None:
            nonlocal count
            count += 1
            if count % 997 == 0:
                metrics = holder[0].metrics()
                samples.append((metrics.queued, len(holder[0]._core.table)))

        config = final.Config(num_workers=2, handler=sample, persist_path=path,
                              queue_size=queue_size)
        queue = final.JobQueue(config)
        holder.append(queue)
        try:
            assert queue.join(timeout=50)
            assert queue.metrics().completed == total
        finally:
            queue.close()
        assert len(samples) >= 40
        assert max(queued for queued, _ in samples) <= 3 * queue_size
        assert max(active for _, active in samples) <= 3 * queue_size + 2


class TestBacklog:
    """A stored backlog reaches the queue by claims: weighted, and parked kinds not lost."""

    def test_a_stored_flood_of_high_does_not_hold_low_back(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        high = [queued(f"high-{i}", i + 1, final.Priority.HIGH) for i in range(500)]
        low = [queued(f"low-{i}", 501 + i, final.Priority.LOW) for i in range(5)]
        stored_backlog(path, high + low)
        ran: list[str] = []
        config = final.Config(num_workers=1, queue_size=10, handler=lambda p: ran.append(
            p.decode()), persist_path=path)
        with final.JobQueue(config) as queue:
            assert queue.join(timeout=30)
        assert len(ran) == 505
        first_low = next(i for i, job_id in enumerate(ran) if job_id.startswith("low"))
        # Within two rounds of the weights (8 HIGH, 3 MEDIUM, 1 LOW): what ran before the
        # claimer reached LOW, then at most a round's HIGH.
        assert first_low <= 2 * sum(final.DEFAULT_WEIGHTS.values())
        assert ran[0].startswith("high")  # and HIGH still goes first

    def test_high_before_low_when_the_backlog_outgrows_the_queue(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        records = [queued(f"{p.name}-{i}", 1 + i * 3 + n, p)
                   for i in range(20) for n, p in enumerate(final.Priority)]
        stored_backlog(path, records)
        ran: list[str] = []
        config = final.Config(num_workers=1, queue_size=5, persist_path=path,
                              handler=lambda p: ran.append(p.decode().split("-")[0]))
        with final.JobQueue(config) as queue:
            assert queue.join(timeout=30)
        assert ran[0] == "HIGH"
        assert ran[:12].count("LOW") <= 2  # a round of the weights is 8 HIGH, 3 MEDIUM, 1 LOW

        def mean_place(priority: str) -> float:
            return sum(i for i, name in enumerate(ran) if name == priority) / 20

        assert mean_place("HIGH") < mean_place("MEDIUM") < mean_place("LOW")

    def test_parked_jobs_all_run_once_registered(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        stored_backlog(path, [queued(f"resize-{i}", i + 1, kind="resize") for i in range(6)])
        ran: list[bytes] = []
        queue = final.JobQueue(final.Config(num_workers=1, queue_size=2, persist_path=path))
        try:
            assert queue.join(timeout=10)  # nothing it can run yet
            queue.register("resize", ran.append)
            assert queue.join(timeout=10)
            assert len(ran) == 6  # join() waited for the stored ones too
            assert queue.wait("resize-5", timeout=10) is final.Status.COMPLETED
        finally:
            queue.close()

    def test_a_new_job_with_a_stored_id_is_refused(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        stored_backlog(path, [queued("mail-1", 1, kind="email")])
        queue = final.JobQueue(final.Config(num_workers=1, persist_path=path))
        try:
            with pytest.raises(final.DuplicateJob, match="'mail-1' is already queued"):
                queue.enqueue_with_handler(final.Job("mail-1", kind="email"), print)
            release = threading.Event()
            queue.register("email", lambda p: release.wait(10))
            # Claimed now, or about to be: either way the id is taken until the job ends.
            with pytest.raises(final.DuplicateJob, match="'mail-1'"):
                queue.enqueue_with_handler(final.Job("mail-1", kind="email"), print)
            release.set()
            assert queue.wait("mail-1", timeout=10) is final.Status.COMPLETED
        finally:
            queue.close()

    def test_claims_read_the_store_without_the_queue_mutex(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = store_path(tmp_path)
        stored_backlog(path, [queued(f"high-{i}", i + 1, final.Priority.HIGH) for i in range(3)]
                       + [queued("low-0", 4, final.Priority.LOW)])
        real_claim = LmdbStore.claim
        reading, release = threading.Event(), threading.Event()

        def slow_claim(self: LmdbStore, priority: final.Priority, *args: object) -> object:
            if priority is final.Priority.LOW:
                reading.set()
                release.wait(10)
            return real_claim(self, priority, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(LmdbStore, "claim", slow_claim)
        ran: list[bytes] = []
        all_high = threading.Event()

        def handler(payload: bytes) -> None:
            ran.append(payload)
            if len(ran) == 3:
                all_high.set()

        queue = final.JobQueue(final.Config(num_workers=1, handler=handler, persist_path=path))
        try:
            assert reading.wait(5)  # the claimer is reading LOW from the store...
            assert all_high.wait(5)  # ...and the worker ran HIGH meanwhile
            release.set()
            assert queue.join(timeout=10)
            assert ran[-1] == b"low-0"
        finally:
            release.set()
            queue.close()


    def test_a_kind_registered_during_a_claim_is_claimed_too(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = store_path(tmp_path)
        stored_backlog(path, [queued("email-0", 1, kind="email")]
                       + [queued(f"resize-{i}", i + 2, kind="resize") for i in range(3)])
        real_claim = LmdbStore.claim
        reading, release = threading.Event(), threading.Event()

        def held_claim(self: LmdbStore, priority: final.Priority, *args: object) -> object:
            if priority is final.Priority.MEDIUM and not reading.is_set():
                reading.set()
                release.wait(10)
            return real_claim(self, priority, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(LmdbStore, "claim", held_claim)
        ran: list[bytes] = []
        queue = final.JobQueue(final.Config(num_workers=1, persist_path=path,
                                            handlers={"email": ran.append}))
        try:
            assert reading.wait(5)  # claiming the jobs of kind "email"...
            queue.register("resize", ran.append)  # ...when "resize" gets a handler
            release.set()
            assert queue.join(timeout=10)
            assert sorted(ran) == [b"email-0", b"resize-0", b"resize-1", b"resize-2"]
        finally:
            release.set()
            queue.close()

    def test_a_failed_claim_is_tried_again_at_the_next_register(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = store_path(tmp_path)
        stored_backlog(path, [queued("resize-0", 1, kind="resize")])
        real_claim = LmdbStore.claim
        failed: list[final.Priority] = []

        def fails_once(self: LmdbStore, priority: final.Priority, *args: object) -> object:
            if not failed:
                failed.append(priority)
                raise final.StoreError("a bad read")
            return real_claim(self, priority, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(LmdbStore, "claim", fails_once)
        ran: list[bytes] = []
        queue = final.JobQueue(final.Config(num_workers=1, persist_path=path,
                                            handlers={"email": ran.append}))
        try:
            # Producers wait for the claim, then go on when it fails.
            queue.enqueue(final.Job("email-0", b"email-0", kind="email"), timeout=10)
            assert failed
            queue.register("resize", ran.append)  # the claimer, still there, tries again
            queue.enqueue(final.Job("email-1", b"email-1", kind="email"), timeout=10)
            assert queue.join(timeout=10)
            assert sorted(ran) == [b"email-0", b"email-1", b"resize-0"]
        finally:
            queue.close()

    def test_a_stored_id_is_refused_while_its_claim_is_on_the_way(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = store_path(tmp_path)
        stored_backlog(path, [queued("mail-1", 1, final.Priority.LOW)])
        real_claim = LmdbStore.claim
        claimed, release = threading.Event(), threading.Event()

        def slow_to_hand_over(self: LmdbStore, priority: final.Priority, *args: object) -> object:
            records = real_claim(self, priority, *args)  # type: ignore[arg-type]
            if records:
                claimed.set()  # read from the store, not yet held by the queue
                release.wait(10)
            return records

        monkeypatch.setattr(LmdbStore, "claim", slow_to_hand_over)
        ran: list[bytes] = []
        queue = final.JobQueue(final.Config(num_workers=1, handler=ran.append,
                                            persist_path=path))
        try:
            assert claimed.wait(5)
            with pytest.raises(final.DuplicateJob, match="'mail-1'"):
                queue.enqueue(final.Job("mail-1", b"new", final.Priority.HIGH))
            release.set()
            assert queue.join(timeout=10)
            assert ran == [b"mail-1"]  # the stored job, once
        finally:
            release.set()
            queue.close()


class TestLogAndCrash:
    def test_jobs_finished_long_before_a_crash_do_not_run_again(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        runlog = str(tmp_path / "runs.log")
        died = run_child("finish-and-die", path, runlog, "nosync", "done", "50",
                         env={"RETENTION": "2"})
        assert died.returncode == 0, died.stderr
        assert _wal.segment_paths(path), "the child should have left its log behind"
        drained = run_child("drain", path, runlog)
        assert drained.returncode == 0, drained.stderr
        with open(runlog) as log:
            runs = Counter(log.read().split())
        assert len(runs) == 50 and max(runs.values()) == 1  # pruned, yet not run again

    def test_a_failed_group_sync_leaves_no_trace(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = store_path(tmp_path)
        real_sync = os.fdatasync
        ran: list[bytes] = []
        config = final.Config(num_workers=1, handler=ran.append, persist_path=path, fsync=True)
        with final.JobQueue(config) as queue:
            queue.enqueue(final.Job("before", b"before"))

            def failing_sync(fd: int) -> None:
                raise OSError(errno.EIO, "Input/output error")

            monkeypatch.setattr(os, "fdatasync", failing_sync)
            with pytest.raises(final.StoreError, match="Input/output error"):
                queue.enqueue(final.Job("refused", b"refused"))
            monkeypatch.setattr(os, "fdatasync", real_sync)
            assert queue.status("refused") is None
            with pytest.raises(KeyError):
                queue.wait("refused", timeout=1)
            queue.enqueue(final.Job("after", b"after"))
            assert queue.join(timeout=10)
        with final.JobQueue(config) as queue:  # and nothing of it at the next start
            assert queue.join(timeout=10)
            assert queue.status("refused") is None
        assert sorted(ran) == [b"after", b"before"]

    def test_every_enqueue_is_flushed_with_fsync(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        syncs: list[int] = []
        real_sync = os.fdatasync

        def counting_sync(fd: int) -> None:
            syncs.append(fd)
            real_sync(fd)

        monkeypatch.setattr(os, "fdatasync", counting_sync)
        config = final.Config(handler=lambda p: None, persist_path=store_path(tmp_path),
                              fsync=True)
        with final.JobQueue(config) as queue:
            for i in range(5):
                queue.enqueue(final.Job(f"j{i}"))  # one at a time: one flush each
                assert len(syncs) >= i + 1
        assert len(syncs) >= 5

    def test_log_segments_are_retired_while_the_queue_runs(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_wal, "SEGMENT_SIZE", 4096)
        path = store_path(tmp_path)
        with final.JobQueue(final.Config(handler=lambda p: None, persist_path=path)) as queue:
            for i in range(1000):  # about 50 bytes a frame: some 20 segments' worth
                queue.enqueue(final.Job(f"job-{i}"))
            assert queue.join(timeout=30)
            queue.dead_letters()  # commits what is pending, and retires what it covers
            assert len(_wal.segment_paths(path)) <= 2

    def test_a_leftover_log_that_outgrows_the_map_opens(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_lmdb_files, "INITIAL_MAP_SIZE", 1 << 20)
        path = store_path(tmp_path)
        payload = os.urandom(64 << 10)

        def lmdb_down(self: _lmdb_files.Tables, *args: object) -> object:
            raise lmdb.DiskError("mdb_txn_commit: Input/output error")

        with monkeypatch.context() as patch:
            patch.setattr(_lmdb_files.Tables, "write_batch", lmdb_down)
            store = LmdbStore(path)
            add(store, [JobRecord(f"big-{i}", payload, final.Priority.MEDIUM, "", None, 0.0,
                                  final.Status.QUEUED, 0, None, None, None, None, i + 1)
                        for i in range(40)])  # 2.5 MiB: more than the 1 MiB map
            store.close()  # cannot write LMDB: the log keeps the jobs
        ran: list[int] = []
        config = final.Config(handler=lambda p: ran.append(len(p)), persist_path=path)
        with final.JobQueue(config) as queue:  # replaying grows the map
            assert queue.join(timeout=30)
        assert ran == [len(payload)] * 40
        with StoreReader(path) as reader:
            assert reader.map_size() > 1 << 20


class TestRacesWithTheStore:
    @pytest.mark.parametrize("sync", ["fails", "succeeds"])
    def test_close_giving_up_during_a_group_sync_leaves_the_enqueue_its_outcome(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str
    ) -> None:
        path = store_path(tmp_path)
        real_sync = os.fdatasync
        syncing, finish = threading.Event(), threading.Event()

        def stuck_sync(fd: int) -> None:
            syncing.set()
            finish.wait(10)
            if sync == "fails":
                raise OSError(errno.EIO, "Input/output error")
            real_sync(fd)

        ran: list[bytes] = []
        config = final.Config(num_workers=1, handler=ran.append, persist_path=path, fsync=True)
        queue = final.JobQueue(config)
        monkeypatch.setattr(os, "fdatasync", stuck_sync)
        outcome: list[object] = []

        def produce() -> None:
            try:
                queue.enqueue(final.Job("x", b"x"))
                outcome.append("accepted")
            except BaseException as exc:  # noqa: BLE001 - what it raises is the test
                outcome.append(exc)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        assert syncing.wait(5)
        assert queue.close(timeout=0.05) == []  # "x" was never accepted: not abandoned
        finish.set()
        producer.join(10)
        if sync == "fails":
            assert len(outcome) == 1 and isinstance(outcome[0], final.StoreError)
        else:
            assert outcome == ["accepted"]
        monkeypatch.setattr(os, "fdatasync", real_sync)
        assert queue.close() == []  # the commit has ended: the store is given up now
        with final.JobQueue(config) as again:
            assert again.join(timeout=10)
        assert ran == ([] if sync == "fails" else [b"x"])

    def test_a_new_life_of_an_id_is_numbered_after_the_last(self, tmp_path: Path) -> None:
        """A producer waiting for room has its seq already; if the same id is enqueued,
        runs and finishes meanwhile, the waiting one must still be the newer life."""
        path = store_path(tmp_path)
        second_life, release = threading.Event(), threading.Event()

        def handler(payload: bytes) -> None:
            if payload == b"life-2":
                second_life.set()
                release.wait(10)

        queue = final.JobQueue(final.Config(num_workers=1, queue_size=1, handler=handler,
                                            persist_path=path))
        try:
            started, unblock = threading.Event(), threading.Event()

            def hold(payload: bytes) -> None:
                started.set()
                unblock.wait(10)

            queue.enqueue_with_handler(final.Job("blocker", priority=final.Priority.HIGH), hold)
            assert started.wait(5)
            queue.enqueue(final.Job("fill", priority=final.Priority.LOW))  # LOW is full
            waiting = threading.Thread(daemon=True, target=queue.enqueue,
                                       args=(final.Job("x", b"life-2", final.Priority.LOW),))
            waiting.start()
            assert until(lambda: queue._core.room[final.Priority.LOW].waiting == 1)
            queue.enqueue(final.Job("x", b"life-1", final.Priority.HIGH))
            unblock.set()  # "x" runs and completes, "fill" frees LOW: life 2 goes in
            assert second_life.wait(10)
            waiting.join(10)
            store = queue._core.store
            store.flush()  # type: ignore[attr-defined]
            stored = store.get("x")  # as LMDB has it now
            assert stored is not None
            assert (stored.status, stored.payload) == (final.Status.PROCESSING, b"life-2")
        finally:
            unblock.set()
            release.set()
            queue.close()


class TestStoreLifecycle:
    def test_growing_the_map_waits_for_open_reads(self, tmp_path: Path) -> None:
        gate = _lmdb_files.MapGate()
        env = lmdb.open(str(tmp_path / "env"), map_size=1 << 20)
        inside, leave, resized = threading.Event(), threading.Event(), threading.Event()

        def reader() -> None:
            with gate.reading(env):
                inside.set()
                leave.wait(10)

        def grower() -> None:
            gate.resize(env)
            resized.set()

        threads = [threading.Thread(daemon=True, target=reader),
                   threading.Thread(daemon=True, target=grower)]
        threads[0].start()
        assert inside.wait(5)
        threads[1].start()
        assert not resized.wait(0.2)  # a read transaction is open: it must wait
        leave.set()
        assert resized.wait(5)
        for thread in threads:
            thread.join(5)
        assert env.info()["map_size"] == 2 << 20
        env.close()

    def test_close_does_not_wait_forever_for_a_stuck_commit(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = store_path(tmp_path)
        writing, unstick = threading.Event(), threading.Event()
        real_write_batch = _lmdb_files.Tables.write_batch

        def stuck(self: _lmdb_files.Tables, *args: object) -> object:
            writing.set()
            unstick.wait(30)
            return real_write_batch(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(_lmdb_files.Tables, "write_batch", stuck)
        queue = final.JobQueue(final.Config(handler=lambda p: None, persist_path=path))
        queue.enqueue(final.Job("a"))
        assert writing.wait(5)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="jobqueue"):
            assert queue.close(timeout=0.2) == []
        assert time.monotonic() - started < 5  # 0.2 s, then a second's grace for the store
        assert any("still running" in r.getMessage() for r in caplog.records)
        unstick.set()
        assert queue.close() == []  # the commit ended: now the store is given up
        with final.JobQueue(final.Config(handler=lambda p: None, persist_path=path)) as again:
            assert again.status("a") is final.Status.COMPLETED

    def test_an_earlier_retry_is_not_kept_waiting_by_a_later_one(self, tmp_path: Path) -> None:
        path = store_path(tmp_path)
        later = JobRecord("later", b"", final.Priority.MEDIUM, "", None, 0.0,
                          final.Status.RETRYING, 1, "boom", 1.0, None, time.time() + 3600, 1)
        stored_backlog(path, [later])
        store = LmdbStore(path)
        store.claim(final.Priority.MEDIUM, 1, None)  # (claimed, then given back as it was)
        store.close()

        def flaky(payload: bytes) -> None:
            if final.current_job().attempt == 1:
                raise RuntimeError("once")

        config = final.Config(handler=flaky, persist_path=path, base_delay=0.05, jitter=0.0)
        with final.JobQueue(config) as queue:
            assert until(lambda: queue.status("later") is final.Status.RETRYING)
            queue.enqueue(final.Job("sooner"))
            # Its retry is due in 0.05 s, long before the stored one's hour.
            assert queue.wait("sooner", timeout=10) is final.Status.COMPLETED
