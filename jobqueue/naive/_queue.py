"""The naive stage: one unbounded FIFO and a few threads. Its problems are deliberate.

Read it next to ``jobqueue/improved/_queue.py``, which fixes them one by one:

- no backpressure: ``enqueue`` never blocks, so a fast producer grows the backlog without
  limit (memory is the only bound);
- no priorities: jobs run in arrival order, urgent or not;
- no retries: a handler that raises is logged and its job is gone;
- a close that does not wait: ``close`` returns at once, and jobs accepted before it that
  have not started are dropped;
- no status, no metrics, no persistence.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Job", "JobQueue"]

logger = logging.getLogger("jobqueue")


@dataclass(frozen=True)
class Job:
    """A unit of work: ``handler()`` is called once, by some worker thread."""

    id: str
    handler: Callable[[], object]

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TypeError(f"id must be a str, not {type(self.id).__name__}")
        if not self.id:
            raise ValueError("id must be a non-empty str")
        if not callable(self.handler):
            raise TypeError(f"handler must be callable, not {type(self.handler).__name__}")


# Put once per worker by close(): a worker that takes it exits.
_STOP = object()


class JobQueue:
    """Runs jobs on ``num_workers`` threads, in arrival order, from one unbounded queue."""

    def __init__(self, num_workers: int) -> None:
        if isinstance(num_workers, bool) or not isinstance(num_workers, int):
            raise TypeError(f"num_workers must be an int, not {type(num_workers).__name__}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self._jobs: queue.Queue[Job | object] = queue.Queue()  # unbounded: the problem
        # Set by close(); workers check it between jobs and drop what is left.
        self._closed = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"jobqueue-naive-worker-{n}", daemon=True)
            for n in range(num_workers)
        ]
        for thread in self._threads:
            thread.start()

    def enqueue(self, job: Job) -> None:
        """Add a job. Never blocks, however long the backlog: there is no bound.

        After ``close()`` the job is accepted all the same and never runs (another problem).
        """
        if not isinstance(job, Job):
            raise TypeError(f"job must be a jobqueue.naive.Job, not {type(job).__name__}")
        self._jobs.put(job)

    def backlog(self) -> int:
        """How many jobs are waiting (approximate while workers run)."""
        return self._jobs.qsize()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP or self._closed.is_set():
                return  # whatever is still queued is dropped
            assert isinstance(job, Job)
            try:
                job.handler()
            except Exception:
                logger.exception("job %r failed; it is not retried", job.id)

    def close(self) -> None:
        """Tell the workers to stop and return at once, without waiting for anything.

        Jobs still queued are dropped; running handlers finish on their own afterwards.
        """
        self._closed.set()
        for _ in self._threads:
            self._jobs.put(_STOP)

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
