"""The benchmark's PostgreSQL: one throwaway server for the whole run, started on first use.

The server keeps PostgreSQL's durable defaults (``fsync=on``); each system sets its own
``synchronous_commit``. Where no server can start (no binaries on PATH), the PostgreSQL
rows are skipped, and the run says why.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.pgserver import PostgresServer, Unavailable

__all__ = ["cross_process_latency", "new_database", "prefetch", "processes", "sql_floor",
           "unavailable"]

_lock = threading.Lock()  # guards _server and _why
_server: PostgresServer | None = None
_why: str | None = None


def _start() -> PostgresServer | None:
    global _server, _why
    with _lock:
        if _server is None and _why is None:
            try:
                import psycopg  # noqa: F401 - the 'postgres' extra
            except ImportError:
                _why = "psycopg is not installed (pip install '.[bench]')"
                return None
            try:
                _server = PostgresServer.start(durable=True)
            except Unavailable as exc:
                _why = f"no PostgreSQL server: {str(exc).splitlines()[0]}"
                return None
            atexit.register(_server.remove)
        return _server


def unavailable() -> str | None:
    """None if the PostgreSQL systems can run, else why not."""
    _start()
    return _why


def new_database() -> str:
    server = _start()
    if server is None:
        raise RuntimeError(_why)
    return server.new_database()


def uri(url: str) -> str:
    """A key=value URL of the bench's server as a postgresql:// URI (for peers that need one)."""
    server = _start()
    assert server is not None
    return server.uri(url.rsplit("dbname=", 1)[1])


# -- scenarios of the PostgreSQL store ---------------------------------------------------------

CHILD = str(Path(__file__).with_name("_pg_child.py"))


def _spawn(*args: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    line = child.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != "ready":
        child.kill()
        raise RuntimeError(f"bench child {args[0]} did not start: {line!r}")
    return child


def _finish(child: subprocess.Popen[str]) -> str:
    out, _ = child.communicate(timeout=120)
    return out


def _completed(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FROM jobqueue_jobs WHERE status = 'completed'").fetchone()[0]


def processes(jobs: int, cpu: bool, counts: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
    """``final-postgres`` served by 1, 2 and 4 processes of 4 workers sharing one database:
    one producer (this process, no handlers) enqueues ``jobs`` with ``enqueue_many``; the
    rate is jobs over the time from the first enqueue to the last completion."""
    from jobqueue import final

    row: dict[str, Any] = {"jobs": jobs, "handler": "0.2 ms of Python" if cpu else "no-op"}
    for count in counts:
        url = new_database()
        final.JobQueue(final.Config(database_url=url, handler=None)).close()  # the tables
        children = [_spawn("worker", url, "cpu" if cpu else "noop") for _ in range(count)]
        try:
            elapsed = _feed(url, jobs)
        finally:
            for child in children:
                _finish(child)
        row[f"{count}_processes"] = jobs / elapsed
    return row


def _feed(url: str, jobs: int) -> float:
    """Enqueue ``jobs`` of kind "work" from this process, which runs none, in batches;
    return the seconds until the other processes have completed them all."""
    from jobqueue import final

    with final.JobQueue(final.Config(database_url=url, num_workers=0)) as producer:
        started = time.perf_counter()
        for first in range(0, jobs, 1000):
            producer.enqueue_many(final.Job(f"j{i}", kind="work")
                                  for i in range(first, min(jobs, first + 1000)))
        deadline = started + 300
        while _completed(url) < jobs and time.perf_counter() < deadline:
            time.sleep(0.01)  # another process's progress: polled, as crash does
        return time.perf_counter() - started


#: The prefetch settings compared: none beyond the running jobs, the default (the pace of
#: the jobs), and a fixed batch as large as the claims before the setting existed.
PREFETCHES = ("0", "auto", "64")


def _two_processes(jobs: int, work: str, prefetch: str, workers: int) -> float:
    """Seconds from the first enqueue to the last completion of ``jobs`` over two processes
    of ``workers`` workers each."""
    from jobqueue import final

    url = new_database()
    final.JobQueue(final.Config(database_url=url, handler=None)).close()  # the tables
    children = [_spawn("worker", url, work, prefetch, str(workers)) for _ in range(2)]
    try:
        return _feed(url, jobs)
    finally:
        for child in children:
            _finish(child)


def prefetch(jobs: int, slow_jobs: int) -> dict[str, Any]:
    """Per-process prefetch (``Config.prefetch``) over two processes: ``jobs`` no-op jobs
    with 4 workers each (what batches of claims are for), and ``slow_jobs`` jobs of 1 s with
    2 workers each (what a process holding jobs it cannot start strands)."""
    row: dict[str, Any] = {"jobs": jobs, "slow_jobs": slow_jobs,
                           "slow_ideal_seconds": slow_jobs / 4.0}
    for setting in PREFETCHES:
        row[f"noop_jobs_per_s_{setting}"] = jobs / _two_processes(jobs, "noop", setting, 4)
        row[f"slow_seconds_{setting}"] = _two_processes(slow_jobs, "sleep", setting, 2)
    return row


def cross_process_latency(rate: int, seconds: float) -> dict[str, Any]:
    """Jobs offered at ``rate`` by this process, run by another (4 workers): enqueue to
    handler start, measured on the one clock both read (time.time)."""
    from jobqueue import final

    url = new_database()
    final.JobQueue(final.Config(database_url=url, handler=None)).close()
    child = _spawn("latency", url, "noop")
    total = int(rate * seconds)
    with final.JobQueue(final.Config(database_url=url, handler=None)) as producer:
        start = time.perf_counter()
        for i in range(total):
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            producer.enqueue(final.Job(f"l{i}", repr(time.time()).encode(), kind="work"))
        deadline = time.perf_counter() + 60
        while _completed(url) < total and time.perf_counter() < deadline:
            time.sleep(0.01)
    waits = sorted(json.loads(_finish(child).strip().splitlines()[-1]))
    return {
        "offered_per_s": rate, "jobs": total, "completed": len(waits),
        "p50_ms": waits[len(waits) // 2] * 1e3 if waits else None,
        "p99_ms": waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1e3 if waits else None,
        "max_ms": waits[-1] * 1e3 if waits else None,
    }


def sql_floor(jobs: int, batch: int, synchronous_commit: bool) -> dict[str, Any]:
    """What PostgreSQL itself allows for a queue here: one producer inserting (one INSERT
    per job, or COPY of ``batch`` rows per transaction) while 4 threads claim with
    ``FOR UPDATE SKIP LOCKED`` and delete (one job, or ``batch``, per statement)."""
    import psycopg

    url = new_database()
    setting = "on" if synchronous_commit else "off"

    def connection() -> Any:
        conn = psycopg.connect(url, autocommit=True)
        conn.execute(f"SET synchronous_commit = {setting}")
        return conn

    with connection() as conn:
        conn.execute("CREATE TABLE floor (id bigserial PRIMARY KEY, payload bytea NOT NULL)")
    done = [0]
    lock = threading.Lock()
    finished = threading.Event()

    def consume() -> None:
        with connection() as conn:
            while not finished.is_set():
                rows = conn.execute(
                    "DELETE FROM floor WHERE id = ANY(ARRAY(SELECT id FROM floor ORDER BY id "
                    "LIMIT %s FOR UPDATE SKIP LOCKED)) RETURNING id", (batch,)).fetchall()
                if not rows:
                    time.sleep(0.0005)  # the floor's own polling: no LISTEN here
                    continue
                with lock:
                    done[0] += len(rows)
                    if done[0] >= jobs:
                        finished.set()

    consumers = [threading.Thread(target=consume) for _ in range(4)]
    started = time.perf_counter()
    for thread in consumers:
        thread.start()
    with connection() as conn:
        if batch == 1:
            for _ in range(jobs):
                conn.execute("INSERT INTO floor (payload) VALUES (%s)", (b"",))
        else:
            for _ in range(0, jobs, batch):
                with conn.transaction(), conn.cursor().copy(
                        "COPY floor (payload) FROM STDIN") as copy:
                    for _ in range(batch):
                        copy.write_row((b"",))
    finished.wait(300)
    elapsed = time.perf_counter() - started
    finished.set()
    for thread in consumers:
        thread.join(30)
    return {"jobs": jobs, "batch": batch, "synchronous_commit": setting,
            "jobs_per_s": done[0] / elapsed}
