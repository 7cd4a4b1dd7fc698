"""The moves the PostgreSQL store's writer has been told and not yet settled, and the waits
for their fates: the side of the writer that the store's callers see (any thread but the
writer's own). :class:`~.writer.Writer` is the thread that settles them."""

from __future__ import annotations

import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Collection

from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.postgres.moves import Move, supersede

__all__ = ["Ledger"]


class Ledger:
    """Moves by job id: pending (told, not taken), writing (the batch), busy (their row was
    locked: tried again later), and the last refusal of each job, for ``confirm``."""

    def __init__(self, write_wait: float) -> None:
        #: How long a caller waits for a write before it gives up: the database is away.
        self.write_wait = write_wait
        # lock guards the fields below, and each move's fate and gate; work wakes the
        # writer, written whoever waits for moves of some ids to settle (reads).
        self.lock = threading.Lock()
        self._work = threading.Condition(self.lock)
        self._written = threading.Condition(self.lock)
        self._pending: dict[str, Move] = {}  # the latest move of each job, not yet taken
        self._writing: dict[str, Move] = {}  # the batch being written
        self._busy: dict[str, Move] = {}  # moves whose row was locked: tried again later
        self._told = 0  # moves told so far: each move's number
        self._refused: dict[str, int] = {}  # job id -> number of its last refused move
        self._hurry = False  # someone waits for a fate: no lingering
        self.closed = False  # the writer stopped: nothing more is written

    def _in_flight_locked(self, job_id: str) -> Move | None:
        return (self._pending.get(job_id) or self._writing.get(job_id)
                or self._busy.get(job_id))

    def wait_fate(self, move: Move, deadline: float | None) -> str | None:
        """The move's fate once settled, or None if ``deadline`` (monotonic) came first or
        the writer stopped without writing it."""
        gate = move.gate
        if gate is None:
            with self.lock:
                if move.fate is not None or self.closed:
                    return move.fate
                gate = move.gate
                if gate is None:
                    gate = move.gate = _allocate_lock()
                    gate.acquire()
                self._hurry = True
                self._work.notify()
        if deadline is None:
            timeout = -1.0
        else:
            timeout = min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
        if gate.acquire(True, timeout):
            gate.release()  # open for any other waiter
        return move.fate

    def confirm(self, job_id: str, timeout: float | None) -> bool:
        """Wait until the latest move told of the job is settled; True if it was written.
        Raises TimeoutError after ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            move = self._in_flight_locked(job_id)
        if move is not None:
            fate = self.wait_fate(move, deadline)
            if fate is None:
                if self.closed:
                    return False  # never written: close() gave up on it
                raise TimeoutError(f"the database did not take the outcome of job {job_id!r} "
                                   f"within {timeout} s")
            return fate == "w"
        with self.lock:
            return job_id not in self._refused

    def retract(self, move: Move, record: JobRecord) -> None:
        """A start not confirmed in time: hand the job back instead (``record`` as it was
        before the start), unless the start was refused meanwhile."""
        with self.lock:
            if move.fate == "r" or move.fate == "d":
                return
            self._told += 1
            release = Move(record, -abs(move.lease), self._told, time.monotonic())
            if self._pending.get(record.id) is move or self._busy.get(record.id) is move:
                self._pending.pop(record.id, None)
                self._busy.pop(record.id, None)
                release.replaced, move.replaced = move.replaced, []
                move.settle_locked("s")  # (its worker has given it up already)
            else:
                old = self._pending.get(record.id) or self._busy.pop(record.id, None)
                if old is not None:
                    supersede(old, release)
            self._pending[record.id] = release
            self._work.notify()

    def settle(self, ids: Collection[str]) -> bool:
        """Wait until no move told of these ids is in flight; False if that took longer than
        ``write_wait``."""
        return self._wait_written(
            lambda: any(self._in_flight_locked(i) is not None for i in ids))

    def sync(self) -> bool:
        """Wait until every move told so far is settled; False if that took longer than
        ``write_wait``."""
        told = self._told
        return self._wait_written(lambda: any(
            move.number <= told
            for flight in (self._pending, self._writing, self._busy)
            for move in flight.values()))

    def _wait_written(self, unsettled: Callable[[], bool]) -> bool:
        """Hurry the writer and wait while ``unsettled()`` (called under the lock) holds;
        False after ``write_wait``. True once closed: nothing more will be written, and
        what there is can be read."""
        deadline = time.monotonic() + self.write_wait
        with self.lock:
            while unsettled():
                if self.closed:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._hurry = True
                self._work.notify()
                self._written.wait(remaining)
            return True
