"""The processes of a queue under test, their logs, and the checks of the README's promises
that end every scenario of the fault-injection suite (``Cluster.check``)."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

CHILD = str(Path(__file__).with_name("fault_child.py"))
ROOT = str(Path(__file__).resolve().parent.parent.parent)


@dataclass
class Figures:
    """What one scenario measured."""

    scenario: str
    acknowledged: int = 0
    lost: int = 0
    run_twice: int = 0
    explained: int = 0  # runs beyond the first that the faults allow (held by a victim)
    refused: int = 0  # late outcomes of a faulted process the database refused
    hooks_missing: int = 0  # committed outcomes whose process died before its hook
    notes: dict[str, object] = field(default_factory=dict)


REPORT: list[Figures] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """One child process (fault_child.py) of a cluster."""

    def __init__(self, args: list[str], name: str) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            [sys.executable, CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT},
        )
        self.owner: str | None = None
        self.stderr = ""
        self.faulted = False  # killed or stopped: its jobs may run again elsewhere
        self.finished = False  # its output read to the end

    def wait_started(self) -> None:
        line = self.popen.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("started"):
            self.popen.kill()
            _, err = self.popen.communicate(timeout=30)
            raise AssertionError(f"{self.name} did not start: {line!r}\n{err}")
        self.owner = line.split()[1]

    def kill(self) -> None:
        self.faulted = True
        self.popen.send_signal(signal.SIGKILL)
        self.finished = True
        _, err = self.popen.communicate(timeout=30)
        self.stderr += err

    def stop(self) -> None:
        self.faulted = True
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.popen.send_signal(signal.SIGCONT)

    def finish(self, timeout: float = 90) -> str:
        """Close stdin (a worker closes its queue) and wait; its stdout. No hang allowed:
        a process still running after ``timeout`` fails the test."""
        if self.finished:
            return ""
        self.finished = True
        try:
            out, err = self.popen.communicate(input="", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            out, err = self.popen.communicate(timeout=30)
            raise AssertionError(f"{self.name} did not finish within {timeout} s:\n"
                                 f"{err[-3000:]}") from None
        self.stderr += err
        return out


class Cluster:
    """The processes of one queue and their logs, in ``logs``."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url = url
        self.logs = logs
        self.processes: list[Process] = []
        self.held_by_victims = 0  # jobs faulted processes held when their fault began

    def worker(self, name: str, *, lease: float = 5.0, workers: int = 2, fsync: bool = False,
               url: str | None = None) -> Process:
        process = Process(["worker", url or self.url, str(self.logs), name, str(lease),
                           str(workers), "fsync" if fsync else "nosync"], name)
        process.wait_started()
        self.processes.append(process)
        return process

    def producer(self, name: str, count: int, *, fsync: bool = False) -> Process:
        process = Process(["producer", self.url, str(self.logs), name, str(count),
                           "fsync" if fsync else "nosync"], name)
        self.processes.append(process)
        return process

    def held_by(self, process: Process) -> int:
        """Live jobs ``process`` holds now, as the database says."""
        with psycopg.connect(self.url) as conn:
            return int(conn.execute(
                "SELECT count(*) FROM jobqueue_jobs WHERE owner = %s AND status IN "
                "('queued', 'processing', 'retrying', 'scheduled')", (process.owner,),
            ).fetchone()[0])

    def fault(self, process: Process) -> None:
        """Note, before a fault, what the process holds: what may run twice because of it."""
        self.held_by_victims += self.held_by(process)

    # -- logs -------------------------------------------------------------------------------

    def _lines(self, name: str) -> list[list[str]]:
        path = self.logs / name
        if not path.exists():
            return []
        return [line.split() for line in path.read_text().splitlines()]

    def acks(self) -> dict[str, float]:
        return {job_id: float(at) for job_id, at in self._lines("acks")}

    def runs(self) -> list[tuple[str, str, float]]:
        return [(job_id, name, float(at)) for job_id, name, at in self._lines("runs")]

    def hooks(self) -> collections.Counter[str]:
        return collections.Counter(job_id for job_id, _ in self._lines("hooks"))

    def table(self) -> dict[str, tuple[str, int]]:
        with psycopg.connect(self.url) as conn:
            return {job_id: (status, attempts) for job_id, status, attempts in conn.execute(
                "SELECT id, status, attempts FROM jobqueue_jobs").fetchall()}

    def drained(self, timeout: float = 120) -> bool:
        """Wait until no job of the queue is live (another process's progress: polled)."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                live = conn.execute(
                    "SELECT count(*) FROM jobqueue_jobs WHERE status IN "
                    "('queued', 'processing', 'retrying', 'scheduled')").fetchone()[0]
                if not live:
                    return True
                time.sleep(0.1)
        return False

    def finish(self) -> None:
        """Every process closes in time (no hang); a worker says it closed."""
        for process in self.processes:
            if not process.finished:
                out = process.finish()
                if process.name.startswith(("w", "victim", "healthy")):
                    assert "closed" in out, (process.name, process.stderr[-3000:])

    # -- the promises -------------------------------------------------------------------------

    def check(self, scenario: str, *, may_lose_after: float | None = None) -> Figures:
        """The README's promises, checked against the logs and the table; the figures.

        ``may_lose_after``: with ``fsync=False`` a server crash may lose the commits of its
        last fraction of a second: acknowledged jobs after this epoch may be lost, and
        their loss is counted; any other loss fails.
        """
        assert self.drained(), "the queue did not drain"
        self.finish()
        acks, runs, hooks, table = self.acks(), self.runs(), self.hooks(), self.table()
        figures = Figures(scenario, acknowledged=len(acks))
        lost = [job_id for job_id in acks if table.get(job_id, ("missing",))[0] != "completed"]
        figures.lost = len(lost)
        late = [job_id for job_id in lost
                if may_lose_after is None or acks[job_id] < may_lose_after]
        assert late == [], f"acknowledged and lost: {late[:20]}"
        assert {job_id for job_id, (status, _) in table.items()} <= set(acks) | {
            job_id for job_id, _, _ in runs}, "a job nobody enqueued"
        assert all(status == "completed" for status, _ in table.values()), {
            job_id: state for job_id, state in table.items() if state[0] != "completed"}
        counts = collections.Counter(job_id for job_id, _, _ in runs)
        unrun = [job_id for job_id, (status, _) in table.items() if not counts[job_id]]
        assert unrun == [], f"completed, never run: {unrun[:20]}"
        figures.run_twice = sum(n - 1 for n in counts.values())
        figures.explained = self.held_by_victims
        figures.refused = sum(p.stderr.count("is not written") + p.stderr.count(
            "will not run it or write its outcome") for p in self.processes)
        over_hooked = {job_id: n for job_id, n in hooks.items() if n > counts[job_id]}
        assert over_hooked == {}, f"more hooks than runs: {over_hooked}"
        figures.hooks_missing = sum(1 for job_id in table if not hooks[job_id])
        REPORT.append(figures)
        return figures
