"""What a running handler can learn about its job: :func:`current_job`.

Python cannot stop a thread, so timeouts and shutdown are cooperative: the worker sets a
context before calling the handler, and a long handler asks it whether to give up. There is no
per-job Event, Timer or thread: a deadline, and one Event per queue that close() sets when it
stops waiting.
"""

from __future__ import annotations

import threading
import time

from jobqueue.final._checks import check_timeout
from jobqueue.final._model import Job

__all__ = ["JobContext", "current_job", "on_hook", "on_worker", "own_thread", "running_in",
           "worker_local"]

#: Where a worker sets ``context`` before calling a handler, and clears it once the attempt's
#: failure, if any, is logged; ``hook_of``, the core, while it calls a hook; and where each of
#: a queue's threads sets ``owner``, its core.
worker_local = threading.local()


class JobContext:
    """The job a handler runs, its attempt number, and whether it should give up."""

    __slots__ = ("job", "attempt", "deadline", "_shutdown", "_owner", "_entry")

    def __init__(
        self,
        job: Job,
        attempt: int,
        deadline: float | None,
        shutdown: threading.Event,
        owner: object = None,
        entry: object = None,
    ) -> None:
        self.job = job
        #: 1 for the first run, 2 for the first retry, and so on.
        self.attempt = attempt
        #: ``time.monotonic()`` value after which the attempt counts as timed out, or None.
        self.deadline = deadline
        self._shutdown = shutdown
        # The queue's core and the job's entry: how the queue knows a call comes from one of
        # its own handlers, which must not wait for its own job.
        self._owner = owner
        self._entry = entry

    def cancelled(self) -> bool:
        """True once the job has timed out, ``cancel()`` was called for it, or shutdown has
        stopped waiting for it."""
        if self._shutdown.is_set():
            return True
        owner = self._owner
        if owner is not None and self._entry in owner.stop_asked:  # type: ignore[attr-defined]
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def wait(self, seconds: float | None) -> bool:
        """Sleep up to ``seconds`` (None or ``inf``: until cancelled), waking early on
        cancellation; return :meth:`cancelled`. ``ValueError`` for NaN or a negative number.
        """
        timeout = check_timeout("seconds", seconds)
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
            timeout = min(timeout, threading.TIMEOUT_MAX)
        owner = self._owner
        if owner is None:
            self._shutdown.wait(timeout)
            return self.cancelled()
        # An Event for this sleep alone, which cancel() and close() set: made here, not per
        # job, as few handlers sleep. Published before cancelled() is read, so that a cancel
        # or a close either sees it or comes before the read.
        wake = threading.Event()
        sleepers = owner.sleepers  # type: ignore[attr-defined]
        sleepers[self._entry] = wake
        try:
            if not self.cancelled():
                wake.wait(timeout)
        finally:
            sleepers.pop(self._entry, None)
        return self.cancelled()


def own_thread(owner: object) -> bool:
    """Whether the calling thread is one of ``owner``'s own (a worker, the retry timer, the
    claimer), which a queue marks as it starts them (``worker_local.owner``)."""
    return getattr(worker_local, "owner", None) is owner


def on_worker(owner: object) -> bool:
    """Whether the calling thread is one of ``owner``'s workers, in a handler or a hook:
    a thread only another worker taking a job could unblock, were it to wait for room."""
    return (running_in(owner) is not None
            or getattr(worker_local, "hook_of", None) is owner)


def on_hook(owner: object) -> bool:
    """Whether the calling thread is running one of ``owner``'s hooks."""
    return getattr(worker_local, "hook_of", None) is owner


def running_in(owner: object) -> JobContext | None:
    """The context of the job the calling thread runs as a handler of ``owner``, or None."""
    context: JobContext | None = getattr(worker_local, "context", None)
    if context is not None and context._owner is owner:
        return context
    return None


def current_job() -> JobContext:
    """Return the context of the job the calling handler is running.

    A long handler checks ``current_job().cancelled()`` or sleeps with
    ``current_job().wait(seconds)``. Raises ``RuntimeError`` outside a handler.
    """
    context: JobContext | None = getattr(worker_local, "context", None)
    if context is None:
        raise RuntimeError("current_job() called outside a jobqueue handler")
    return context
