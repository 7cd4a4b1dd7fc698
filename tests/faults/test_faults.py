"""The fault-injection suite: a real PostgreSQL server and real processes, and the faults
that break a shared queue's promises: the server restarted or crashed under load, a worker
cut off from it for longer than its lease, application transactions holding the queue's
rows, and processes killed or stopped at random. A job that kills every process that runs
it is in ``tests/test_final_postgres.py`` (it ends FAILED after exactly ``max_retries + 1``
deaths).

Each scenario ends with ``Cluster.check``: see ``conftest.py``.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import psycopg
import pytest

from bench.pgserver import PostgresServer
from faults.cluster import Cluster
from faults.relay import Relay

pytestmark = pytest.mark.slow


def wait_for(predicate: object, timeout: float = 60) -> None:
    """Wait for progress of other processes, which no event announces here."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)


def acked(cluster: Cluster) -> int:
    return len(cluster.acks())


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("mode", "fsync"), [
    ("fast", False),  # pg_ctl restart -m fast: clients told, the server back in a moment
    ("immediate", True),  # a crash: commits flushed before they were acknowledged
    ("immediate", False),  # a crash with synchronous_commit=off: its last moment may go
], ids=["restart", "crash-fsync", "crash-nosync"])
def test_the_server_restarts_or_crashes_under_load(
    server: PostgresServer, tmp_path: Path, mode: str, fsync: bool
) -> None:
    cluster = Cluster(server.new_database(), tmp_path)
    for name in ("w0", "w1"):
        cluster.worker(name, lease=5.0, workers=4, fsync=fsync)
    producers = [cluster.producer(name, 1500, fsync=fsync) for name in ("p0", "p1")]
    wait_for(lambda: acked(cluster) >= 800)
    crashed_at = time.time()
    server.restart(mode)
    for producer in producers:
        assert "produced" in producer.finish(180), producer.stderr[-3000:]
    crash = mode == "immediate" and not fsync
    figures = cluster.check(f"server {'crash' if mode == 'immediate' else 'restart'}, "
                            f"fsync={fsync}", may_lose_after=crashed_at - 1.0 if crash else None)
    assert figures.acknowledged == 3000
    if not crash:
        # No process lost its lease: nothing ran twice, and every outcome had its hook.
        assert figures.run_twice == 0 and figures.hooks_missing == 0


@pytest.mark.timeout(240)
def test_a_worker_cut_off_longer_than_its_lease(server: PostgresServer,
                                               tmp_path: Path) -> None:
    database = server.new_database()
    name = database.rsplit("dbname=", 1)[1]
    relay = Relay(server.port)  # type: ignore[arg-type]
    try:
        cluster = Cluster(database, tmp_path)
        lease = 1.5
        victim = cluster.worker("victim", lease=lease, workers=2,
                                url=server.url(name, port=relay.port))
        healthy = cluster.worker("healthy", lease=lease, workers=2,
                                 url=server.url(name, port=server.port))
        producer = cluster.producer("p", 3000)
        # Cut while the victim is at work and holds jobs: a cut after the queue drained
        # would prove nothing.
        wait_for(lambda: sum(1 for _, who, _ in cluster.runs() if who == "victim") >= 20
                 and cluster.held_by(victim) > 0)
        cluster.fault(victim)
        cut_at = time.time()
        relay.cut()
        time.sleep(4 * lease)  # the fault under test: cut off for four leases
        relay.restore()
        restored_at = time.time()
        assert "produced" in producer.finish(120), producer.stderr[-3000:]
        figures = cluster.check("partition of 4 leases, one worker of two")
    finally:
        relay.close()
    runs = cluster.runs()
    # The cut-off process started nothing it could not confirm: no start while cut (a start
    # confirmed just before the cut may reach its handler a moment later).
    while_cut = [(job_id, at) for job_id, who, at in runs
                 if who == "victim" and cut_at + 0.3 < at < restored_at]
    assert while_cut == []
    # What ran twice ran in the victim before the cut, and again in the other process.
    by_job: dict[str, list[tuple[str, float]]] = {}
    for job_id, who, at in runs:
        by_job.setdefault(job_id, []).append((who, at))
    twice = {job_id: seen for job_id, seen in by_job.items() if len(seen) > 1}
    for job_id, seen in twice.items():
        assert [who for who, _ in seen] == ["victim", "healthy"], (job_id, seen)
        assert seen[0][1] < cut_at + 0.3, (job_id, seen)
    assert figures.explained > 0  # the victim held jobs when the link was cut
    assert figures.run_twice <= 2  # at most the two the victim's workers were running
    assert figures.refused >= figures.run_twice  # their outcomes there: refused, counted
    assert figures.hooks_missing == 0  # every committed outcome had its hook, once
    assert healthy.stderr.count("taken over from") >= figures.run_twice


@pytest.mark.timeout(240)
def test_application_transactions_hold_the_queues_rows(server: PostgresServer,
                                                       tmp_path: Path) -> None:
    cluster = Cluster(server.new_database(), tmp_path)
    lease = 1.0
    for name in ("w0", "w1"):
        cluster.worker(name, lease=lease, workers=2)
    producer = cluster.producer("p", 1000)
    stop = threading.Event()
    deadlocks = [0]

    def application() -> None:
        """Transactions that lock two of the queue's rows, in the reverse order of their
        ids, as the writers commit; and once, one row held past several leases."""
        rng = random.Random(7)
        with psycopg.connect(cluster.url) as conn:
            conn.execute("SET lock_timeout = '5s'")
            conn.commit()
            held_long = False
            while not stop.is_set():
                ids = [row[0] for row in conn.execute(
                    "SELECT id FROM jobqueue_jobs WHERE status IN ('queued', 'processing') "
                    "ORDER BY random() LIMIT 2").fetchall()]
                conn.commit()
                if len(ids) < 2:
                    time.sleep(0.01)
                    continue
                try:
                    for job_id in sorted(ids, reverse=True):
                        conn.execute("SELECT 1 FROM jobqueue_jobs WHERE id = %s FOR UPDATE",
                                     (job_id,))
                        time.sleep(rng.uniform(0.005, 0.03))
                    if not held_long and acked(cluster) > 300:
                        held_long = True  # one row, past several leases
                        time.sleep(3 * lease)
                    conn.commit()
                except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable):
                    deadlocks[0] += 1
                    conn.rollback()

    app = threading.Thread(target=application, name="application", daemon=True)
    app.start()
    assert "produced" in producer.finish(120), producer.stderr[-3000:]
    wait_for(lambda: cluster.drained(0.1), timeout=120)
    stop.set()
    app.join(30)
    cluster.held_by_victims = 1  # the row held past its lease may run twice
    figures = cluster.check("application transactions on the queue's rows")
    figures.notes["application deadlocks"] = deadlocks[0]
    assert figures.run_twice <= 1


@pytest.mark.timeout(300)
def test_processes_killed_and_stopped_at_random(server: PostgresServer,
                                                tmp_path: Path) -> None:
    cluster = Cluster(server.new_database(), tmp_path)
    lease = 1.0
    rng = random.Random()
    workers = [cluster.worker(f"w{n}", lease=lease, workers=2) for n in range(3)]
    producers = [cluster.producer(name, 1500) for name in ("p0", "p1")]
    faults, spawned = 0, 3
    while any(p.popen.poll() is None for p in producers) or faults < 8:
        time.sleep(rng.uniform(0.3, 1.0))
        victim = rng.choice(workers)
        cluster.fault(victim)
        faults += 1
        if rng.random() < 0.5:
            victim.kill()  # SIGKILL at a random moment: a new process takes its place
            workers.remove(victim)
            workers.append(cluster.worker(f"w{spawned}", lease=lease, workers=2))
            spawned += 1
        else:
            victim.stop()  # SIGSTOP past its lease, then on again: its late work refused
            time.sleep(rng.uniform(1.5, 3.0) * lease)
            victim.resume()
    for producer in producers:
        assert "produced" in producer.finish(120), producer.stderr[-3000:]
    figures = cluster.check(f"{faults} workers killed or stopped at random")
    figures.notes["faults"] = faults
    # What ran twice, the faulted processes held when their fault began.
    assert figures.run_twice <= figures.explained
