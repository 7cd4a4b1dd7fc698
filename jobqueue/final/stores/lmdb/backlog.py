"""The LMDB store's backlog: the live jobs LMDB held when the store opened, handed out by claim.

Jobs enqueued since the store opened are held by the queue from the start; the backlog, left
by an earlier run (stopped, or killed), reaches the queue only through ``Store.claim``. It is
read a priority at a time from the ``order`` index, in arrival order, in short read
transactions, never loaded whole: a backlog larger than memory stays on disk. A cursor per
priority remembers where reading stopped.

Jobs of a kind the queue cannot run are skipped ("parked"), logged once per kind; when a claim
accepts a parked kind, reading goes back to the first job of it, and jobs already handed out
since are recognised and skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence

from jobqueue._priority import Priority
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.lmdb.record_format import order_key
from jobqueue.final.stores.lmdb.tables import MapGate, Tables

__all__ = ["Backlog"]

logger = logging.getLogger("jobqueue")

_PRIORITIES = tuple(Priority)
_CHUNK = 512  # order entries read per read transaction

#: (order key, job id, raw record or None) -> the live job the entry points to, or None.
Resolve = Callable[[bytes, bytes, "bytes | None"], "JobRecord | None"]


class Backlog:
    """The backlog of one open store.

    ``open_seq`` is the highest arrival seq when the store opened: jobs up to it are the
    backlog. ``resolve`` turns an ``order`` entry into the job's newest state (the store knows
    what it has not written yet).
    """

    def __init__(
        self, path: str, tables: Tables, gate: MapGate, open_seq: int, resolve: Resolve
    ) -> None:
        self._path = path
        self._tables = tables
        self._gate = gate
        self._open_seq = open_seq
        self._resolve = resolve
        with tables.env.begin() as txn:
            empty = txn.stat(tables.order)["entries"] == 0
        # _lock guards the three fields below. Claims come from one thread (the queue's
        # claimer); the lock keeps them consistent with left() and release().
        self._lock = threading.Lock()
        self._cursor = [order_key(p, 0) for p in _PRIORITIES]  # the next order key to read
        self._exhausted = [empty] * len(_PRIORITIES)
        self._parked: list[dict[str, bytes]] = [{} for _ in _PRIORITIES]  # kind -> first key
        # Backlog ids handed out and not finished: a second read of the index skips them.
        # Changed without the lock by release(): one set operation, atomic under the GIL.
        self._claimed: set[str] = set()
        # Set once every priority is exhausted and no kind is parked: that lasts, since only
        # a parked kind can make a priority unexhausted again. Read without the lock, as a
        # producer asks on every enqueue.
        self._none_left = False

    def includes(self, record: JobRecord) -> bool:
        """Whether a job is one of the backlog's (it arrived before the store opened)."""
        return record.seq <= self._open_seq

    def left(self) -> bool:
        """Whether jobs may remain to be claimed, parked ones included."""
        if self._none_left:
            return False
        with self._lock:
            left = not all(self._exhausted) or any(self._parked)
            self._none_left = not left
        return left

    def may_hold(self, records: Sequence[JobRecord]) -> bool:
        """Whether one of these new jobs may share its id with a live backlog job the queue
        does not hold: one left to claim, or one just claimed and not yet in the queue's
        hands (once it is, the queue itself refuses the id)."""
        if self.left():  # first: a claim that ends after it has added to _claimed
            return True
        claimed = self._claimed
        return bool(claimed) and any(record.id in claimed for record in records)

    def release(self, job_id: str) -> None:
        """The job finished, or went back unheld: a later read may hand it out again."""
        if self._claimed:
            self._claimed.discard(job_id)

    def claim(
        self, priority: Priority, limit: int, kinds: Collection[str] | None
    ) -> list[JobRecord]:
        """Up to ``limit`` backlog jobs of ``priority`` whose kind is in ``kinds`` (None:
        any), in arrival order; fewer means none are left for those kinds."""
        with self._lock:
            parked = self._parked[priority]
            runnable = [kind for kind in parked if kinds is None or kind in kinds]
            if runnable:  # read again from the first job of a kind that can run now
                self._cursor[priority] = min(parked.pop(kind) for kind in runnable)
                self._exhausted[priority] = False
            if self._exhausted[priority] or limit <= 0:
                return []
            start = self._cursor[priority]
            claimed = set(self._claimed)
        taken: list[JobRecord] = []
        newly_parked: dict[str, bytes] = {}
        exhausted = False
        while len(taken) < limit and not exhausted:
            chunk = self._read(priority, start)
            exhausted = len(chunk) < _CHUNK
            for key, job_id, raw in chunk:
                start = key + b"\x00"
                if int.from_bytes(key[1:], "big") > self._open_seq:
                    exhausted = True  # arrived since the store opened: held already
                    break
                record = self._resolve(key, job_id, raw)
                if record is None or record.id in claimed:
                    continue
                if kinds is not None and record.kind not in kinds:
                    newly_parked.setdefault(record.kind, key)
                    continue
                taken.append(record)
                if len(taken) == limit:
                    break
        with self._lock:
            self._cursor[priority] = start
            self._exhausted[priority] = exhausted and len(taken) < limit
            parked = self._parked[priority]
            for kind, key in newly_parked.items():
                if kind not in parked:
                    logger.warning(
                        "store %r holds jobs of kind %r with no handler; they stay queued in "
                        "the store until one is registered", self._path, kind,
                    )
                parked[kind] = min(key, parked.get(kind, key))
            self._claimed.update(record.id for record in taken)
        return taken

    def _read(self, priority: int, start: bytes) -> list[tuple[bytes, bytes, bytes | None]]:
        tables = self._tables
        chunk: list[tuple[bytes, bytes, bytes | None]] = []
        with self._gate.reading(tables.env) as txn:  # short, so a long claim pins no pages
            cursor = txn.cursor(db=tables.order)
            if cursor.set_range(start):
                for key, job_id in cursor:
                    if key[0] != priority or len(chunk) >= _CHUNK:
                        break
                    chunk.append((key, job_id, txn.get(job_id, db=tables.jobs)))
        return chunk
