"""``python -m bench.pgcosts``: where the PostgreSQL store's time goes, on this machine.

Three measures, each on a throwaway server (bench/pgserver.py, durable, as the benchmark's):

- **a move**: the writer's statement (``move`` in ``stores/postgres/sql/queries.sql``) for
  1, 4, 8 and 32 moves of held rows, median of 200, against ``SELECT 1``: the fixed cost of
  a statement and what each row adds (starts and outcomes are such moves; every job makes
  at least two);
- **the writer under load**: ``enqueue_many`` of N no-op jobs run by 4 workers in this
  process, as the benchmark's ``enqueue_many`` row: the writer's statements, moves and
  starts per statement, and the time they took, against the run's length;
- **group commit**: ``enqueue()`` alone (no workers), from 1, 4 and 8 threads at once, with
  concurrent single inserts grouped into one statement (as shipped) and without (each its
  own statement: ``_pg_group`` bypassed), ``synchronous_commit`` off and on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

from bench import postgres
from jobqueue import final
from jobqueue.final.stores.postgres import writer as _pg_writer
from jobqueue.final.stores.postgres.queries import Q
from jobqueue.final.stores.postgres.store import PostgresStore


def move_costs(url: str) -> dict[str, float]:
    import psycopg

    final.JobQueue(final.Config(database_url=url, num_workers=0)).close()  # the tables
    rows = 2_000
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET plan_cache_mode = force_generic_plan")  # as the writer's
        conn.execute("SET enable_seqscan = off")
        conn.execute(
            "INSERT INTO jobqueue_jobs (queue, id, payload, priority, kind, created_at, "
            "status, seq, owner, lease_id, lease_until) SELECT 'default', 'j' || g, '', 1, "
            "'', 0, 'queued', g, 'bench', g, now() + interval '1 hour' "
            "FROM generate_series(1, %s) AS g", (rows,))
        costs: dict[str, float] = {}
        for count in (1, 4, 8, 32):
            times = []
            for rep in range(200):
                ids = [(rep * count + k) % rows + 1 for k in range(count)]
                moves = json.dumps([[f"j{i}", i, "processing", rep + 1, None, 1.0, None,
                                     None, True, None, False] for i in ids])
                begin = time.perf_counter()
                conn.execute(Q["move"], {"queue": "default", "tag": "bench",
                                                "lease": 30.0, "notify": False,
                                                "moves": moves}).fetchall()
                times.append(time.perf_counter() - begin)
            costs[f"{count}_moves_ms"] = statistics.median(times) * 1e3
        begin = time.perf_counter()
        for _ in range(500):
            conn.execute("SELECT 1").fetchall()
        costs["select_1_ms"] = (time.perf_counter() - begin) / 500 * 1e3
    return costs


def writer_under_load(url: str, jobs: int) -> dict[str, float]:
    timed: list[tuple[float, int, int]] = []
    execute = _pg_writer.Writer._execute

    def measured(self: Any, conn: Any, moves: list[Any], notify: bool) -> dict[str, str]:
        begin = time.perf_counter()
        try:
            return execute(self, conn, moves, notify)
        finally:
            starts = sum(1 for move in moves if move.record.status is final.Status.PROCESSING)
            timed.append((time.perf_counter() - begin, len(moves), starts))

    _pg_writer.Writer._execute = measured  # type: ignore[method-assign]
    try:
        done = threading.Event()
        count = [0]
        lock = threading.Lock()

        def handler(payload: bytes) -> None:
            with lock:
                count[0] += 1
                if count[0] == jobs:
                    done.set()

        config = final.Config(database_url=url, num_workers=4, handler=handler,
                              queue_name="load")
        with final.JobQueue(config) as queue:
            begin = time.perf_counter()
            for first in range(0, jobs, 1000):
                queue.enqueue_many(final.Job(f"j{i}") for i in range(first,
                                                                      min(jobs, first + 1000)))
            done.wait(300)
            elapsed = time.perf_counter() - begin
    finally:
        _pg_writer.Writer._execute = execute  # type: ignore[method-assign]
    return {
        "jobs": jobs, "jobs_per_s": jobs / elapsed, "seconds": elapsed,
        "statements": len(timed),
        "writer_seconds": sum(t for t, _, _ in timed),
        "moves_per_statement": statistics.mean(m for _, m, _ in timed),
        "starts_per_statement": statistics.mean(s for _, _, s in timed),
        "statement_ms_median": statistics.median(t for t, _, _ in timed) * 1e3,
    }


def group_commit(url: str, jobs: int, fsync: bool) -> dict[str, float]:
    grouped_insert = PostgresStore._insert_own

    def one_statement_each(self: PostgresStore, records: Any, owner: Any, notify: Any,
                           revive: bool) -> Any:
        return self._insert_tried(records, owner, notify, revive)

    rates: dict[str, float] = {}
    for grouped in (True, False):
        PostgresStore._insert_own = (  # type: ignore[method-assign]
            grouped_insert if grouped else one_statement_each)
        try:
            for producers in (1, 4, 8):
                name = f"{'grouped' if grouped else 'alone'}-{producers}-{int(fsync)}"
                config = final.Config(database_url=url, num_workers=0, fsync=fsync,
                                      queue_name=name)
                with final.JobQueue(config) as queue:
                    each = jobs // producers
                    barrier = threading.Barrier(producers + 1)

                    def produce(n: int, queue: final.JobQueue = queue,
                                each: int = each, barrier: threading.Barrier = barrier
                                ) -> None:
                        barrier.wait()
                        for i in range(each):
                            queue.enqueue(final.Job(f"{n}-{i}"))

                    threads = [threading.Thread(target=produce, args=(n,))
                               for n in range(producers)]
                    for thread in threads:
                        thread.start()
                    barrier.wait()
                    begin = time.perf_counter()
                    for thread in threads:
                        thread.join()
                    rates[name] = each * producers / (time.perf_counter() - begin)
        finally:
            PostgresStore._insert_own = grouped_insert  # type: ignore[method-assign]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pgcosts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs under load")
    parser.add_argument("--inserts", type=int, default=4_000, help="jobs per insert run")
    args = parser.parse_args()
    why = postgres.unavailable()
    if why is not None:
        parser.exit(2, f"python -m bench.pgcosts: {why}\n")
    report = {
        "move": move_costs(postgres.new_database()),
        "writer under load": writer_under_load(postgres.new_database(), args.jobs),
        "group commit, synchronous_commit=off": group_commit(
            postgres.new_database(), args.inserts, fsync=False),
        "group commit, synchronous_commit=on": group_commit(
            postgres.new_database(), args.inserts, fsync=True),
    }
    for part, figures in report.items():
        print(f"{part}:")
        for key, value in figures.items():
            print(f"  {key:<28} {value:,.3f}" if isinstance(value, float)
                  else f"  {key:<28} {value:,}")


if __name__ == "__main__":
    main()
