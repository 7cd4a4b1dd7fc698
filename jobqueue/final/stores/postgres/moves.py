"""The moves the PostgreSQL store's writer writes: one per held job told and not yet
settled, encoded for the query ``move`` (one JSON parameter per batch), and the fate of one
whose values PostgreSQL refused."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from jobqueue.final._states import Status
from jobqueue.final.stores.base import JobRecord, JsonResult
from jobqueue.final.stores.postgres.connections import classify
from jobqueue.final.stores.postgres.queries import Q
from jobqueue.final.stores.postgres.rows import first_line

__all__ = ["Move", "by_id", "drop", "encoded", "supersede"]

logger = logging.getLogger("jobqueue")


class Move:
    """One move of a held job, told and not yet settled. ``lease`` is the claim it is
    conditional on, negative when the move hands the job back (unheld after it).

    ``gate``, a lock held until the move settles, is made for whoever waits for its fate:
    the writer releases it, and only its waiters wake (no condition shared by every
    worker, which woke them all at every batch). A move a newer move of its job replaced
    before it was written (``replaced``) settles with the newer one, whose record carries
    it forward; but a start so replaced settles at once as "s": its worker must not run a
    job that was handed back meanwhile (close() gave up on it).
    """

    __slots__ = ("record", "lease", "number", "told_at", "fate", "gate", "replaced")

    def __init__(self, record: JobRecord, lease: int, number: int, told_at: float) -> None:
        self.record = record
        self.lease = lease
        self.number = number
        self.told_at = told_at  # monotonic: the lease it is under runs at least this long
        self.fate: str | None = None  # "w"ritten, "r"efused, "d"ropped or "s"uperseded
        self.gate: Any = None
        self.replaced: list[Move] = []

    def settle_locked(self, fate: str) -> int:
        """Give this move, and those it replaced, their fate, once; the gates released."""
        released = 0
        for move in (self, *self.replaced):
            if move.fate is None:
                move.fate = fate
                if move.gate is not None:
                    move.gate.release()
                    released += 1
        self.replaced = []
        return released

    def size(self) -> int:
        """Bytes it adds to a batch, about."""
        record = self.record
        return (200 + len(record.id) + len(record.last_error or "")
                + len(record.result or b"") * 4 // 3)


def supersede(old: Move, new: Move) -> None:
    """``new`` replaces ``old``, an unwritten move of the same job (call with the lock)."""
    if old.gate is not None and old.lease > 0 and old.record.status is Status.PROCESSING:
        old.settle_locked("s")  # a start: see Move
    else:
        new.replaced += [old, *old.replaced]
        old.replaced = []


def by_id(move: Move) -> str:
    return move.record.id


def encoded(move: Move) -> list[Any]:
    """A move as the query ``move`` reads it."""
    (job_id, _, _, _, _, _, status, attempts, last_error, started_at, finished_at, due_at, _,
     result) = move.record
    encoded = None if result is None else base64.b64encode(result).decode()
    return [job_id, abs(move.lease), status.value, attempts, last_error, started_at,
            finished_at, due_at, move.lease > 0, encoded, type(result) is JsonResult]


def drop(conn: Any, move: Move, exc: BaseException, queue: str, tag: str) -> None:
    """A move PostgreSQL refused the values of (a data error): logged, and its job
    recorded FAILED with PostgreSQL's words, so that the mistake is seen and not run for
    ever. A lost connection is raised; another error is logged."""
    record = move.record
    error = f"PostgreSQL refused to record this job as {record.status.value}: " \
            f"{first_line(exc)}"
    logger.error("job %r: %s; it is recorded as failed instead", record.id, error)
    try:
        conn.execute(Q["drop"], {"queue": queue, "id": record.id, "tag": tag,
                                 "lease": abs(move.lease), "error": error,
                                 "now": time.time()}).fetchall()
    except Exception as again:
        if classify(again, conn) == "connection":
            raise
        logger.error("job %r could not be recorded as failed either (%s): it runs again "
                     "once its lease lapses", record.id, first_line(again))
