"""The naive stage: one unbounded FIFO and a few threads. Its problems are deliberate.

The code is in :mod:`jobqueue.naive._queue`; read it next to ``jobqueue/improved/_queue.py``.
"""

from __future__ import annotations

from jobqueue.naive._queue import Job, JobQueue

__all__ = ["Job", "JobQueue"]
