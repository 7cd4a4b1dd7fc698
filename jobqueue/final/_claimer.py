"""The claimer: the thread that brings jobs from the store into the queue.

Jobs this queue enqueues it holds from the start; the others reach it only through
``Store.claim``: after a restart, the backlog an earlier run left in the LMDB store (and,
with a store shared by several processes, what other processes add). The claimer fills each
priority up to ``queue_size`` as room frees, every priority at once, so the weighted picker
sees a stored backlog as it would live traffic: LOW is not held back behind a stored flood
of HIGH. Jobs of a kind no handler runs stay in the store until ``register()`` names one.

A claimed job its last owner was running when it died (a handler that killed its process,
say) is a failed attempt: the claimer settles it at once, and the retry policy applies, so a
job that kills every process that runs it ends FAILED instead of running forever.

``Core.unclaimed[p]`` says the store may still hold jobs of priority ``p`` for this queue;
producers of ``p`` wait while it is set (admission), and ``join()`` counts it.

From a store shared by processes the claimer takes only what this process will soon run:
its workers' share and ``prefetch`` jobs more, split among the priorities by their weights
(so that LOW is claimed too under a flood of HIGH). Unless ``Config.prefetch`` fixes it, the
prefetch follows the pace of the workers: as many jobs as they finish in
``PREFETCH_HORIZON`` and the time a claim takes, so short jobs come in batches and slow ones
wait in the database for a process with a free worker, instead of behind a busy one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from jobqueue._priority import Priority
from jobqueue.final._core import Core, log_safely
from jobqueue.final._model import Hook, JobInfo
from jobqueue.final._retry import RetryPolicy
from jobqueue.final._states import NEW, PROCESSING, RETRYING, SCHEDULED
from jobqueue.final._workers import (
    Outcome,
    call_hook_if_kept,
    failed_attempt,
    hook_call_locked,
    settle_locked,
)
from jobqueue.final.stores.base import JobRecord

__all__ = ["claim"]


_PRIORITIES = tuple(Priority)


#: The last error of an attempt its process died in.
DIED = "the process died while running it"

#: A shared store: an adaptive prefetch holds what the workers finish in this many seconds.
PREFETCH_HORIZON = 0.05
#: ... measured over at least this many seconds.
_PACE_WINDOW = 0.1


def claim(core: Core, policy: RetryPolicy) -> None:
    """The claimer thread: claim stored jobs until close() starts.

    Each pass claims for every priority with room, so a priority that keeps freeing room
    (HIGH under a flood) cannot keep the others from being claimed.
    """
    store = core.store
    # A shared store gets jobs from other processes, which notify; in case a notice is lost,
    # look at every priority again once per poll interval.
    poll = None if core.shared is None else core.shared.poll_interval
    next_poll = core.clock()
    failing = False  # the last claim failed (a shared store's database is away)
    adaptive = core.shared is not None and core.config.prefetch is None
    weights = core.config.effective_weights
    credit = dict.fromkeys(_PRIORITIES, 0)  # for _split: who is owed the next claim
    paced_at, paced = core.clock(), 0  # the last measure of the pace: when, attempts ended
    round_trip = 0.0  # how long a claim takes, lately (seconds)
    while True:
        with core.mutex:
            while True:
                if core.closing:
                    return
                now = core.clock()
                if poll is not None and now >= next_poll:
                    core.unclaimed = [True, True, True]
                    next_poll = now + poll
                if adaptive and now - paced_at >= _PACE_WINDOW:
                    # What the workers finish while a claim comes back, and a moment more:
                    # the pace is what they did with what they held, so a claim slower than
                    # the jobs lets it grow (a remote database), and slow jobs shrink it.
                    ended = core.table.attempts_ended()
                    pace = (ended - paced) / (now - paced_at)
                    core.set_prefetch_locked(min(core.max_prefetch, round(
                        pace * (PREFETCH_HORIZON + round_trip))))
                    paced_at, paced = now, ended
                wanted = [(p, room) for p in _PRIORITIES
                          if core.unclaimed[p] and (room := _room(core, p)) > 0]
                if wanted:
                    break
                core.claim_wake.wait(None if poll is None else next_poll - now)
            if core.shared is not None:
                wanted = _split(wanted, core.config.num_workers + core.prefetch
                                - core.table.held(), weights, credit)
            kinds = None if core.config.handler is not None else frozenset(core.handlers)
            registered = core.registered
            news = list(core.news)
            # Until the last of these claims lands, cancel() of a job it finds held by this
            # process in the database waits for it (see JobQueue.cancel).
            core.claiming = core.shared is not None
        for priority, room in wanted:
            try:
                asked = core.clock()
                records: list[JobRecord] | None = store.claim(priority, room, kinds)
                round_trip = 0.8 * round_trip + 0.2 * (core.clock() - asked)
            except Exception as exc:
                records = None
                if poll is None:
                    log_safely(logging.ERROR, "claiming stored jobs failed; they stay stored "
                               "until register() names a new kind or the next start",
                               exc_info=True)
                elif not failing:  # once an outage, not once a poll
                    log_safely(logging.ERROR, "claiming jobs failed (%s); trying again "
                               "every %s s", exc, poll)
                failing = True
            else:
                if failing:
                    log_safely(logging.WARNING, "claiming jobs works again")
                failing = False
            interrupted = {
                record.id: failed_attempt(core, policy, record.job(), record.attempts, DIED, None)
                for record in records or () if record.status is PROCESSING
            }
            with core.mutex:
                if core.closing:
                    core.claiming = False
                    core.changed_locked()
                    return  # the store keeps them for the next start
                if records is None:
                    # Producers must not wait for jobs that cannot be claimed; the claimer
                    # lives on, so that a later register() can try again.
                    core.unclaimed = [False, False, False]
                    for line in core.room:
                        line.wake_all()
                    core.claiming = False
                    core.changed_locked()
                    break
                settled = _hold_locked(core, records, interrupted)
                # A kind registered during the claim was not in ``kinds``, and jobs another
                # process added during it may have come too late for it: the store may still
                # hold such jobs, so only a claim that missed nothing clears the flag.
                if (len(records) < room and core.registered == registered
                        and core.news[priority] == news[priority]):
                    core.unclaimed[priority] = False
                    core.room[priority].wake_all()
                if priority is wanted[-1][0]:
                    core.claiming = False
                core.changed_locked()
            for hook, info in settled:  # outside the mutex, as a worker calls them
                call_hook_if_kept(core, info.id, hook, info)


def _room(core: Core, priority: Priority) -> int:
    """How many jobs of ``priority`` to claim now: room up to ``queue_size``; from a shared
    store, none unless this queue holds few enough (see Core.set_prefetch_locked), and
    then what :func:`_split` gives it."""
    room = core.config.queue_size - core.table.occupied(priority)
    if core.shared is not None and not core.claim_wanted_locked():
        return 0
    return room


def _split(
    wanted: list[tuple[Priority, int]], free: int, weights: Mapping[Priority, int],
    credit: dict[Priority, int],
) -> list[tuple[Priority, int]]:
    """Split ``free`` claims among the priorities ``wanted`` (each with its room) by their
    weights: shares in proportion, and what is left over one at a time to whoever is owed
    most (smooth weighted round robin, ``credit`` carried from claim to claim), so that
    claims of one job at a time are fair too."""
    share = dict.fromkeys((p for p, _ in wanted), 0)
    room = dict(wanted)
    total = sum(weights[p] for p in share)
    for p in share:
        share[p] = min(room[p], free * weights[p] // total)
    left = free - sum(share.values())
    while left > 0:
        open_ = [p for p in share if share[p] < room[p]]
        if not open_:
            break
        for p in open_:
            credit[p] += weights[p]
        owed = max(open_, key=credit.__getitem__)
        credit[owed] -= sum(weights[p] for p in open_)
        share[owed] += 1
        left -= 1
    return [(p, n) for p, n in share.items() if n > 0]


def _hold_locked(
    core: Core, records: Sequence[JobRecord], interrupted: dict[str, Outcome]
) -> list[tuple[Hook, JobInfo]]:
    """Hold the claimed jobs; return the hooks to call for attempts settled here."""
    table = core.table
    settled = []
    for record in records:
        # A producer may be enqueueing the same id: the store will refuse it (the record is
        # live there), so wait for its reservation to go.
        while (held := table.get(record.id)) is not None and held.state is NEW:
            core.wait_changed_locked(None)
        if held is not None:
            log_safely(logging.ERROR, "the store handed out job %r, which this queue holds",
                       record.id)
            continue
        now = core.clock()
        entry = table.claim(record, now)
        watch = core.watched.get(record.id)
        if watch is not None:
            watch[1] = entry  # a wait() follows it from here
        if entry.state is PROCESSING:
            settle_locked(core, entry, interrupted[record.id], now)
            if core.hooks is not None and (hook := hook_call_locked(core, entry)) is not None:
                settled.append(hook)
        elif entry.state is RETRYING or entry.state is SCHEDULED:
            core.retry_due.notify()  # it may be the earliest now: the timer must look
        else:
            core.ready_locked(1)
    return settled
