"""In-process, thread-based job queues, in three stages to compare side by side.

- :mod:`jobqueue.naive`: one unbounded FIFO; its problems are deliberate.
- :mod:`jobqueue.improved`: bounded priorities, retries, a graceful close.
- :mod:`jobqueue.final`: persistence, fairness, status, metrics, timeouts.
"""

from __future__ import annotations

__version__ = "0.1.0"

from jobqueue import final, improved, naive  # noqa: E402  (the version is set first)

__all__ = ["__version__", "final", "improved", "naive"]
