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


class TestReadsWriteNothing:
    @pytest.mark.parametrize("command", [["stats"], ["list"], ["show", "mail-0"]])
    def test_a_symlinked_lock_file_is_refused_and_left_alone(
        self, store: str, tmp_path: Path, command: list[str]
    ) -> None:
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        os.remove(os.path.join(store, "lock.mdb"))
        os.symlink(victim, os.path.join(store, "lock.mdb"))
        done = jobqueue(command[0], store, *command[1:])
        assert done.returncode == 2
        assert "store file 'lock.mdb'" in done.stderr and "symbolic link" in done.stderr
        assert victim.read_bytes() == b"precious"

    def test_reading_writes_nothing_but_lmdbs_reader_table(self, store: str) -> None:
        def files() -> dict[str, tuple[int, int]]:
            return {name: (stat.st_mtime_ns, stat.st_size) for name in os.listdir(store)
                    if name != "lock.mdb" and (stat := os.stat(os.path.join(store, name)))}

        before = files()
        for command in (["stats"], ["list"], ["show", "mail-0"], ["stats", "--json"]):
            done = jobqueue(command[0], store, *command[1:])
            assert done.returncode == 0, done.stderr
        assert files() == before


class TestStats:
    def test_json_shape(self, store: str) -> None:
        done = jobqueue("stats", store, "--json")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["by_status"] == {
            "queued": 3, "processing": 0, "retrying": 0, "completed": 4, "failed": 2,
            "scheduled": 0, "cancelled": 0,
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
        # What is left waits for the next start, and the output says so.
        assert ("note              no process runs this queue: 3 queued wait for the next "
                "JobQueue on this path.") in done.stdout

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
            "started_at", "finished_at", "run_at", "payload_size",
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
            cancel = jobqueue("cancel", store, "resize-0")
        finally:
            owner.stop()
        for done in (requeue, purge, cancel):
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
            "scheduled": 0, "cancelled": 0,
        }
        unknown = jobqueue("purge", store, "hook-1", "nope")
        assert unknown.returncode == 2 and "no job 'nope'" in unknown.stderr
        assert json.loads(jobqueue("stats", store, "--json").stdout)["dead_letters"] == 1


    def test_purge_refuses_live_jobs_unless_forced(self, store: str) -> None:
        done = jobqueue("purge", store, "resize-0", "mail-0")
        assert done.returncode == 2
        assert "1 of these jobs are live: 'resize-0' (queued)" in done.stderr
        assert "--force" in done.stderr and "nothing changed" in done.stderr
        assert jobqueue("purge", store, "--status", "queued").returncode == 2
        done = jobqueue("purge", store, "resize-0", "--force")
        assert (done.returncode, done.stdout) == (0, "purged 1 job\n")
        done = jobqueue("purge", store, "--status", "queued", "--status", "failed", "--force")
        assert (done.returncode, done.stdout) == (0, "purged 4 jobs\n")

    def test_list_newest_first_and_times_with_their_zone(self, store: str) -> None:
        oldest = jobqueue("list", store).stdout.splitlines()[1:]
        newest = jobqueue("list", store, "--newest").stdout.splitlines()[1:]
        assert [line.split()[0] for line in newest] == [
            line.split()[0] for line in reversed(oldest)]
        shown = jobqueue("show", store, "mail-0").stdout
        created = next(line for line in shown.splitlines() if line.startswith("created_at"))
        assert re.search(r"\d\d:\d\d:\d\d [+-]\d{4}$", created), created


class TestCancel:
    def test_cancelled_jobs_stay_cancelled_at_the_next_start(self, store: str) -> None:
        done = jobqueue("cancel", store, "resize-0", "resize-2")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "cancelled 2 jobs: resize-0, resize-2\n"
        shown = json.loads(jobqueue("show", store, "resize-0", "--json").stdout)
        assert shown["status"] == "cancelled" and shown["finished_at"] is not None
        ran = []
        with final.JobQueue(final.Config(persist_path=store,
                                         handler=lambda p: ran.append(1))) as queue:
            assert queue.wait("resize-1", timeout=10) is final.Status.COMPLETED
            assert queue.status("resize-0") is final.Status.CANCELLED
            with pytest.raises(final.JobCancelled):
                queue.result("resize-2")
        assert len(ran) == 1

    def test_only_jobs_that_have_not_run_can_be_cancelled(self, store: str) -> None:
        done = jobqueue("cancel", store, "resize-0", "mail-0")
        assert done.returncode == 2
        assert "job 'mail-0' is completed: only queued, scheduled or retrying" in done.stderr
        assert "nothing changed" in done.stderr
        assert json.loads(jobqueue("show", store, "resize-0", "--json").stdout)[
            "status"] == "queued"  # all or nothing
        unknown = jobqueue("cancel", store, "nope")
        assert unknown.returncode == 2 and "no job 'nope'" in unknown.stderr

    def test_purge_cancelled(self, store: str) -> None:
        assert jobqueue("cancel", store, "resize-1").returncode == 0
        done = jobqueue("purge", store, "--cancelled")
        assert (done.returncode, done.stdout) == (0, "purged 1 job\n")
        assert jobqueue("show", store, "resize-1").returncode == 2


class TestNewcomer:
    def test_one_job_is_singular(self, store: str) -> None:
        done = jobqueue("requeue", store, "hook-1")
        assert done.stdout == "requeued 1 job: hook-1\n"

    def test_every_option_has_help(self) -> None:
        listed = jobqueue("list", "--help").stdout
        assert "only jobs with this status" in listed and "only jobs of this priority" in listed
        assert "the job's id" in jobqueue("show", "--help").stdout
        assert "cancel" in jobqueue("--help").stdout

    def test_a_long_last_error_wraps_on_a_terminal_and_is_whole_in_a_pipe(
        self, store: str
    ) -> None:
        from jobqueue.cli.output import table as _table

        error = "ConnectionError: https://hooks.example.com/" + "x" * 120
        rows = [["ID", "STATUS", "LAST ERROR"], ["hook-1", "failed", error]]
        wrapped = _table(rows, 80).splitlines()
        assert len(wrapped) == 4 and all(len(line) <= 80 for line in wrapped)
        assert "".join(line.strip() for line in wrapped[1:]).endswith("x" * 10)
        assert wrapped[2].startswith(" " * len("hook-1  failed  "))
        assert _table(rows, None).splitlines()[1].endswith(error)  # no terminal: all of it
        piped = jobqueue("list", store, "--status", "failed")
        assert "ConnectionError: hooks.example.com refused the connection" in piped.stdout

    def test_show_prints_a_result(self, tmp_path: Path) -> None:
        path = str(tmp_path / "results")
        with final.JobQueue(final.Config(persist_path=path, handler=lambda p: b"42 rows")) as q:
            q.enqueue(final.Job("count"))
            q.wait("count", timeout=10)
            q.enqueue(final.Job("later"), delay=3600)
        shown = jobqueue("show", path, "count")
        assert "result       7 bytes, UTF-8: 42 rows" in shown.stdout
        data = json.loads(jobqueue("show", path, "count", "--json").stdout)
        assert (data["result"], data["result_encoding"]) == ("42 rows", "utf-8")
        assert "run_at" in jobqueue("show", path, "later").stdout


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

    def test_help_has_examples(self) -> None:
        done = jobqueue("--help")
        assert done.returncode == 0 and "jobqueue requeue ./jobs.db --all-failed" in done.stdout
        for command in ("stats", "list", "show", "requeue", "purge"):
            sub = jobqueue(command, "--help")
            assert sub.returncode == 0 and "example:" in sub.stdout

    def test_console_script_is_installed(self) -> None:
        script = Path(sys.executable).with_name("jobqueue")
        assert script.exists()


class TestNeverATraceback:
    @pytest.mark.parametrize("seconds", ["-1", "0", "nan", "inf", "soon"])
    def test_a_watch_interval_must_be_finite_and_positive(self, store: str, seconds: str) -> None:
        done = jobqueue("stats", store, "--watch", seconds)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "--watch" in done.stderr

    def test_a_negative_limit_is_refused_not_a_row_dropped(self, store: str) -> None:
        done = jobqueue("list", store, "--limit", "-1")
        assert done.returncode == 2 and "must be 0 or more" in done.stderr

    def test_control_characters_in_ids_are_escaped(self, tmp_path: Path) -> None:
        path = str(tmp_path / "jobs")

        def handler(payload: bytes) -> None:
            raise RuntimeError("line one\nline two \x1b[31mred")

        config = final.Config(persist_path=path, handler=handler, max_retries=0)
        with final.JobQueue(config) as queue:
            queue.enqueue(final.Job("evil\nid\x1b[2J", kind="k\tind"))
            assert queue.join(timeout=10)
        listed = jobqueue("list", path)
        assert listed.returncode == 0
        assert "\x1b" not in listed.stdout and "evil\\nid\\x1b[2J" in listed.stdout
        assert len(listed.stdout.splitlines()) == 2  # the header and one row
        shown = jobqueue("show", path, "evil\nid\x1b[2J")
        assert shown.returncode == 0 and "\x1b" not in shown.stdout
        assert "line one\\nline two" in shown.stdout

    def test_times_beyond_the_calendar_print_and_stay_valid_json(self, tmp_path: Path) -> None:
        path = str(tmp_path / "jobs")
        with final.JobQueue(final.Config(persist_path=path, handler=print)) as queue:
            queue.enqueue(final.Job("far-future", created=1e300))
            assert queue.join(timeout=10)
        shown = jobqueue("show", path, "far-future")
        assert shown.returncode == 0 and "1e+300" in shown.stdout, shown.stderr
        for args in (("list", path, "--json"), ("show", path, "far-future", "--json")):
            done = jobqueue(*args)
            assert done.returncode == 0, done.stderr
            json.loads(done.stdout)

    def test_json_never_holds_nan_or_infinity(self) -> None:
        from jobqueue import cli
        from jobqueue.final import Priority, Status
        from jobqueue.final.stores.base import JobRecord

        record = JobRecord("x", b"", Priority.MEDIUM, "", None, float("nan"), Status.QUEUED,
                           0, None, float("inf"), None, None, 1)
        data = cli.output.job_json(record)  # a store written by hand or by an old version
        assert data["created_at"] is None and data["started_at"] is None
        json.loads(cli.output.dumps(data))

    def test_a_store_it_may_not_read(
        self, store: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # As root, mode 000 reads anyway: the error is what os.listdir raises for others.
        from jobqueue import cli

        def denied(path: str) -> list[str]:
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(os, "listdir", denied)
        assert cli.main(["stats", store]) == 2
        err = capsys.readouterr().err
        assert "Permission denied" in err and "Traceback" not in err

    def test_an_unexpected_error_is_one_line(
        self, store: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from jobqueue import cli

        def broken(*args: object) -> None:
            raise ZeroDivisionError("a bug")

        monkeypatch.setattr(cli, "stats", broken)
        assert cli.main(["stats", store]) == 3
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "ZeroDivisionError: a bug" in err

    def test_reads_while_the_owner_grows_its_map(self, store: str) -> None:
        from jobqueue.final.admin import StoreReader

        with StoreReader(store) as reader:
            before = {r.id for r in reader.records()}
            grow = (
                "import lmdb, sys\n"
                "env = lmdb.open(sys.argv[1], map_size=256 << 20, max_dbs=8)\n"
                "big = env.open_db(b'corrupt')\n"
                "with env.begin(write=True) as txn:\n"
                "    txn.put(b'filler', b'x' * (100 << 20), db=big)\n"
            )
            subprocess.run([sys.executable, "-c", grow, store], check=True, timeout=60)
            assert {r.id for r in reader.records()} == before  # MapResizedError before
            assert reader.get("mail-0") is not None


class TestDiskFull:
    def test_an_io_error_on_a_nearly_full_disk_says_the_disk_is_full(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from jobqueue.final.stores.lmdb.directory import disk_full_note

        class Full:
            f_bavail, f_frsize = 3, 4096

        monkeypatch.setattr(os, "statvfs", lambda path: Full())
        error = lmdb.Error("mdb_txn_commit: Input/output error")
        assert "the disk is full, 12288 bytes free" in disk_full_note(str(tmp_path), error)
        assert disk_full_note(str(tmp_path), OSError(28, "No space left on device"))
        monkeypatch.setattr(os, "statvfs", lambda path: type("Roomy", (), {
            "f_bavail": 1 << 30, "f_frsize": 4096})())
        assert disk_full_note(str(tmp_path), error) == ""  # an I/O error, not a full disk
