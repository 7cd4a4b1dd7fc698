"""The jobs a queue holds: their states, the ready and retry queues, and the counts.

Every change of state goes through :meth:`JobTable.transition`, which checks the move against
:data:`~jobqueue.final._states.MOVES` and, in one step, updates the job, the per-priority
counts, the ready or retry queue the job belongs in, the latency and busy-time figures, and
tells the store. Metrics and admission are views of those counts, so they cannot drift apart.

Not thread-safe: the queue's mutex guards a table, and calls it with ``now`` from its clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from jobqueue._priority import Priority
from jobqueue.final._latency import LatencyHistogram
from jobqueue.final._model import Handler, Job, Metrics, PriorityMetrics
from jobqueue.final._picker import WeightedPicker
from jobqueue.final._retry import RetrySchedule
from jobqueue.final._states import (
    CANCELLED,
    COMPLETED,
    FAILED,
    GONE,
    MOVES,
    NEW,
    PROCESSING,
    QUEUED,
    RETRYING,
    SCHEDULED,
    STORED,
    InvalidTransition,
    State,
)
from jobqueue.final.stores.base import JobRecord, Store

__all__ = ["Entry", "JobTable"]

_PRIORITIES = tuple(Priority)
# GONE is counted though nothing reads it: every move can then count its target alike.
#: NEW jobs that will be SCHEDULED: counted apart, as they take no room.
_NEW_LATER = "new, to be scheduled"
_COUNTED = (NEW, _NEW_LATER, QUEUED, PROCESSING, RETRYING, SCHEDULED, COMPLETED, FAILED,
            CANCELLED, GONE)
#: The states whose jobs wait in the retry schedule for a due time.
_WAITING = (RETRYING, SCHEDULED)


_new_record = tuple.__new__  # JobRecord from a tuple, without namedtuple's Python __new__


class Entry:
    """One job this queue holds. Times are monotonic seconds, except in ``record``."""

    __slots__ = ("job", "handler", "state", "record", "ready_since", "started", "due")

    def __init__(
        self, job: Job, handler: Handler | None, seq: int, now: float,
        run_at: float | None = None, due: float | None = None,
    ) -> None:
        self.job = job
        self.handler = handler  # a closure from enqueue_with_handler, else None: look it up
        self.state: State = NEW
        #: The job's record as it stands, which the table hands the store at each move. The
        #: store keeps that same tuple: a job costs the garbage collector one record, and a
        #: move builds the next one. A job given a due time (``due``, on the table's clock)
        #: is SCHEDULED until then, with its ``run_at`` as the record's due time.
        self.record: JobRecord = _new_record(JobRecord, (
            job.id, job.payload, job.priority, job.kind, job.max_retries, job.created,
            QUEUED if due is None else SCHEDULED, 0, None, None, None,
            run_at, seq, None,
        ))
        self.ready_since = now  # when it last became runnable, for queue latency
        self.started: float | None = None  # when its latest attempt started
        self.due = due  # when a RETRYING or SCHEDULED job runs, on the table's clock

    @property
    def attempts(self) -> int:
        return self.record.attempts

    @property
    def last_error(self) -> str | None:
        return self.record.last_error

    @last_error.setter
    def last_error(self, message: str | None) -> None:
        self.record = self.record._replace(last_error=message)


class JobTable:
    """Entries by id, the ready queue of each priority, the retry schedule, and counts."""

    def __init__(
        self,
        store: Store,
        weights: Mapping[Priority, int],
        clock: Callable[[], float] = time.monotonic,
        epoch_offset: float | None = None,
    ) -> None:
        self._entries: dict[str, Entry] = {}
        self._counts: dict[State | str, list[int]] = {state: [0, 0, 0] for state in _COUNTED}
        self._retried = [0, 0, 0]
        self._ready: list[deque[Entry]] = [deque() for _ in _PRIORITIES]
        self._picker = WeightedPicker(weights)
        self.retries: RetrySchedule[Entry] = RetrySchedule(clock)
        self._latency = LatencyHistogram()
        self._busy_seconds = 0.0
        #: Add to the clock's time for epoch seconds, which records carry.
        if epoch_offset is None:
            epoch_offset = time.time() - clock()
        self.epoch_offset = self._epoch_offset = epoch_offset
        # Each legal move with the store method it calls, bound once.
        self._moves: dict[tuple[State, State], Callable[[JobRecord], None] | None] = {
            move: None if method is None else getattr(store, method)
            for move, method in MOVES.items()
        }
        #: The entry of a job id, or None (the dict's own method: no extra call).
        self.get: Callable[[str], Entry | None] = self._entries.get

    # -- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        """Jobs held, reservations included."""
        return len(self._entries)

    def ids(self) -> list[str]:
        return list(self._entries)

    def count(self, state: State, priority: Priority) -> int:
        return self._counts[state][priority]

    def occupied(self, priority: Priority) -> int:
        """What ``queue_size`` bounds: jobs reserved, queued or waiting for a retry."""
        counts = self._counts
        return counts[NEW][priority] + counts[QUEUED][priority] + counts[RETRYING][priority]

    def attempts_ended(self) -> int:
        """Attempts that have ended (completed, failed, or failed to be retried), ever:
        the pace of the workers, for a shared store's claimer."""
        counts = self._counts
        return sum(counts[COMPLETED]) + sum(counts[FAILED]) + sum(self._retried)

    def held(self) -> int:
        """Jobs being enqueued, queued or running: what a shared store's claims fill up."""
        counts = self._counts
        new, queued, running = counts[NEW], counts[QUEUED], counts[PROCESSING]
        return (new[0] + new[1] + new[2] + queued[0] + queued[1] + queued[2]
                + running[0] + running[1] + running[2])

    def busy(self) -> int:
        return sum(self._counts[PROCESSING])

    def in_state(self, state: State) -> list[Entry]:
        return [entry for entry in self._entries.values() if entry.state is state]

    def reserved(self, priority: Priority) -> int:
        """Jobs of ``priority`` being enqueued (NEW), to be queued or scheduled."""
        counts = self._counts
        return counts[NEW][priority] + counts[_NEW_LATER][priority]

    def scheduled(self) -> int:
        """SCHEDULED jobs of every priority, and those being enqueued so: what
        ``max_scheduled`` bounds."""
        return sum(self._counts[SCHEDULED]) + sum(self._counts[_NEW_LATER])

    # -- moving -----------------------------------------------------------------------------

    def transition(self, entry: Entry, to: State, now: float) -> bool:
        """Move ``entry`` to ``to``, keeping everything in step; raises InvalidTransition.

        Tells the store of the move (see MOVES). Returns True when the move made the entry
        the earliest retry (the timer must wake).
        """
        current = entry.state
        try:
            store_call = self._moves[current, to]
        except KeyError:
            raise InvalidTransition(entry.job.id, current, to) from None
        priority = entry.job.priority
        counts = self._counts
        if current is NEW and entry.due is not None:
            counts[_NEW_LATER][priority] -= 1  # a reservation that took no room
        elif current is not STORED:
            counts[current][priority] -= 1
        counts[to][priority] += 1
        entry.state = to
        if current is PROCESSING:
            self._busy_seconds += now - entry.started  # type: ignore[operator]
        if to is QUEUED:
            entry.due = None
            entry.ready_since = now
            self._ready[priority].append(entry)
            if current is NEW:
                return False  # its record was made QUEUED, and the store has it (MOVES)
        elif to is SCHEDULED:  # its record was made (NEW) or claimed (STORED) SCHEDULED
            return self.retries.push(entry, entry.due)  # type: ignore[arg-type]
        elif to is CANCELLED:
            if current is QUEUED:
                self._ready[priority].remove(entry)  # O(n), but cancel() is rare
            elif current is not PROCESSING:
                self.retries.remove(entry)
        (job_id, payload, _, kind, max_retries, created_at, _, attempts, last_error,
         started_at, finished_at, due_at, seq, result) = entry.record
        earliest = False
        if to is QUEUED:
            due_at = None
        elif to is PROCESSING:
            entry.started = now
            if current is not STORED:
                attempts += 1
                started_at = now + self._epoch_offset
                self._latency.record(now - entry.ready_since)
            # else an attempt its last owner died in: counted then, and failed now
        elif to is RETRYING:
            due_at = entry.due + self._epoch_offset  # type: ignore[operator]
            if current is PROCESSING:
                self._retried[priority] += 1
            earliest = self.retries.push(entry, entry.due)  # type: ignore[arg-type]
        else:  # COMPLETED, FAILED, CANCELLED, GONE: the queue is done with it
            del self._entries[job_id]
            if to is GONE:
                return False
            finished_at = now + self._epoch_offset
            due_at = None
            if to is COMPLETED:
                payload = b""  # nothing will run it again (its result, if any, is set)
        entry.record = record = _new_record(JobRecord, (
            job_id, payload, priority, kind, max_retries, created_at, to, attempts,
            last_error, started_at, finished_at, due_at, seq, result,
        ))
        if store_call is not None:
            store_call(record)
        return earliest

    def reserve(self, entries: Iterable[Entry]) -> None:
        """Hold ids and room for jobs the store has not accepted yet (state NEW); a job
        that will be SCHEDULED holds its id and a place under ``max_scheduled``, no room."""
        for entry in entries:
            self._entries[entry.job.id] = entry
            self._counts[NEW if entry.due is None else _NEW_LATER][entry.job.priority] += 1

    def claim(self, record: JobRecord, now: float) -> Entry:
        """Hold a job the store handed out: QUEUED, RETRYING if a retry is still due, or
        PROCESSING if its last owner died while running it (the caller settles it)."""
        job = record.job()
        entry = Entry(job, None, record.seq, now)
        entry.state = STORED
        entry.record = record
        offset = self._epoch_offset
        if record.started_at is not None:
            entry.started = record.started_at - offset
        self._entries[job.id] = entry
        if record.status in _WAITING and record.due_at is not None:
            entry.due = record.due_at - offset
            if record.status is SCHEDULED and entry.due <= now:
                self.transition(entry, QUEUED, now)  # it came due while no queue held it
            else:
                self.transition(entry, record.status, now)
        elif record.status is PROCESSING:
            self.transition(entry, PROCESSING, now)  # the caller settles it as failed
        else:
            self.transition(entry, QUEUED, now)
        return entry

    def take(self, now: float) -> Entry | None:
        """The next job to run, by weighted priority, now PROCESSING; None if none is ready."""
        ready = self._ready
        priority = self._picker.pick(ready)  # a deque is truthy when it has work
        if priority is None:
            return None
        entry = ready[priority].popleft()
        self.transition(entry, PROCESSING, now)
        return entry

    def take_entry(self, entry: Entry, now: float) -> None:
        """Make this QUEUED job PROCESSING, whatever the picker would choose (eager mode)."""
        self._ready[entry.job.priority].remove(entry)
        self.transition(entry, PROCESSING, now)

    def come_due(self, now: float) -> list[Entry]:
        """Move every retry and scheduled job due at ``now`` to QUEUED; return them."""
        due = self.retries.pop_due(now)
        for entry in due:
            self.transition(entry, QUEUED, now)
        return due

    def drop_all(self, now: float) -> list[str]:
        """Forget every job (close() gave up): the store keeps what it was told. Their ids.

        Running jobs go back to the store first (``released``), their attempt neither
        finished nor failed: shutdown interrupted it, not the job. Left PROCESSING, the next
        start would count it as an attempt the process died in. Reservations (NEW) stay:
        their producers are still in enqueue(), waiting for the store, and settle them
        either way when it answers.
        """
        entries = self._entries
        for entry in [entry for entry in entries.values() if entry.state is PROCESSING]:
            self.transition(entry, QUEUED, now)
        dropped = sorted(job_id for job_id, entry in entries.items() if entry.state is not NEW)
        for job_id in dropped:
            del entries[job_id]
        for ready in self._ready:
            ready.clear()
        self.retries = RetrySchedule(self.retries.clock)
        for state in (QUEUED, PROCESSING, RETRYING, SCHEDULED):
            self._counts[state] = [0, 0, 0]
        return dropped

    # -- describing -------------------------------------------------------------------------

    def latency_buckets(self, bounds: list[float]) -> tuple[list[int], int, float]:
        """The latency histogram at ``bounds``: see LatencyHistogram.cumulative."""
        return self._latency.cumulative(bounds)

    def metrics(self, num_workers: int, elapsed: float, abandoned: int) -> Metrics:
        """An atomic snapshot, read from the counts (call it under the queue's mutex)."""
        counts = self._counts
        queued, processing, retrying = counts[QUEUED], counts[PROCESSING], counts[RETRYING]
        completed, failed, retried = counts[COMPLETED], counts[FAILED], self._retried
        scheduled, cancelled = counts[SCHEDULED], counts[CANCELLED]
        per_priority = {
            p: PriorityMetrics(
                queued[p], processing[p], retrying[p], completed[p], failed[p], retried[p],
                scheduled[p], cancelled[p],
            )
            for p in _PRIORITIES
        }
        busy = sum(processing)
        utilization = (
            min(1.0, self._busy_seconds / (num_workers * elapsed))
            if elapsed > 0 and num_workers else 0.0
        )
        return Metrics(
            queued=sum(queued),
            processing=busy,
            retrying=sum(retrying),
            completed=sum(completed),
            failed=sum(failed),
            retried=sum(retried),
            abandoned=abandoned,
            per_priority=per_priority,
            num_workers=num_workers,
            busy_workers=busy,
            utilization=utilization,
            queue_latency=self._latency.summary(),
            scheduled=sum(scheduled),
            cancelled=sum(cancelled),
        )
