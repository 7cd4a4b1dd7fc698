"""A process of the fault-injection suite: a worker or a producer of a queue in PostgreSQL.

    python fault_child.py worker   URL LOGS NAME LEASE WORKERS FSYNC
    python fault_child.py producer URL LOGS NAME COUNT FSYNC

Every line goes to a log of LOGS with one ``write`` (O_APPEND), so a process killed at any
instant leaves whole lines, and lines the test can read while it runs:

- ``worker`` runs jobs of kind ``work`` until its stdin closes, then closes its queue: each
  run appends ``<id> <name> <epoch at start>`` to ``runs``, and then sleeps the payload's
  milliseconds; each ``on_complete`` appends ``<id> <name>`` to ``hooks``. It prints
  ``started <owner>`` once its queue runs, and ``closed`` once ``close()`` returned.
- ``producer`` enqueues COUNT jobs ``<name>-<i>`` one at a time and appends ``<id> <epoch>``
  to ``acks`` once ``enqueue()`` returned: acknowledged. An enqueue that raises (the server
  is away) is tried again; one that then finds its job there already (its answer was lost
  with its connection) counts as acknowledged too. It prints ``produced`` and exits.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from jobqueue import final
from jobqueue.errors import DuplicateJob, StoreError


def _log(logs: str, name: str) -> int:
    return os.open(os.path.join(logs, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def worker(url: str, logs: str, name: str, lease: float, workers: int, fsync: bool) -> None:
    runs, hooks = _log(logs, "runs"), _log(logs, "hooks")

    def run(payload: bytes) -> None:
        job_id = final.current_job().job.id
        os.write(runs, f"{job_id} {name} {time.time():.6f}\n".encode())
        time.sleep(int(payload or b"0") / 1000)

    def hooked(info: final.JobInfo) -> None:
        os.write(hooks, f"{info.id} {name}\n".encode())

    config = final.Config(database_url=url, num_workers=workers, lease=lease, fsync=fsync,
                          handlers={"work": run}, on_complete=hooked, max_retries=50,
                          base_delay=0.05, max_delay=0.5, shutdown_timeout=60)
    with final.JobQueue(config) as queue:
        print("started", queue._core.store.owner, flush=True)  # type: ignore[attr-defined]
        sys.stdin.read()
    print("closed", flush=True)


def producer(url: str, logs: str, name: str, count: int, fsync: bool) -> None:
    acks = _log(logs, "acks")
    config = final.Config(database_url=url, num_workers=0, fsync=fsync)
    with final.JobQueue(config) as queue:
        for i in range(count):
            job = final.Job(f"{name}-{i}", b"2", kind="work")
            while True:
                try:
                    queue.enqueue(job)
                    break
                except DuplicateJob:  # the last try did commit; its answer was lost
                    break
                except StoreError:
                    time.sleep(0.05)  # the server is away: the same job again
            os.write(acks, f"{job.id} {time.time():.6f}\n".encode())
    print("produced", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    mode, url, logs, name = sys.argv[1:5]
    if mode == "worker":
        lease, workers, fsync = sys.argv[5:8]
        worker(url, logs, name, float(lease), int(workers), fsync == "fsync")
    elif mode == "producer":
        count, fsync = sys.argv[5:7]
        producer(url, logs, name, int(count), fsync == "fsync")
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
