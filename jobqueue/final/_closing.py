"""Closing a queue: stop new jobs, let the accepted ones finish, stop the threads, give the
store up; or, when time runs out, cancel, and hand back what could not finish.

:meth:`JobQueue.close <jobqueue.final.JobQueue.close>` calls :func:`close`, one at a time,
under its own lock. A close() called from a handler cannot wait (its own job would keep it
waiting): it only calls :func:`start_locked`, and the workers, once drained, call
:func:`finish` on their way out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from jobqueue.final._checks import check_timeout
from jobqueue.final._core import Core, log_safely
from jobqueue.final._states import SCHEDULED

__all__ = ["close", "finish", "hurry", "start_locked"]

# After the timeout has passed and cancellation is signalled, handlers that honour it get
# this long to return before close() reports them as refusing to.
CANCEL_GRACE = 1.0
_IDS_LOGGED = 20  # a log line names at most this many job ids


def start_locked(core: Core) -> None:
    """No new jobs from now on; wake whoever waits, so that they see it."""
    core.closing = True
    for line in core.room:
        line.wake_all()
    core.claim_wake.notify_all()
    core.tick_wake.notify_all()
    core.changed_locked()  # wakes the workers and the retry timer if nothing is left


def close(core: Core, threads: Sequence[threading.Thread], timeout: float | None) -> list[str]:
    """Close, waiting up to ``timeout`` seconds (None: no limit), or less if :func:`hurry`
    brings the end forward; return the ids given up."""
    started = core.clock()
    with core.mutex:
        if timeout is not None:
            core.close_by = min(core.close_by, core.clock() + timeout)
        start_locked(core)
        while not core.drained_locked():  # (close_by may be brought forward meanwhile)
            remaining = core.close_by - core.clock()
            if remaining <= 0:
                break
            core.wait_changed_locked(None if remaining == float("inf") else remaining)
        gave_up = not core.drained_locked()
        endtime = None if core.close_by == float("inf") else core.close_by
        if gave_up:
            core.stopping = True
            core.shutdown.set()
            for wake in list(core.sleepers.values()):  # handlers asleep in wait()
                wake.set()
            core.wake_workers_locked()
            core.retry_due.notify()
            core.changed.notify_all()
    if gave_up:
        grace: float | None = CANCEL_GRACE
    else:
        grace = None if endtime is None else max(CANCEL_GRACE, endtime - core.clock())
    join_until = None if grace is None else core.clock() + grace
    here = threading.current_thread()  # a log handler a worker ran may call close()
    for thread in threads:
        if thread is not here:
            thread.join(None if join_until is None else max(0.0, join_until - core.clock()))
    stuck = [t.name for t in threads if t.is_alive() and t is not here]
    abandoned: list[str] = []
    with core.mutex:
        if gave_up:
            abandoned = core.table.drop_all(core.clock())
        else:
            abandoned = _scheduled_lost_locked(core)
        core.closed = True
        core.changed_locked()  # waiters whose jobs will not finish now must know
    if gave_up:
        if core.shared is not None:
            where = "go back to the queue, for any process"
        elif core.store.persistent:
            where = "stay stored for the next start"
        else:
            where = "are lost"
        shown = ", ".join(abandoned[:_IDS_LOGGED])
        more = len(abandoned) - _IDS_LOGGED
        log_safely(
            logging.WARNING, "close() gave up after %.3g s; %d unfinished jobs %s: %s%s",
            core.clock() - started, len(abandoned), where, shown,
            f" and {more} more" if more > 0 else "",
        )
    if stuck:
        log_safely(logging.WARNING, "handlers did not return; threads still running: %s",
                   stuck)
    if core.close_by == float("inf"):  # (hurried since?)
        core.store.close(None)
    else:
        core.store.close(max(CANCEL_GRACE, core.close_by - core.clock()))
    return abandoned


def hurry(core: Core, timeout: float | None) -> None:
    """Every close(), before it waits its turn: give up waiting ``timeout`` seconds from
    now, if that is sooner than a close() in progress (or about to start) would."""
    if timeout is None:
        return
    with core.mutex:
        core.close_by = min(core.close_by, core.clock() + timeout)
        core.changed.notify_all()


def _scheduled_lost_locked(core: Core) -> list[str]:
    """close() does not wait for jobs due later: a persistent store keeps them; in memory
    they are lost, and said so. Their ids."""
    if core.store.persistent:
        return []
    lost = sorted(entry.job.id for entry in core.table.in_state(SCHEDULED))
    if lost:
        log_safely(logging.WARNING, "close(): %d scheduled jobs were not due yet, and are "
                   "lost with the memory store: %s%s", len(lost), ", ".join(lost[:_IDS_LOGGED]),
                   " and more" if len(lost) > _IDS_LOGGED else "")
    return lost


def finish(core: Core, threads: Sequence[threading.Thread]) -> list[str]:
    """The end of a close() a handler called: the queue is drained; stop and give the store
    up. Run by a worker on its way out, under the queue's close lock. Returns the ids of
    the jobs lost (scheduled, in memory)."""
    if core.closed:
        return []
    here = threading.current_thread()
    for thread in threads:  # on their way out too: nothing is left to run
        if thread is not here:
            thread.join(CANCEL_GRACE)
    with core.mutex:
        lost = _scheduled_lost_locked(core)
        core.closed = True
        core.changed_locked()
    core.store.close(check_timeout("shutdown_timeout", core.config.shutdown_timeout))
    return lost
