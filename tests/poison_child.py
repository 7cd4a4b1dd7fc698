"""A child process owning a store with one poison job: its handler kills the process.

Usage: python poison_child.py MODE STORE RUNLOG HOW [OTHERS]

- ``seed``: enqueue the poison job first, then OTHERS ordinary jobs, and only then let the
  worker start (one worker: the poison job runs first, and the process dies).
- ``restart``: open the store, run what it holds; print the poison job's status, attempts and
  last error once nothing is left (if the process lives that long).

HOW is how the poison handler dies: ``exit`` (``os._exit``) or ``sigkill``. Ordinary jobs
append their id to RUNLOG, one write each.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from jobqueue import final


def main() -> None:
    mode, store, runlog, how = sys.argv[1:5]
    log_fd = os.open(runlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seeded = threading.Event()
    if mode == "restart":
        seeded.set()

    def poison(payload: bytes) -> None:
        seeded.wait()
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)

    def ordinary(payload: bytes) -> None:
        os.write(log_fd, payload + b"\n")

    config = final.Config(
        num_workers=1, persist_path=store, max_retries=2, base_delay=0.2, jitter=0.0,
        handlers={"poison": poison, "ordinary": ordinary},
    )
    with final.JobQueue(config) as queue:
        if mode == "seed":
            queue.enqueue(final.Job("poison", kind="poison"))
            for i in range(int(sys.argv[5])):
                queue.enqueue(final.Job(f"job-{i}", f"job-{i}".encode(), kind="ordinary"))
            seeded.set()
        queue.join()
        info = queue.info("poison")
        assert info is not None
        print(info.status.value, info.attempts, info.last_error, flush=True)


if __name__ == "__main__":
    main()
