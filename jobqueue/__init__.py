"""In-process, thread-based job queues, in three stages to compare side by side.

- :mod:`jobqueue.naive`: one unbounded FIFO; its problems are deliberate.
- :mod:`jobqueue.improved`: bounded priorities, retries, a graceful close.
- :mod:`jobqueue.final`: persistence, fairness, status, metrics, timeouts.
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging  # noqa: E402

# A library's loggers stay silent until the application configures logging (the logging
# HOWTO's advice): without this, Python's last-resort handler prints every WARNING and
# every failure's traceback to stderr.
logging.getLogger("jobqueue").addHandler(logging.NullHandler())

from jobqueue import final, improved, naive  # noqa: E402  (the version is set first)

__all__ = ["__version__", "final", "improved", "naive"]
