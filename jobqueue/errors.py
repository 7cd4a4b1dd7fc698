"""Exceptions raised by jobqueue, under one root class.

The naive stage raises none of these: it has no bound to be full and no close to refuse work.
"""

from __future__ import annotations

import os

__all__ = [
    "DuplicateJob",
    "Fail",
    "JobCancelled",
    "JobFailed",
    "JobQueueError",
    "JobTimeout",
    "QueueClosed",
    "QueueFull",
    "StoreError",
    "StoreLocked",
]


class JobQueueError(Exception):
    """Base class of every exception jobqueue raises on purpose."""


class QueueFull(JobQueueError):
    """The job's priority queue stayed full: ``block=False``, or ``timeout`` seconds passed."""


class QueueClosed(JobQueueError):
    """The queue no longer accepts jobs because ``close()`` has started."""


class DuplicateJob(JobQueueError):
    """A job with this id is already queued, processing or waiting for a retry."""


class StoreError(JobQueueError):
    """The persistent store cannot be opened, read or written."""


class StoreLocked(StoreError):
    """Another queue, in this process or another, owns the persistent store."""

    def __init__(self, path: str, owner_pid: int | None) -> None:
        if owner_pid is None:
            owner = "another process"
        elif owner_pid == os.getpid():
            owner = (f"another JobQueue of this process ({owner_pid}): close() it before "
                     "opening the store again")
        else:
            owner = f"process {owner_pid}"
        super().__init__(f"store {path!r} is owned by {owner}")
        self.path = path
        self.owner_pid = owner_pid


class JobFailed(JobQueueError):
    """From ``result()``: the job ended FAILED. ``last_error`` is its last attempt's error."""

    def __init__(self, job_id: str, last_error: str | None, attempts: int) -> None:
        super().__init__(f"job {job_id!r} failed after {attempts} attempts: {last_error}")
        self.job_id = job_id
        self.last_error = last_error
        self.attempts = attempts


class JobCancelled(JobQueueError):
    """From ``result()``: the job was cancelled before it ran."""


class JobTimeout(JobQueueError):
    """A handler ran longer than ``job_timeout``; the attempt counts as failed."""


class Fail(JobQueueError):
    """Raised by a handler (final stage): this attempt fails and the job ends FAILED at once,
    whatever retries it has left. For errors a retry cannot mend: a malformed payload, a
    recipient that does not exist. The message becomes the job's last error."""
