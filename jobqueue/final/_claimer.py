"""The claimer: the thread that brings jobs from the store into the queue.

Jobs this queue enqueues it holds from the start; the others reach it only through
``Store.claim``: after a restart, the backlog an earlier run left in the LMDB store (and,
with a store shared by several processes, what other processes add). The claimer fills each
priority up to ``queue_size`` as room frees, every priority at once, so the weighted picker
sees a stored backlog as it would live traffic: LOW is not held back behind a stored flood
of HIGH. Jobs of a kind no handler runs stay in the store until ``register()`` names one.

``Core.unclaimed[p]`` says the store may still hold jobs of priority ``p`` for this queue;
producers of ``p`` wait while it is set (admission), and ``join()`` counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from jobqueue._priority import Priority
from jobqueue.final._core import Core
from jobqueue.final._states import NEW, RETRYING
from jobqueue.final._store import JobRecord

__all__ = ["claim"]

logger = logging.getLogger("jobqueue")

_PRIORITIES = tuple(Priority)


def claim(core: Core) -> None:
    """The claimer thread: claim stored jobs until close() starts."""
    table, store = core.table, core.store
    limit = core.config.queue_size
    while True:
        with core.mutex:
            while True:
                if core.closing:
                    return
                priority = _claimable_locked(core)
                if priority is not None:
                    break
                core.claim_wake.wait()
            room = limit - table.occupied(priority)
            kinds = None if core.config.handler is not None else frozenset(core.handlers)
        try:
            records: list[JobRecord] | None = store.claim(priority, room, kinds)
        except Exception:
            logger.exception("claiming stored jobs failed; they stay stored")
            records = None
        with core.mutex:
            if core.closing:
                return  # the store keeps them for the next start
            if records is None:
                core.unclaimed = [False, False, False]
                for condition in core.room:
                    condition.notify_all()
                core.changed_locked()
                return
            _hold_locked(core, records)
            if len(records) < room:
                core.unclaimed[priority] = False
                core.room[priority].notify_all()
            core.changed_locked()


def _claimable_locked(core: Core) -> Priority | None:
    """The most urgent priority with room that the store may hold jobs of."""
    for priority in _PRIORITIES:
        if core.unclaimed[priority] and core.table.occupied(priority) < core.config.queue_size:
            return priority
    return None


def _hold_locked(core: Core, records: Sequence[JobRecord]) -> None:
    table = core.table
    for record in records:
        # A producer may be enqueueing the same id: the store will refuse it (the record is
        # live there), so wait for its reservation to go.
        while (held := table.get(record.id)) is not None and held.state is NEW:
            core.wait_changed_locked(None)
        if held is not None:
            logger.error("the store handed out job %r, which this queue holds", record.id)
            continue
        if table.claim(record, core.clock()).state is RETRYING:
            core.retry_due.notify()
        else:
            core.ready_locked(1)
