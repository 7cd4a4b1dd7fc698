"""Periodic jobs: ``every(seconds)`` and ``cron(expression)`` schedules, one thread for all.

Each tick enqueues the job a factory makes, under an id made of the schedule's name and the
tick's time (``report@2026-12-01T03:00:00Z``). Ticks fall on fixed times (multiples of the
period since the epoch, or the cron expression's times), so every process computes the same
ids: an id the store holds already, live or finished, is not enqueued again. So a restart,
or several processes sharing a PostgreSQL queue, never enqueue one tick twice.

Ticks missed while no process ran are skipped: a schedule starts at its first tick after
``every()``/``cron()`` is called. A tick that comes while the thread is still enqueueing an
earlier one (a full queue makes it wait for room) is coalesced: the schedule resumes at its
next tick after now.
"""

from __future__ import annotations

import datetime
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from jobqueue.errors import DuplicateJob, QueueClosed
from jobqueue.final._core import Core, log_safely
from jobqueue.final._model import Job
from jobqueue.final._table import Entry

__all__ = ["Schedule", "cron_ticks", "every_ticks", "tick_id", "ticker"]

class Ticks:
    """A schedule's times, in epoch seconds: the next one after a time, and the latest one
    at or before it."""

    def __init__(self, next_after: Callable[[float], float],
                 latest: Callable[[float], float]) -> None:
        self.next_after = next_after
        self.latest = latest


@dataclass
class Schedule:
    name: str
    ticks: Ticks
    factory: Callable[[], Job]
    next_tick: float


def every_ticks(seconds: float) -> Ticks:
    # Ticks are whole multiples k * seconds. Division rounds: (k * seconds) / seconds may
    # come out just under k, so each answer is checked against ``now`` and moved on.
    def next_after(now: float) -> float:
        k = math.floor(now / seconds) + 1
        while k * seconds <= now:
            k += 1
        return k * seconds

    def latest(now: float) -> float:
        k = math.floor(now / seconds)
        while k * seconds > now:
            k -= 1
        while (k + 1) * seconds <= now:
            k += 1
        return k * seconds

    return Ticks(next_after, latest)


def cron_ticks(expression: str, tz: datetime.tzinfo) -> Ticks:
    try:
        from croniter import croniter
    except ImportError:
        raise ImportError("cron() needs croniter: pip install 'croniter>=2.0' (from a jobqueue "
                          "checkout: pip install '.[cron]')") from None
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a str, not {type(expression).__name__}")
    if not croniter.is_valid(expression):
        raise ValueError(f"not a cron expression: {expression!r}")

    def next_after(now: float) -> float:
        start = datetime.datetime.fromtimestamp(now, tz)
        return float(croniter(expression, start).get_next(float))

    def latest(now: float) -> float:
        return float(croniter(expression, datetime.datetime.fromtimestamp(
            next_after(now), tz)).get_prev(float))

    return Ticks(next_after, latest)


def tick_id(name: str, tick: float) -> str:
    stamp = datetime.datetime.fromtimestamp(tick, datetime.timezone.utc)
    spec = "seconds" if tick == int(tick) else "milliseconds"
    return f"{name}@{stamp.isoformat(timespec=spec).replace('+00:00', 'Z')}"


def ticker(core: Core, enqueue: Callable[[Job], None]) -> None:
    """The periodic thread: enqueue each schedule's ticks as they come, until close().
    ``enqueue`` is the queue's own (eager mode runs the job there and then)."""
    while True:
        with core.mutex:
            while True:
                if core.closing:
                    return
                now = core.clock() + core.table.epoch_offset
                due = [s for s in core.schedules if s.next_tick <= now]
                if due:
                    break
                earliest = min((s.next_tick for s in core.schedules), default=None)
                wait = None if earliest is None else min(earliest - now, threading.TIMEOUT_MAX)
                core.tick_wake.wait(wait)
        for schedule in due:
            # Several ticks due at once (the thread waited for room): the latest of them.
            try:
                tick = max(schedule.next_tick, schedule.ticks.latest(now))
            except Exception:  # no time after now (see below): this one is the last
                tick = schedule.next_tick
            try:
                schedule.next_tick = schedule.ticks.next_after(tick)
            except Exception:  # a cron expression whose times ran out (a year range)
                log_safely(logging.WARNING, "periodic job %r has no time after %s: its "
                           "schedule ends", schedule.name, tick_id(schedule.name, tick))
                with core.mutex:
                    core.schedules.remove(schedule)
            try:
                _enqueue_tick(core, enqueue, schedule, tick)
            except QueueClosed:
                return
            except BaseException:  # even SystemExit from a factory: the others go on
                log_safely(logging.ERROR, "periodic job %r: the tick at %s was not enqueued",
                           schedule.name, tick_id(schedule.name, tick), exc_info=True)


def _enqueue_tick(
    core: Core, enqueue: Callable[[Job], None], schedule: Schedule, tick: float
) -> None:
    made = schedule.factory()
    if not isinstance(made, Job):
        raise TypeError(f"the job factory of periodic job {schedule.name!r} returned "
                        f"{type(made).__name__}, not a jobqueue.final.Job")
    job = Job(tick_id(schedule.name, tick), made.payload, made.priority, made.kind,
              made.max_retries)
    try:
        if core.shared is not None:
            if core.closing:
                raise QueueClosed("cannot enqueue after close() has started")
            record = Entry(job, None, 0, 0.0).record
            core.shared.insert([record], None, revive=False)
        elif core.store.get(job.id) is None:  # only this thread enqueues tick ids
            enqueue(job)
        else:
            raise DuplicateJob(job.id)
    except DuplicateJob:
        log_safely(logging.DEBUG, "periodic job %r: %s is enqueued already", schedule.name,
                   job.id)
