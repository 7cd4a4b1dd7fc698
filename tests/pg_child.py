"""A child process serving a queue in PostgreSQL, for the multi-process tests.

Usage: python pg_child.py MODE URL QUEUE WORKERS RUNLOG LEASE [MAX_RETRIES]

Every run of a handler appends ``<job id> <pid>`` to RUNLOG, one write each (O_APPEND: whole
lines, and a process killed after the write leaves it there).

- ``drain``: run jobs until no process has work in the queue (``join()``), then close.
- ``poison``: as ``drain``, but the job ``poison`` ends the process (``os._exit``), with
  ``max_retries=2`` (or MAX_RETRIES).
- ``hold``: the handler of the first job waits for a line ``go`` on stdin, then raises, as
  every later job's handler does; close once stdin says ``quit``. Used to stop the process
  with a job in hand, and see what it writes when it resumes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from jobqueue import final


def main() -> None:
    mode, url, queue_name, workers, runlog, lease = sys.argv[1:7]
    retries = int(sys.argv[7]) if len(sys.argv) > 7 else {"hold": 0, "poison": 2}.get(mode, 3)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    log_fd = os.open(runlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    go = threading.Event()

    def run(payload: bytes) -> None:
        job_id = final.current_job().job.id
        if mode == "poison" and job_id == "poison":
            os._exit(3)  # the handler takes its process down, every time
        os.write(log_fd, f"{job_id} {pid}\n".encode())
        if mode == "hold":
            go.wait()
            raise RuntimeError("late")

    config = final.Config(
        database_url=url, queue_name=queue_name, num_workers=int(workers), lease=float(lease),
        handlers={"work": run}, max_retries=retries,
        base_delay=0.01,
        queue_size=20, shutdown_timeout=30,
        # "hold" stalls holding jobs beyond its running one; the others claim as they go.
        prefetch=64 if mode == "hold" else None,
    )
    with final.JobQueue(config) as queue:
        print("started", queue._core.store.owner, flush=True)  # type: ignore[attr-defined]
        if mode in ("drain", "poison"):
            queue.join()
        else:
            for line in sys.stdin:
                if line.strip() == "go":
                    go.set()
                elif line.strip() == "quit":
                    break


if __name__ == "__main__":
    main()
