"""A job's states and the legal moves between them, written once.

``MOVES`` is the whole state machine; the README's table is this one. Each move names what the
queue tells its :class:`~jobqueue.final.stores.base.Store` when it happens ("-" when the
store already knows: it handed the job out, or nothing it keeps changes)::

    from         to           when                                        the store is told
    NEW          QUEUED       enqueue() or requeue(): the store accepted   add (before the move)
    NEW          SCHEDULED    enqueued to run later (delay=, run_at=)      add (before the move)
    NEW          GONE         the store refused it (a duplicate, a full    -
                              disk): the call raises, and no trace is left
    STORED       QUEUED       claimed from the store (a restart's backlog) -
    STORED       RETRYING     claimed, its retry not yet due               -
    STORED       SCHEDULED    claimed, its run_at not yet come             -
    STORED       PROCESSING   claimed mid-attempt: its last owner died      -
                              while running it, so it fails at once
    QUEUED       PROCESSING   a worker picks it                            started
    PROCESSING   COMPLETED    its handler returned                         finished
    PROCESSING   RETRYING     its handler raised, retries left             retrying (its due time)
    PROCESSING   FAILED       its handler raised, no retries left          finished
    RETRYING     QUEUED       its retry came due                           -
    SCHEDULED    QUEUED       its run_at came                              -
    QUEUED       CANCELLED    cancel() before it ran                       finished
    PROCESSING   CANCELLED    cancel() while it ran, and its handler then  finished
                              raised (it stopped as asked: no retry)
    SCHEDULED    CANCELLED    cancel() before it was due                   finished
    RETRYING     CANCELLED    cancel() while it waited for a retry         finished
    PROCESSING   QUEUED       close() gave up on it while it ran           released
    PROCESSING   GONE         about to run, it turned out another process  -
                              took it over (a shared store; its lease here
                              lapsed): not run here, and forgotten

``NEW``, ``STORED`` and ``GONE`` are not statuses a user sees: ``NEW`` is an id and a place
reserved while the store takes the job, ``STORED`` a job only the store holds, ``GONE`` a job
that never was. COMPLETED, FAILED and CANCELLED are final: the queue forgets the job and the
store keeps its record (up to ``status_retention``). Running a finished id again, with
``enqueue()`` or, for a FAILED one, ``requeue()``, starts a new life at ``NEW``. A running job
is asked to stop (``current_job()``): if its handler then raises, the job is CANCELLED, not
retried; if it returns, it is COMPLETED.
"""

from __future__ import annotations

import enum

from jobqueue.errors import JobQueueError

__all__ = [
    "CANCELLABLE",
    "FINISHED",
    "GONE",
    "LIVE",
    "MOVES",
    "NEW",
    "STORED",
    "InvalidTransition",
    "State",
    "Status",
]


class Status(str, enum.Enum):
    """Where a job is in its life. COMPLETED, FAILED and CANCELLED are final."""

    QUEUED = "queued"
    PROCESSING = "processing"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    # Added later: the LMDB store numbers statuses in this order, so new ones go last.
    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"

    # Enum's own __hash__ is Python code, and the queue looks statuses up in dicts on every
    # move; str's is consistent with how a str-valued member compares, and runs in C.
    __hash__ = str.__hash__


class _Unlisted(enum.Enum):
    """The ends of the table, which no status names."""

    NEW = "new"
    STORED = "stored"
    GONE = "gone"

    __hash__ = object.__hash__  # members compare by identity; hash them so, in C


NEW = _Unlisted.NEW
STORED = _Unlisted.STORED
GONE = _Unlisted.GONE

State = Status | _Unlisted

QUEUED, PROCESSING, RETRYING = Status.QUEUED, Status.PROCESSING, Status.RETRYING
COMPLETED, FAILED = Status.COMPLETED, Status.FAILED
SCHEDULED, CANCELLED = Status.SCHEDULED, Status.CANCELLED

#: The statuses of a job that is not finished: the queue or its store still has work for it.
LIVE = frozenset({QUEUED, PROCESSING, RETRYING, SCHEDULED})
#: The statuses of a finished job, which only a new life (enqueue, requeue) runs again.
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})
#: The statuses cancel() takes a job out of at once: it is not running.
CANCELLABLE = frozenset({QUEUED, SCHEDULED, RETRYING})

#: (from, to) -> the Store method told of the move, or None. Anything else is illegal.
MOVES: dict[tuple[State, State], str | None] = {
    (NEW, QUEUED): None,  # the store's add() came first, and may have refused
    (NEW, GONE): None,
    (NEW, SCHEDULED): None,  # as (NEW, QUEUED)
    (STORED, QUEUED): None,
    (STORED, RETRYING): None,
    (STORED, SCHEDULED): None,
    (STORED, PROCESSING): None,  # an attempt the process died in: settled as failed at once
    (QUEUED, PROCESSING): "started",
    (PROCESSING, COMPLETED): "finished",
    (PROCESSING, RETRYING): "retrying",
    (PROCESSING, FAILED): "finished",
    (RETRYING, QUEUED): None,
    (SCHEDULED, QUEUED): None,  # the store keeps the due time; a restart sees it has passed
    (QUEUED, CANCELLED): "finished",
    (PROCESSING, CANCELLED): "finished",  # its handler stopped as cancel() asked
    (SCHEDULED, CANCELLED): "finished",
    (RETRYING, CANCELLED): "finished",
    (PROCESSING, QUEUED): "released",
    (PROCESSING, GONE): None,  # taken over by another process: its store knows
}


class InvalidTransition(JobQueueError, RuntimeError):
    """A move the state machine does not allow: a bug in the queue, never the caller's."""

    def __init__(self, job_id: str, current: State, to: State) -> None:
        super().__init__(f"job {job_id!r} cannot move from {current.name} to {to.name}")
        self.job_id = job_id
        self.current = current
        self.to = to
