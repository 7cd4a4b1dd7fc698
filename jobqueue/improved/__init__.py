"""The improved stage: bounded priorities, retries with backoff, a graceful close.

The code is in :mod:`jobqueue.improved._queue`; read it next to ``jobqueue/naive/_queue.py``
and ``jobqueue/final/_queue.py``.
"""

from __future__ import annotations

from jobqueue.improved._queue import Job, JobQueue, Metrics, Priority, QueueClosed, QueueFull

__all__ = ["Job", "JobQueue", "Metrics", "Priority", "QueueClosed", "QueueFull"]
