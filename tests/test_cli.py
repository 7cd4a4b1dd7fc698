"""The ``jobqueue`` command line against stores written by a real final.JobQueue.

Commands run as subprocesses (``python -m jobqueue``), as an operator runs them: LMDB lets a
process open an environment once, and ownership is between processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from jobqueue import final

CHILD = str(Path(__file__).with_name("lmdb_child.py"))


def jobqueue(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobqueue", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "120"},
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A store with 4 completed, 2 failed and 3 queued jobs."""
    path = str(tmp_path / "jobs")

    def handler(payload: bytes) -> None:
        if payload.startswith(b"bad"):
            raise ConnectionError("hooks.example.com refused the connection")

    config = final.Config(persist_path=path, handler=handler, max_retries=0)
    with final.JobQueue(config) as queue:
        for i in range(4):
            queue.enqueue(final.Job(f"mail-{i}", b"to: user@example.com", kind="email"))
        queue.enqueue(final.Job("hook-1", b"bad https://hooks.example.com/1",
                                priority=final.Priority.HIGH))
        queue.enqueue(final.Job("hook-2", b"bad \xff\xfe binary", priority=final.Priority.LOW))
        assert queue.join(timeout=10)

    def held(payload: bytes) -> None:
        if final.current_job().wait(10):
            raise RuntimeError("cancelled")

    queue = final.JobQueue(final.Config(persist_path=path, handler=held, num_workers=1))
    for i in range(3):
        queue.enqueue(final.Job(f"resize-{i}", b"photo.jpg", kind="resize"))
    queue.close(timeout=0.05)  # leaves the three queued in the store
    return path


class Owner:
    """Another process owning the store, as a running service would."""

    def __init__(self, path: str, runlog: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, CHILD, "hold", path, runlog],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "ready\n"

    def stop(self) -> None:
        self.process.communicate(input="", timeout=30)


class TestStats:
    def test_json_shape(self, store: str) -> None:
        done = jobqueue("stats", store, "--json")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["by_status"] == {
            "queued": 3, "processing": 0, "retrying": 0, "completed": 4, "failed": 2,
        }
        assert data["by_priority"] == {"high": 0, "medium": 3, "low": 0}
        assert data["dead_letters"] == 2
        assert data["oldest_queued_age"] >= 0
        assert data["disk_bytes"] > 0
        assert data["map_size"] >= data["disk_bytes"]
        assert data["owner_pid"] is None

    def test_human(self, store: str) -> None:
        done = jobqueue("stats", store)
        assert done.returncode == 0
        assert "queued 3" in done.stdout and "failed 2" in done.stdout
        assert "owner             none" in done.stdout

    def test_while_another_process_owns_and_writes(self, store: str, tmp_path: Path) -> None:
        owner = Owner(store, str(tmp_path / "runs.log"))
        try:
            done = jobqueue("stats", store, "--json")
            listed = jobqueue("list", store, "--json")
        finally:
            owner.stop()
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["owner_pid"] == owner.process.pid
        assert listed.returncode == 0
        # The owner ran the three queued jobs on start; the reader saw a consistent snapshot.
        statuses = {job["id"]: job["status"] for job in json.loads(listed.stdout)}
        assert statuses["mail-0"] == "completed"
        assert statuses["resize-0"] in ("queued", "processing", "completed")


class TestList:
    def test_filters(self, store: str) -> None:
        failed = json.loads(jobqueue("list", store, "--status", "failed", "--json").stdout)
        assert sorted(job["id"] for job in failed) == ["hook-1", "hook-2"]
        assert all("refused the connection" in job["last_error"] for job in failed)
        low = json.loads(jobqueue("list", store, "--priority", "low", "--json").stdout)
        assert [job["id"] for job in low] == ["hook-2"]
        email = json.loads(jobqueue("list", store, "--kind", "email", "--json").stdout)
        assert len(email) == 4
        limited = json.loads(jobqueue("list", store, "--limit", "2", "--json").stdout)
        assert len(limited) == 2
        assert set(limited[0]) == {
            "id", "status", "priority", "kind", "attempts", "last_error", "created_at",
            "started_at", "finished_at", "payload_size",
        }

    def test_human_table(self, store: str) -> None:
        done = jobqueue("list", store, "--status", "failed")
        assert done.returncode == 0
        lines = done.stdout.splitlines()
        assert lines[0].split()[:3] == ["ID", "STATUS", "PRIORITY"]
        assert len(lines) == 3
        assert all(len(line) <= 120 for line in lines)


class TestShow:
    def test_text_payload(self, store: str) -> None:
        data = json.loads(jobqueue("show", store, "hook-1", "--json").stdout)
        assert data["payload"] == "bad https://hooks.example.com/1"
        assert data["payload_encoding"] == "utf-8"
        assert data["status"] == "failed" and data["priority"] == "high"
        human = jobqueue("show", store, "hook-1").stdout
        assert "UTF-8: bad https://hooks.example.com/1" in human

    def test_binary_payload(self, store: str) -> None:
        data = json.loads(jobqueue("show", store, "hook-2", "--json").stdout)
        assert data["payload_encoding"] == "hex"
        assert bytes.fromhex(data["payload"]) == b"bad \xff\xfe binary"
        assert "hex: 62 61 64" in jobqueue("show", store, "hook-2").stdout


class TestRepairs:
    def test_refused_while_owned(self, store: str, tmp_path: Path) -> None:
        owner = Owner(store, str(tmp_path / "runs.log"))
        try:
            requeue = jobqueue("requeue", store, "--all-failed")
            purge = jobqueue("purge", store, "--completed")
        finally:
            owner.stop()
        for done in (requeue, purge):
            assert done.returncode == 1
            assert f"owned by process {owner.process.pid}" in done.stderr
            assert "Traceback" not in done.stderr
        after = json.loads(jobqueue("stats", store, "--json").stdout)
        assert after["by_status"]["failed"] == 2  # untouched

    def test_requeued_jobs_run(self, store: str) -> None:
        done = jobqueue("requeue", store, "--all-failed")
        assert done.returncode == 0, done.stderr
        assert "requeued 2 jobs" in done.stdout
        ran: list[bytes] = []
        with final.JobQueue(final.Config(persist_path=store, handler=ran.append)) as queue:
            assert queue.wait("hook-1", timeout=10) is final.Status.COMPLETED
            assert queue.wait("hook-2", timeout=10) is final.Status.COMPLETED
            assert queue.join(timeout=10)
        assert sorted(ran) == sorted(
            [b"bad \xff\xfe binary", b"bad https://hooks.example.com/1"] + [b"photo.jpg"] * 3
        )

    def test_requeue_by_id_is_all_or_nothing(self, store: str) -> None:
        done = jobqueue("requeue", store, "hook-1", "mail-0")
        assert done.returncode == 2
        assert "'mail-0' is completed, not failed; nothing changed" in done.stderr
        failed = json.loads(jobqueue("list", store, "--status", "failed", "--json").stdout)
        assert len(failed) == 2

    def test_purge(self, store: str) -> None:
        assert jobqueue("purge", store, "--completed").returncode == 0
        assert jobqueue("purge", store, "hook-2").returncode == 0
        data = json.loads(jobqueue("stats", store, "--json").stdout)
        assert data["by_status"] == {
            "queued": 3, "processing": 0, "retrying": 0, "completed": 0, "failed": 1,
        }
        unknown = jobqueue("purge", store, "hook-1", "nope")
        assert unknown.returncode == 2 and "no job 'nope'" in unknown.stderr
        assert json.loads(jobqueue("stats", store, "--json").stdout)["dead_letters"] == 1


class TestErrors:
    def test_missing_path(self, tmp_path: Path) -> None:
        done = jobqueue("stats", str(tmp_path / "nowhere"))
        assert done.returncode == 2
        assert done.stderr.startswith("jobqueue: error: ") and "does not exist" in done.stderr

    def test_not_a_store(self, tmp_path: Path) -> None:
        (tmp_path / "notes.txt").write_text("mine")
        for args in (("stats",), ("list",), ("requeue", "--all-failed")):
            done = jobqueue(*args[:1], str(tmp_path), *args[1:])
            assert done.returncode == 2
            assert "is not a jobqueue store" in done.stderr
            assert "Traceback" not in done.stderr

    def test_unknown_id(self, store: str) -> None:
        done = jobqueue("show", store, "nope")
        assert done.returncode == 2
        assert done.stderr.strip() == f"jobqueue: error: no job 'nope' in {store!r}"

    def test_newer_format(self, store: str) -> None:
        env = lmdb.open(store, max_dbs=8)
        with env.begin(write=True) as txn:
            txn.put(b"format", b"99", db=env.open_db(b"meta", txn=txn))
        env.close()
        done = jobqueue("stats", store)
        assert done.returncode == 2
        assert "written by a newer jobqueue" in done.stderr

    def test_corrupt_record(self, store: str) -> None:
        env = lmdb.open(store, max_dbs=8)
        with env.begin(write=True) as txn:
            txn.put(b"mail-1", b"\x01garbage", db=env.open_db(b"jobs", txn=txn))
        env.close()
        for args in (("show", "mail-1"), ("show", "mail-1", "--json")):
            done = jobqueue(args[0], store, *args[1:])
            assert done.returncode == 2
            assert done.stderr.startswith("jobqueue: error: the record of job 'mail-1' cannot be")
            assert "Traceback" not in done.stderr
        listed = jobqueue("list", store, "--json")  # the other records still list
        assert listed.returncode == 0
        assert "mail-1" not in {job["id"] for job in json.loads(listed.stdout)}

    def test_imports_only_public_modules(self) -> None:
        source = (Path(__file__).resolve().parent.parent / "jobqueue" / "cli.py").read_text()
        modules = re.findall(r"^from (jobqueue[\w.]*) import", source, flags=re.M)
        assert modules and all("._" not in m and not m.split(".")[-1].startswith("_")
                               for m in modules), modules

    def test_help_has_examples(self) -> None:
        done = jobqueue("--help")
        assert done.returncode == 0 and "jobqueue requeue ./jobs.db --all-failed" in done.stdout
        for command in ("stats", "list", "show", "requeue", "purge"):
            sub = jobqueue(command, "--help")
            assert sub.returncode == 0 and "example:" in sub.stdout

    def test_console_script_is_installed(self) -> None:
        script = Path(sys.executable).with_name("jobqueue")
        assert script.exists()
