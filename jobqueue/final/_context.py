"""What a running handler can learn about its job: :func:`current_job`.

Python cannot stop a thread, so timeouts and shutdown are cooperative: the worker sets a
context before calling the handler, and a long handler asks it whether to give up. There is no
per-job Event, Timer or thread: a deadline, and one Event per queue that close() sets when it
stops waiting.
"""

from __future__ import annotations

import threading
import time

from jobqueue.final._model import Job

__all__ = ["JobContext", "current_job", "worker_local"]

#: Where a worker sets ``context`` before calling a handler, and clears it after.
worker_local = threading.local()


class JobContext:
    """The job a handler runs, its attempt number, and whether it should give up."""

    __slots__ = ("job", "attempt", "deadline", "_shutdown")

    def __init__(
        self, job: Job, attempt: int, deadline: float | None, shutdown: threading.Event
    ) -> None:
        self.job = job
        #: 1 for the first run, 2 for the first retry, and so on.
        self.attempt = attempt
        #: ``time.monotonic()`` value after which the attempt counts as timed out, or None.
        self.deadline = deadline
        self._shutdown = shutdown

    def cancelled(self) -> bool:
        """True once the job has timed out or shutdown has stopped waiting for it."""
        if self._shutdown.is_set():
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on cancellation; return :meth:`cancelled`."""
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        self._shutdown.wait(seconds)
        return self.cancelled()


def current_job() -> JobContext:
    """Return the context of the job the calling handler is running.

    A long handler checks ``current_job().cancelled()`` or sleeps with
    ``current_job().wait(seconds)``. Raises ``RuntimeError`` outside a handler.
    """
    context: JobContext | None = getattr(worker_local, "context", None)
    if context is None:
        raise RuntimeError("current_job() called outside a jobqueue handler")
    return context
