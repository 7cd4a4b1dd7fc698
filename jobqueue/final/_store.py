"""The seam between the queue and where its jobs are kept.

The queue keeps its live state in memory and tells a :class:`Store` what must outlive it, the
way huey's storage back ends sit behind one small interface. :class:`MemoryStore` keeps only
finished jobs, for ``status()`` and dead letters; the LMDB store keeps everything on disk and
gives it back at the next start.

Lock order: the queue calls ``update``/``finish`` while holding its own mutex, so a store never
calls back into the queue and takes only its own locks, after the queue's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

from jobqueue._priority import Priority
from jobqueue.final._model import JobInfo, Status

__all__ = ["JobRecord", "MemoryStore", "Store"]


class JobRecord(NamedTuple):
    """Everything a store keeps about a job. Times are epoch seconds or ``None``.

    ``seq`` orders jobs of one priority by arrival; ``due_at`` is when a RETRYING job runs next.
    A COMPLETED record carries no payload: nothing will run it again.
    """

    id: str
    payload: bytes
    priority: Priority
    kind: str
    max_retries: int | None
    created_at: float
    status: Status
    attempts: int
    last_error: str | None
    started_at: float | None
    finished_at: float | None
    due_at: float | None
    seq: int

    def info(self) -> JobInfo:
        return JobInfo(
            self.id,
            self.status,
            self.priority,
            self.kind,
            self.attempts,
            self.last_error,
            self.created_at,
            self.started_at,
            self.finished_at,
        )


class Store(Protocol):
    """What the queue needs from a store.

    ``add`` is the only call that may block on I/O; ``update`` and ``finish`` may be batched
    and written later, since losing them in a crash only makes a job run again.
    """

    #: True when ``add`` makes jobs survive the process, so the queue must wait for it.
    durable: bool

    def add(self, records: Sequence[JobRecord]) -> None:
        """Keep new QUEUED jobs; returns once they are as durable as the store makes them."""

    def update(self, record: JobRecord) -> None:
        """Note a live job's new state (PROCESSING, RETRYING or QUEUED again)."""

    def finish(self, record: JobRecord) -> None:
        """Note a COMPLETED or FAILED job, kept for ``get`` up to the store's retention."""

    def get(self, job_id: str) -> JobRecord | None:
        """Return the latest record of a job, or ``None`` if the store does not know it."""

    def dead_letters(self) -> list[JobRecord]:
        """Return the FAILED jobs the store keeps, oldest first."""

    def last_seq(self) -> int:
        """Return the highest ``seq`` the store holds, so new jobs sort after recovered ones."""

    def recover(self, priority: Priority, after_seq: int) -> Iterator[JobRecord]:
        """Yield unfinished jobs of one priority with ``seq > after_seq``, in arrival order."""

    def close(self) -> None:
        """Write what is pending and release the store. Calling it twice is harmless."""


class MemoryStore:
    """Keeps finished jobs in memory, the newest ``retention`` of them; nothing survives."""

    durable = False

    def __init__(self, retention: int) -> None:
        self._retention = retention
        # _lock guards _finished. The queue already serialises its calls under its mutex;
        # the lock keeps the store correct on its own too, and is never contended.
        self._lock = threading.Lock()
        self._finished: OrderedDict[str, JobRecord] = OrderedDict()

    def add(self, records: Sequence[JobRecord]) -> None:
        """Nothing to keep: the queue holds live jobs itself, and does not call this.

        A finished id enqueued again stays here until it finishes anew; the queue answers
        for live ids before asking the store.
        """

    def update(self, record: JobRecord) -> None:
        with self._lock:
            self._finished.pop(record.id, None)

    def finish(self, record: JobRecord) -> None:
        with self._lock:
            finished = self._finished
            finished.pop(record.id, None)
            finished[record.id] = record
            while len(finished) > self._retention:
                finished.popitem(last=False)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._finished.get(job_id)

    def dead_letters(self) -> list[JobRecord]:
        with self._lock:
            return [r for r in self._finished.values() if r.status is Status.FAILED]

    def last_seq(self) -> int:
        return 0

    def recover(self, priority: Priority, after_seq: int) -> Iterator[JobRecord]:
        return iter(())

    def close(self) -> None:
        pass
