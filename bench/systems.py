"""One adapter per system, all with the same small interface, each using its documented API.

An adapter runs ``handler(job_id)`` for every submitted id on its own worker threads and counts
the completions it really observed (``completed``), so a scenario never assumes work was done.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import os
import queue
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any

from jobqueue import final, improved, naive
from jobqueue._priority import Priority

Handler = Callable[[str], object]

__all__ = ["SYSTEMS", "System", "available", "make"]


class System:
    """The interface every adapter implements."""

    name = ""
    durability = "in memory: lost with the process"
    durable = False
    has_priorities = False
    has_batch = False
    #: Peers that cannot take 100,000 jobs in a few seconds run a smaller count; rates are rates.
    scale = 1.0
    #: False for a row that is not a queue behind this interface (the SQL floor).
    adapter = True

    def __init__(self) -> None:
        self._count = itertools.count()
        self._target = 0
        self._done = threading.Event()
        self.completed = 0
        self._handler: Handler = lambda job_id: None

    def _run(self, job_id: str) -> None:
        self._handler(job_id)
        done = next(self._count) + 1  # itertools.count is atomic under the GIL
        self.completed = done
        if done == self._target:
            self._done.set()

    def start(self, workers: int, handler: Handler, store: str | None = None) -> None:
        self._handler = handler
        self._start(workers, store)

    def _start(self, workers: int, store: str | None) -> None:
        raise NotImplementedError

    def expect(self, total: int) -> None:
        """Announce how many completions ``wait`` waits for."""
        self._target = total
        if self.completed >= total:
            self._done.set()

    def submit(self, job_id: str, priority: Priority = Priority.MEDIUM) -> None:
        raise NotImplementedError

    def submit_many(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self.submit(job_id)

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def drain(self, timeout: float) -> None:
        """After a restart on the same store, run what it recovered (nothing, in memory)."""

    def close(self) -> None:
        raise NotImplementedError


class Naive(System):
    name = "naive"

    def _start(self, workers: int, store: str | None) -> None:
        self._queue = naive.JobQueue(workers)

    def submit(self, job_id: str, priority: Priority = Priority.MEDIUM) -> None:
        self._queue.enqueue(naive.Job(job_id, functools.partial(self._run, job_id)))

    def close(self) -> None:
        self._queue.close()


class Improved(System):
    name = "improved"
    has_priorities = True

    def _start(self, workers: int, store: str | None) -> None:
        self._queue = improved.JobQueue(workers, queue_size=1000)

    def submit(self, job_id: str, priority: Priority = Priority.MEDIUM) -> None:
        job = improved.Job(job_id, functools.partial(self._run, job_id), priority)
        self._queue.enqueue(job)

    def close(self) -> None:
        self._queue.close()


class FinalMemory(System):
    name = "final-memory"
    has_priorities = True
    has_batch = True
    fsync = False

    def _config(self, workers: int, store: str | None) -> final.Config:
        return final.Config(num_workers=workers, queue_size=1000, handler=self._run_payload)

    def _start(self, workers: int, store: str | None) -> None:
        self._queue = final.JobQueue(self._config(workers, store))

    def _run_payload(self, payload: bytes) -> None:
        self._run(payload.decode())

    def submit(self, job_id: str, priority: Priority = Priority.MEDIUM) -> None:
        self._queue.enqueue(final.Job(job_id, job_id.encode(), priority))

    def submit_many(self, job_ids: list[str]) -> None:
        self._queue.enqueue_many(final.Job(job_id, job_id.encode()) for job_id in job_ids)

    def drain(self, timeout: float) -> None:
        self._queue.join(timeout)

    def close(self) -> None:
        self._queue.close()


class FinalLmdb(FinalMemory):
    name = "final-lmdb"
    durability = "LMDB + log, fsync=False: survives the process dying"
    durable = True

    def _config(self, workers: int, store: str | None) -> final.Config:
        assert store is not None
        return final.Config(
            num_workers=workers, queue_size=1000, handler=self._run_payload,
            persist_path=store, fsync=self.fsync,
        )


class FinalLmdbFsync(FinalLmdb):
    name = "final-lmdb-fsync"
    durability = "LMDB + log, fsync=True: survives power loss"
    fsync = True
    scale = 0.2


class FinalPostgres(FinalMemory):
    """final in PostgreSQL: a fresh database of the bench's own server for each run."""

    name = "final-postgres"
    durability = "PostgreSQL, synchronous_commit=off: survives the process dying"
    durable = True
    scale = 0.2

    def _config(self, workers: int, store: str | None) -> final.Config:
        from bench import postgres

        return final.Config(
            num_workers=workers, queue_size=1000, handler=self._run_payload,
            database_url=postgres.new_database(), fsync=self.fsync,
        )


class FinalPostgresFsync(FinalPostgres):
    name = "final-postgres-fsync"
    durability = "PostgreSQL, synchronous_commit=on: survives the server losing power"
    fsync = True
    scale = 0.1


class SqlFloor(System):
    """Not a queue: raw SQL on the bench's PostgreSQL, one INSERT per job, claimed and
    deleted with SKIP LOCKED by 4 threads (bench.postgres.sql_floor). Listed for its name
    and durability; it runs only in the "postgres" scenario."""

    name = "sql-floor"
    durability = "PostgreSQL, synchronous_commit=off"
    durable = True
    adapter = False


class SqlFloorSync(SqlFloor):
    name = "sql-floor-sync"
    durability = "PostgreSQL, synchronous_commit=on"


class SqlFloorBatch(SqlFloor):
    name = "sql-floor-batch"
    durability = "PostgreSQL, synchronous_commit=off; COPY and claims of 100"


class SqlFloorBatchSync(SqlFloor):
    name = "sql-floor-batch-sync"
    durability = "PostgreSQL, synchronous_commit=on; COPY and claims of 100"


class Procrastinate(SqlFloor):
    """procrastinate, in processes of its own (bench/pgpeers.py); the "postgres" scenario."""

    name = "procrastinate"
    durability = "PostgreSQL, synchronous_commit=off"
    package = "procrastinate"
    processes = 1


class ProcrastinateSync(Procrastinate):
    name = "procrastinate-sync"
    durability = "PostgreSQL, synchronous_commit=on"


class PgQueuer(Procrastinate):
    name = "pgqueuer"
    package = "pgqueuer"


class PgQueuerSync(PgQueuer):
    name = "pgqueuer-sync"
    durability = "PostgreSQL, synchronous_commit=on"


class PgQueuer4(PgQueuer):
    name = "pgqueuer-4-processes"
    processes = 4


class PgQueuer4Sync(PgQueuer4):
    name = "pgqueuer-4-processes-sync"
    durability = "PostgreSQL, synchronous_commit=on"


class ThreadPool(System):
    name = "threadpool"

    def _start(self, workers: int, store: str | None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(workers)

    def submit(self, job_id: str, priority: Priority = Priority.MEDIUM) -> None:
        self._pool.submit(self._run, job_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class QueueFloor(System):
    """A bare ``queue.Queue(maxsize=1000)`` and plain threads: what CPython itself costs."""

    name = "queue-floor"

    def _start(self, workers: int, store: str | None) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=1000)
        self._threads = [threading.Thread(target=self._work) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        get, run = self._queue.get, self._run
        while (job_id := get()) is not None:
            run(job_id)

    def submit(self, job_id: str, priority: Priority = Priority.MEDIUM) -> None:
        self._queue.put(job_id)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(60)


class PersistQueue(System):
    """persist-queue's ``SQLiteAckQueue``, acked rows purged every 1,000 (its workaround)."""

    name = "persist-queue"
    durable = True
    durability = "SQLite WAL, synchronous=OFF: survives the process dying"
    scale = 0.05
    synchronous = "OFF"

    def _start(self, workers: int, store: str | None) -> None:
        import persistqueue

        assert store is not None
        self._queue = persistqueue.SQLiteAckQueue(store, multithreading=True, auto_commit=True)
        for connection in (self._queue._conn, self._queue._putter):  # no public pragma API
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
        self._acked = itertools.count(1)
        self._purge = threading.Lock()
        self._threads = [threading.Thread(target=self._work) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    _STOP = "\x00stop"  # persist-queue reads a stored None as "empty"

    def _work(self) -> None:
        while True:
            item = self._queue.get(block=True)
            if item == self._STOP:
                self._queue.ack(item)
                return
            self._run(item)
            self._queue.ack(item)
            if next(self._acked) % 1000 == 0:
                with self._purge:
                    self._queue.clear_acked_data(max_delete=None, keep_latest=0)

    def submit(self, job_id: str, priority: Priority = Priority.MEDIUM) -> None:
        self._queue.put(job_id)

    def drain(self, timeout: float) -> None:
        pass  # close() queues one stop marker per worker behind the recovered jobs

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(self._STOP)
        for thread in self._threads:
            thread.join(60)
        self._queue.close()


class PersistQueueFsync(PersistQueue):
    name = "persist-queue-fsync"
    durability = "SQLite WAL, synchronous=FULL (its default): survives power loss"
    synchronous = "FULL"
    scale = 0.01


class Huey(System):
    """huey's ``SqliteHuey`` with a thread consumer, in this process."""

    name = "huey"
    durable = True
    durability = "SQLite WAL, synchronous=OFF (fsync=False): survives the process dying"
    scale = 0.05
    fsync = False

    def _start(self, workers: int, store: str | None) -> None:
        import huey as huey_package

        assert store is not None
        os.makedirs(store, exist_ok=True)
        self._huey = huey_package.SqliteHuey(
            filename=f"{store}/huey.db", fsync=self.fsync, immediate=False
        )
        self._task = self._huey.task()(self._run)
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        self._saved_signals = saved
        self._consumer = self._huey.create_consumer(
            workers=workers, worker_type="thread", periodic=False
        )
        self._consumer.start()

    def submit(self, job_id: str, priority: Priority = Priority.MEDIUM) -> None:
        self._task(job_id)

    def close(self) -> None:
        self._consumer.stop(graceful=True)
        for signum, handler in self._saved_signals.items():
            signal.signal(signum, handler)
        self._huey.storage.close()


class HueyFsync(Huey):
    name = "huey-fsync"
    durability = "SQLite WAL, synchronous=FULL (fsync=True): survives power loss"
    fsync = True
    scale = 0.02


SYSTEMS: dict[str, type[System]] = {
    cls.name: cls
    for cls in (
        Naive, Improved, FinalMemory, FinalLmdb, FinalLmdbFsync, FinalPostgres,
        FinalPostgresFsync, ThreadPool, QueueFloor, PersistQueue, PersistQueueFsync, Huey,
        HueyFsync, SqlFloor, SqlFloorSync, SqlFloorBatch, SqlFloorBatchSync, Procrastinate,
        ProcrastinateSync, PgQueuer, PgQueuerSync, PgQueuer4, PgQueuer4Sync,
    )
}
PEER_PACKAGES = {
    "persist-queue": "persistqueue", "persist-queue-fsync": "persistqueue",
    "huey": "huey", "huey-fsync": "huey",
}


def available(name: str) -> str | None:
    """None if the system can run here, else why not (a missing optional package)."""
    if name.startswith(("final-postgres", "sql-floor", "procrastinate", "pgqueuer")):
        from bench import postgres

        why = postgres.unavailable()
        if why is not None or not name.startswith(("procrastinate", "pgqueuer")):
            return why
        package = SYSTEMS[name].package  # type: ignore[attr-defined]
        try:
            __import__(package)
        except ImportError:
            return f"{package} is not installed (pip install '.[bench]')"
        return None
    package = PEER_PACKAGES.get(name)
    if package is None:
        return None
    try:
        __import__(package)
    except ImportError:
        return f"{package} is not installed (pip install '.[bench]')"
    return None


class Running:
    """A started system with a temporary store, closed and cleaned up on exit."""

    def __init__(self, name: str, workers: int, handler: Handler) -> None:
        self.system = SYSTEMS[name]()
        self._store = tempfile.mkdtemp(prefix=f"jobqueue-bench-{name}-")
        self.system.start(workers, handler, self._store + "/store")

    def __enter__(self) -> System:
        return self.system

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.system.close()
        finally:
            shutil.rmtree(self._store, ignore_errors=True)


def make(name: str, workers: int, handler: Handler = lambda job_id: None) -> Running:
    return Running(name, workers, handler)


def ids(prefix: str, count: int) -> Iterable[str]:
    return (f"{prefix}-{i}" for i in range(count))
