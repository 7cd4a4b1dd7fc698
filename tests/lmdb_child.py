"""A child process for the LMDB tests: owns a store, and can be killed at any instant.

Usage: python lmdb_child.py MODE STORE RUNLOG [FSYNC] [PREFIX] [COUNT]

Handlers take about a millisecond, as real ones do, so a backlog builds up to be recovered.

- ``produce``: enqueue COUNT jobs named PREFIX-i, printing each id once enqueue() returned,
  while handlers append each run's id to RUNLOG; then wait for everything and exit.
- ``drain``: recover the store, run what it holds, print "drained" and exit.
- ``hold``: open the store, print "ready", and keep it until stdin closes.
- ``finish-and-die``: like ``produce``, then make sure LMDB has every completion and die
  without closing, leaving the write-ahead log behind.
- ``cancel-and-die``: with the one worker held by a job that never ends, enqueue COUNT jobs
  named PREFIX-i and cancel each, printing its id once cancel() returned True; then kill
  this process with SIGKILL, at once.

The environment variable RETENTION sets ``status_retention`` (default: the Config's).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from jobqueue import final


def main() -> None:
    mode, store, runlog = sys.argv[1:4]
    fsync = len(sys.argv) > 4 and sys.argv[4] == "fsync"
    log_fd = os.open(runlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record_run(payload: bytes) -> None:
        time.sleep(0.001)
        os.write(log_fd, payload + b"\n")  # one write per run: whole lines even when killed

    retention = int(os.environ.get("RETENTION", final.Config().status_retention))
    workers = 1 if mode == "cancel-and-die" else 4
    config = final.Config(num_workers=workers, handler=record_run, persist_path=store,
                          fsync=fsync, status_retention=retention)
    with final.JobQueue(config) as queue:
        if mode == "cancel-and-die":
            prefix, count = sys.argv[5], int(sys.argv[6])
            running = threading.Event()

            def never_ends(payload: bytes) -> None:
                running.set()
                threading.Event().wait()

            queue.enqueue_with_handler(final.Job("blocker", b"blocker"), never_ends)
            running.wait(30)
            ids = [f"{prefix}-{i}" for i in range(count)]
            for job_id in ids:
                queue.enqueue(final.Job(job_id, job_id.encode()))
            for job_id in ids:
                if queue.cancel(job_id):
                    sys.stdout.write(job_id + "\n")
                    sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode in ("produce", "finish-and-die"):
            prefix, count = sys.argv[5], int(sys.argv[6])
            for i in range(count):
                job_id = f"{prefix}-{i}"
                queue.enqueue(final.Job(job_id, job_id.encode()))
                sys.stdout.write(job_id + "\n")
                sys.stdout.flush()
            queue.join()
            if mode == "finish-and-die":
                queue._core.store.flush()  # type: ignore[attr-defined]
                os._exit(0)
        elif mode == "drain":
            queue.join()
            print("drained", flush=True)
        elif mode == "hold":
            print("ready", flush=True)
            sys.stdin.read()
        else:
            raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
