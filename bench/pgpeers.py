"""The Python PostgreSQL queues users pick, run as their documentation recommends, in a fresh
interpreter each: ``python bench/pgpeers.py PEER URI JOBS SYNC PROCESSES [PRODUCERS]``.

- procrastinate: ``App(PsycopgConnector)``, schema applied as ``procrastinate schema --apply``
  does, one worker process running ``run_worker_async(concurrency=10)`` with a pool of
  concurrency + 1 connections (its advice for short jobs); jobs deferred one
  ``defer_async()`` call each, by PRODUCERS coroutines at once (default 1) sharing a pool of
  as many connections.
- PgQueuer: ``Queries.install()`` as ``pgq install``; PROCESSES worker processes, each one
  ``QueueManager`` on a dedicated asyncpg connection under ``pgqueuer.run`` with uvloop and
  ``batch_size=100``, as ``pgq run --batch-size 100`` starts it; jobs enqueued one
  ``Queries.enqueue()`` call each, by PRODUCERS coroutines at once (default 1), each on a
  connection of its own.

``synchronous_commit`` is set per connection (SYNC ``on`` or ``off``). The rate is jobs over the
time from the first enqueue to the last completion, read from each peer's own tables. Prints
one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sys
import time


def _procrastinate_app(uri: str, sync: str, pool: int):  # type: ignore[no-untyped-def]
    import procrastinate

    options = "" if sync == "on" else "options=-c%20synchronous_commit%3Doff"
    conninfo = uri + ("&" if "?" in uri else "?") + options if options else uri
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=conninfo, max_size=pool)
    )

    @app.task(name="noop")
    async def noop() -> None:
        pass

    return app


def _procrastinate_worker(uri: str, sync: str) -> None:
    app = _procrastinate_app(uri, sync, 11)

    async def run() -> None:
        async with app.open_async():
            await app.run_worker_async(concurrency=10)  # until SIGTERM

    asyncio.run(run())


async def _procrastinate(uri: str, jobs: int, sync: str, processes: int,
                         producers: int) -> float:
    app = _procrastinate_app(uri, sync, max(4, producers))
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        workers = _start(_procrastinate_worker, (uri, sync), processes)
        try:
            count = "SELECT count(*) AS n FROM procrastinate_workers"
            while (await app.connector.execute_query_one_async(count))["n"] < processes:
                await asyncio.sleep(0.05)
            noop = app.tasks["noop"]
            async def produce(count: int) -> None:
                for _ in range(count):
                    await noop.defer_async()

            started = time.perf_counter()
            await asyncio.gather(*(produce(jobs // producers) for _ in range(producers)))
            left = ("SELECT EXISTS (SELECT 1 FROM procrastinate_jobs "
                    "WHERE status IN ('todo', 'doing')) AS x")
            while (await app.connector.execute_query_one_async(left))["x"]:
                await asyncio.sleep(0.01)
            return time.perf_counter() - started
        finally:
            _stop(workers)


def _pgqueuer_connect(uri: str, sync: str):  # type: ignore[no-untyped-def]
    import asyncpg

    return asyncpg.connect(uri, server_settings={"synchronous_commit": sync,
                                                 "application_name": "bench-pgqueuer"})


def _pgqueuer_worker(uri: str, sync: str) -> None:
    import contextlib

    import pgqueuer
    import uvloop
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    @contextlib.asynccontextmanager
    async def factory():  # type: ignore[no-untyped-def]
        manager = QueueManager(Queries(AsyncpgDriver(await _pgqueuer_connect(uri, sync))))

        @manager.entrypoint("noop")
        async def noop(job: object) -> None:
            pass

        yield manager

    # What `pgq run --batch-size 100` runs (the CLI itself fails to start with the typer
    # installed beside pgqueuer 1.6); SIGTERM drains and stops. Its performance guide says
    # to raise batch_size above the default 10 for short jobs.
    uvloop.run(pgqueuer.run(factory, batch_size=100))


async def _pgqueuer(uri: str, jobs: int, sync: str, processes: int, producers: int) -> float:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await _pgqueuer_connect(uri, sync)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    more = [await _pgqueuer_connect(uri, sync) for _ in range(producers - 1)]
    each = [queries] + [Queries(AsyncpgDriver(other)) for other in more]
    workers = _start(_pgqueuer_worker, (uri, sync), processes)
    try:
        connected = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND application_name = 'bench-pgqueuer'")
        while await conn.fetchval(connected) < processes + producers:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # each has listened and looked once: idle, as at steady state

        async def produce(producer: Queries, count: int) -> None:
            for _ in range(count):
                await producer.enqueue("noop", None)

        started = time.perf_counter()
        await asyncio.gather(*(produce(producer, jobs // producers) for producer in each))
        while await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pgqueuer)"):  # done: in its log
            await asyncio.sleep(0.01)
        return time.perf_counter() - started
    finally:
        _stop(workers)
        for connection in (conn, *more):
            await connection.close()


def _start(target, args, count):  # type: ignore[no-untyped-def]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=target, args=args) for _ in range(count)]
    for worker in workers:
        worker.start()
    return workers


def _stop(workers) -> None:  # type: ignore[no-untyped-def]
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(30)


def main() -> None:
    peer, uri, jobs, sync, processes = sys.argv[1:6]
    producers = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    total = int(jobs) // producers * producers
    run = {"procrastinate": _procrastinate, "pgqueuer": _pgqueuer}[peer]
    seconds = asyncio.run(run(uri, total, sync, int(processes), producers))
    print(json.dumps({"jobs": total, "processes": int(processes), "producers": producers,
                      "synchronous_commit": sync, "jobs_per_s": total / seconds}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
