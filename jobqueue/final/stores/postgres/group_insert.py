"""Group commit of the PostgreSQL store's single-job inserts, across the threads that call
``enqueue()`` at once.

One insert costs a round trip and a commit (an fsync, with ``fsync=True``), and producers
spend most of their time waiting for it. Here the first caller leads: it inserts its job,
and every job that arrived meanwhile, in one statement, and wakes their callers; the next
one waiting leads the next statement. Nothing waits to gather a batch: a lone producer
inserts at once, as before, and concurrent producers share round trips by themselves.

Each job of a statement is its own: a duplicate id refuses that job alone (the statement
skips it, as ``ON CONFLICT`` does for a live id), and the others are inserted. An error of
the statement (the database is away) reaches every caller whose job it carried, and none
of those jobs is inserted: one statement is atomic.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection

from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final.stores.base import JobRecord

__all__ = ["GroupInsert"]

#: The most jobs one statement carries.
MAX_GROUP = 500

#: (records, owner, priorities to notify, revive) -> for each id added its lease_id (None
#: if unheld), or the error that refused that job alone; an id missing was live already.
InsertBatch = Callable[[list[JobRecord], "str | None", Collection[int], bool],
                       dict[str, "int | BaseException | None"]]


class _Call:
    """One caller's job, and what became of it."""

    __slots__ = ("record", "owner", "notify", "revive", "done", "lead", "lease", "error",
                 "duplicate")

    def __init__(self, record: JobRecord, owner: str | None, notify: Collection[int],
                 revive: bool) -> None:
        self.record = record
        self.owner = owner
        self.notify = notify
        self.revive = revive
        self.done = False  # its statement ran: lease or error says how
        self.lead = False  # it leads the next statement
        self.lease: int | None = None
        self.error: BaseException | None = None
        self.duplicate = False  # the statement skipped it: its id is live


class GroupInsert:
    """Single-job inserts, grouped into statements as callers come."""

    def __init__(self, insert_batch: InsertBatch,
                 duplicate: Callable[[JobRecord], DuplicateJob]) -> None:
        self._insert_batch = insert_batch
        self._duplicate = duplicate  # the error for a job whose id is live already
        # _lock guards _waiting and _leading; _turn (on it) wakes callers whose statement ran
        # and the one that leads next.
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._waiting: deque[_Call] = deque()
        self._leading = False

    def insert(self, record: JobRecord, owner: str | None, notify: Collection[int],
               revive: bool) -> int | None:
        """Insert one job, in a statement shared with concurrent callers; return its
        lease_id (None when unheld). Blocks for the statement. Raises DuplicateJob if the
        id is live, StoreError if the statement failed."""
        call = _Call(record, owner, notify, revive)
        with self._lock:
            self._waiting.append(call)
            if self._leading:
                try:
                    while not call.done and not call.lead:
                        self._turn.wait()
                except BaseException:  # (KeyboardInterrupt): its job is not inserted
                    self._forget_locked(call)
                    raise
            if not call.done:
                self._leading = True
                batch = self._take_locked(call)
        if not call.done:
            self._run(batch)
        if call.error is not None:
            raise call.error
        if call.duplicate:
            raise self._duplicate(record)  # (found out here: the leader has others to wake)
        return call.lease

    def _forget_locked(self, call: _Call) -> None:
        """A caller interrupted while it waited: its job leaves the line, and the lead it
        was handed goes on to the next caller."""
        if call.done:
            return  # inserted all the same: the statement ran before the interruption
        self._waiting.remove(call)
        if call.lead:
            self._hand_on_locked()

    def _take_locked(self, first: _Call) -> list[_Call]:
        """The calls one statement carries: ``first``, and those after it that share its
        owner and revive, with ids of their own (one statement cannot insert an id twice)."""
        batch, ids, kept = [first], {first.record.id}, deque[_Call]()
        self._waiting.remove(first)
        while self._waiting and len(batch) < MAX_GROUP:
            call = self._waiting.popleft()
            if (call.owner == first.owner and call.revive == first.revive
                    and call.record.id not in ids):
                batch.append(call)
                ids.add(call.record.id)
            else:
                kept.append(call)
        kept.extend(self._waiting)
        self._waiting = kept
        return batch

    def _run(self, batch: list[_Call]) -> None:
        first = batch[0]
        notify = {p for call in batch for p in call.notify}
        try:
            added = self._insert_batch([call.record for call in batch], first.owner, notify,
                                       first.revive)
        except BaseException as exc:
            first.error = exc
            for call in batch[1:]:
                call.error = _copy(exc)
        else:
            for call in batch:
                if call.record.id not in added:
                    call.duplicate = True
                    continue
                outcome = added[call.record.id]
                if isinstance(outcome, BaseException):
                    call.error = outcome  # refused alone (see inserts.Inserts._insert_grouped)
                else:
                    call.lease = outcome
        finally:  # whatever happened above, the others are woken and the lead goes on
            with self._lock:
                for call in batch:
                    call.done = True
                self._hand_on_locked()

    def _hand_on_locked(self) -> None:
        if self._waiting:
            self._waiting[0].lead = True
        else:
            self._leading = False
        self._turn.notify_all()


def _copy(exc: BaseException) -> StoreError:
    """The statement's error for a caller other than the leader: each raises its own (one
    exception raised in several threads at once would share, and garble, one traceback)."""
    if isinstance(exc, StoreError):
        copy = StoreError(str(exc))
        copy.__cause__ = exc.__cause__
    elif isinstance(exc, Exception):
        copy = StoreError(f"could not store the job: {exc!r}")
        copy.__cause__ = exc
    else:  # the leader was interrupted (KeyboardInterrupt): it stops, the job was not stored
        copy = StoreError(f"could not store the job: the thread storing it was interrupted "
                          f"({type(exc).__name__})")
    return copy
