"""The retention of finished jobs in a PostgreSQL queue: the newest ``retention`` finished
jobs are kept (for ``status()``, ``result()`` and dead letters), older ones deleted.

The writer trims once a tenth of the retention has finished since it last did, a batch at a
time and a few batches per pass, before anyone hears of the batch that finished them: a
read after ``wait()`` finds what the retention keeps, and no more. Every process of a queue
trims; the statement skips rows another transaction holds, so two never wait for each other.
"""

from __future__ import annotations

import logging
from typing import Any

from jobqueue.final.stores.postgres.connections import classify
from jobqueue.final.stores.postgres.queries import Q
from jobqueue.final.stores.postgres.rows import first_line

__all__ = ["Retention"]

logger = logging.getLogger("jobqueue")

#: Finished jobs deleted per statement, and statements per pass of the writer.
_TRIM_BATCH = 1000
_TRIM_PASSES = 10


class Retention:
    """Counts the jobs finished by this process and trims when due; the writer thread's
    own (no lock)."""

    def __init__(self, queue: str, retention: int) -> None:
        self.queue = queue
        self.retention = retention
        self._finished = 0  # since the last trim

    def finished(self, count: int) -> None:
        self._finished += count

    def trim_if_due(self, conn: Any) -> None:
        """Delete finished jobs past the retention, newest kept. A failure other than a lost
        connection is logged: the moves are written, only the trim waits."""
        if self._finished <= self.retention // 10:
            return
        self._finished = 0
        try:
            for _ in range(_TRIM_PASSES):
                deleted = conn.execute(Q["trim"], {"queue": self.queue, "keep": self.retention,
                                                   "batch": _TRIM_BATCH}).rowcount
                if deleted < _TRIM_BATCH:
                    return
            self._finished = self.retention  # more next time
        except Exception as exc:
            if classify(exc, conn) == "connection":
                raise
            logger.error("deleting finished jobs past the retention failed: %s",
                         first_line(exc))
