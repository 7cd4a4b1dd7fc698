"""What every thread of one queue shares: the job table and store, under one mutex.

:class:`~jobqueue.final._queue.JobQueue` makes one :class:`Core` and hands it to the parts that
work on it: admission (:mod:`._admission`, producers), the workers and the retry timer
(:mod:`._workers`), and the claimer (:mod:`._claimer`). The core holds the fields they share
and the few steps they all take after changing them: waking whoever waits for room, for a
change, for the queue to drain.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from jobqueue._priority import Priority
from jobqueue.final._lock import YieldingLock
from jobqueue.final._model import Config, Handler, Hook
from jobqueue.final._states import COMPLETED, FAILED, PROCESSING, QUEUED, RETRYING, State
from jobqueue.final._table import JobTable
from jobqueue.final.stores.base import SharedStore, Store

if TYPE_CHECKING:
    from jobqueue.final._tasks import Task

__all__ = ["Core", "WaitingLine", "log_safely"]

_PRIORITIES = tuple(Priority)
_WAIT_MAX = threading.TIMEOUT_MAX  # a longer timeout raises OverflowError


logger = logging.getLogger("jobqueue")


def log_safely(level: int, message: str, *args: object, exc_info: object = None) -> None:
    """Log from a queue's thread or its close(), whatever a log handler does.

    logging leaves a handler's failures to the handler (``handleError``); one that raises
    anyway, or calls the queue back and is refused, must not kill a worker with a job in
    hand, or stop close() before it gives the store up.
    """
    try:
        logger.log(level, message, *args, exc_info=exc_info)  # type: ignore[arg-type]
    except BaseException:  # noqa: S110 - nothing is left to tell it to
        pass


class _Waiter:
    __slots__ = ("lock", "slots", "woken")

    def __init__(self, slots: int) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.slots = slots
        self.woken = False


class WaitingLine:
    """Producers waiting for room in one priority: a Condition that knows whom it woke.

    threading.Condition cannot say whether anyone is left to wake, and a producer that was
    woken but does not hold the mutex again yet looks, to any count kept beside it, like one
    still waiting: with a full queue, 98 % of the notifies went to nobody, on a path every
    job takes. Here a waiter leaves the line when it is woken, so ``waiting`` is exactly who
    is left. The queue's mutex guards it; ``wait`` releases it and takes it back, as
    ``Condition.wait`` does.
    """

    def __init__(self, mutex: YieldingLock) -> None:
        self._mutex = mutex
        self._line: deque[_Waiter] = deque()  # not woken yet, oldest first
        self.waiting = 0  # len(_line), read on the hot path
        self.batches = 0  # waiters in the line that need more than one slot

    def wait(self, slots: int, timeout: float | None) -> bool:
        """Wait for room for ``slots`` jobs until woken, or ``timeout`` seconds (None:
        forever). Call with the mutex held; holds it again on return. True if woken."""
        waiter = _Waiter(slots)
        self._line.append(waiter)
        self.waiting += 1
        self.batches += slots > 1
        self._mutex.release()
        try:
            waiter.lock.acquire(True, -1 if timeout is None else min(timeout, _WAIT_MAX))
        finally:
            self._mutex.acquire()
            if not waiter.woken:  # timed out or interrupted: still in the line
                self._line.remove(waiter)
                self.waiting -= 1
                self.batches -= slots > 1
        return waiter.woken

    def wake(self, slots: int) -> None:
        """Room for ``slots`` more jobs: wake that many waiters, or every one while one
        needs more than a slot (a batch that does not fit must not take the wake-up from a
        single job that would)."""
        self._wake(self.waiting if self.batches else slots)

    def wake_all(self) -> None:
        self._wake(self.waiting)

    def _wake(self, count: int) -> None:
        line = self._line
        while line and count > 0:
            waiter = line.popleft()
            self.waiting -= 1
            self.batches -= waiter.slots > 1
            waiter.woken = True
            waiter.lock.release()
            count -= 1


class Core:
    """The shared state of one queue. Fields are read and written with ``mutex`` held,
    except ``config``, ``store``, ``clock``, ``running``, ``ran``, ``forked``, ``seq``,
    ``shared``, ``max_prefetch``, ``hooks`` and ``shutdown``, which never
    change or are safe on their own."""

    def __init__(
        self, config: Config, store: Store, clock: Callable[[], float] = time.monotonic,
        epoch_offset: float | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.running = store.running  # told of each attempt about to run, if not None
        self.ran = store.ran  # and of its handler returning
        self.forked = False  # set in a child forked from this process: workers there stop
        self.seq = itertools.count(store.last_seq() + 1)  # next() is atomic
        # A shared store (PostgreSQL) is the queue of many processes: this one holds what its
        # workers run and ``prefetch`` jobs more (``Config.prefetch``, or else as many as
        # its workers finish in a moment: see _claimer), and claims again once half of
        # those are taken, so that the other processes find work too: short
        # jobs come in batches, and slow ones are not held by a process with no worker
        # free for them. Otherwise stored jobs are this queue's alone, and it claims all it
        # has room for.
        self.shared: SharedStore | None = store.shared
        self.max_prefetch = (
            config.prefetch if config.prefetch is not None
            else min(config.queue_size, max(64, 8 * config.num_workers))
        )
        self.prefetch = 0  # jobs held beyond the running ones, at most (shared stores)
        self.claim_below = 0  # claim when fewer are held, running or queued (shared)
        self.set_prefetch_locked(self.max_prefetch if config.prefetch is not None else 0)
        # Cooperative cancellation for every running handler once close() gives up waiting.
        self.shutdown = threading.Event()

        # mutex guards the table and every field below. Two reads go without it, where a
        # stale answer is harmless: a worker looks up its job's handler (one dict lookup)
        # and whether close() gave up (a flag) for the attempt it is about to run or log.
        # Conditions sharing it (room[p] is a WaitingLine, which works like one):
        #   work_ready: idle workers wait for a job, or for close() to finish the queue;
        #   room[p]: producers wait for room in priority p;
        #   changed: wait(), join(), close() and the claimer wait for jobs to move;
        #   retry_due: the retry timer waits for the earliest retry;
        #   claim_wake: the claimer waits for room in a priority the store may hold jobs of;
        #   tick_wake: the periodic thread waits for the next tick of its schedules.
        self.mutex = YieldingLock()
        self.work_ready = threading.Condition(self.mutex)  # type: ignore[arg-type]
        self.room = [WaitingLine(self.mutex) for _ in _PRIORITIES]
        self.changed = threading.Condition(self.mutex)  # type: ignore[arg-type]
        self.retry_due = threading.Condition(self.mutex)  # type: ignore[arg-type]
        self.claim_wake = threading.Condition(self.mutex)  # type: ignore[arg-type]
        self.tick_wake = threading.Condition(self.mutex)  # type: ignore[arg-type]
        self.schedules: list[Any] = []  # periodic schedules (_periodic.Schedule), by the ticker
        self.ticker_started = False
        self.table = JobTable(store, config.effective_weights, self.clock, epoch_offset)
        self.handlers: dict[str, Handler] = dict(config.handlers or {})
        self.tasks: dict[str, Task[Any, Any]] = {}  # kind -> the Task whose handler it is
        # kind -> a task's (retry_on, give_up_on); read without the mutex (one lookup).
        self.retry_rules: dict[str, tuple[Any, tuple[type[BaseException], ...]]] = {}
        # Running jobs cancel() asked to stop, and the Event each handler sleeping in
        # current_job().wait() waits on. Read without the mutex by handlers (one set or
        # dict operation, atomic under the GIL); kept here, not on every Entry, as few jobs
        # are ever cancelled or sleep.
        self.stop_asked: set[object] = set()
        self.sleepers: dict[object, threading.Event] = {}
        # The hook for each outcome, or None when the config has none (workers skip them).
        hooks = {COMPLETED: config.on_complete, FAILED: config.on_failure,
                 RETRYING: config.on_retry}
        self.hooks: dict[State, Hook] | None = {
            state: hook for state, hook in hooks.items() if hook is not None} or None
        self.unclaimed = [True, True, True]  # the store may hold jobs of p for this queue
        # A shared store: the claimer's claims are under way (the rows are this process's
        # in the database, not yet in the table); changed is notified when they land.
        self.claiming = False
        self.news = [0, 0, 0]  # counts jobs_ready() calls for p, for the claimer
        self.registered = 0  # counts register() calls of a new kind, for the claimer
        self.newest_seq = 0  # the highest seq of a job accepted: lives of an id go up
        # Workers waiting for work that no notify has reached yet. The notifier counts them
        # off, not the worker once it wakes: a woken worker may wait a while for the mutex,
        # and producers would notify it again on every enqueue meanwhile (measured: 99.7 % of
        # them in vain, at 0.4 us each).
        self.idle_workers = 0
        self.change_waiters = 0
        # wait() calls for stored jobs not held yet: id -> [waiters, the entry once claimed].
        self.watched: dict[str, list[Any]] = {}
        self.version = 0  # counts changes, so a waiter that read the store misses none
        self.closing = False  # close() has started: no new jobs
        self.stopping = False  # close() gave up waiting: workers stop
        self.closed = False
        # close() was called from a handler: it could not wait, so the workers finish the
        # queue and the first of them to exit gives the store up (see JobQueue.close).
        self.close_when_drained = False
        # When close() gives up waiting, on the clock (inf: never); a later close() with a
        # shorter timeout brings it forward.
        self.close_by = float("inf")
        # Handlers of this queue waiting in enqueue() for room that only a worker taking a
        # job can free: once every worker would wait, none ever frees it (admission).
        self.handlers_waiting_for_room = 0

    def set_prefetch_locked(self, prefetch: int) -> None:
        """Hold up to ``prefetch`` jobs beyond the running ones; claim again once half of
        them are taken (with 0, as soon as a worker is idle)."""
        self.prefetch = prefetch
        self.claim_below = self.config.num_workers + prefetch - prefetch // 2

    def claim_wanted_locked(self) -> bool:
        """A shared store: whether this queue holds few enough jobs to claim more."""
        return self.table.held() < self.claim_below

    def jobs_ready(self, priorities: Iterable[Priority] | None) -> None:
        """A shared store's news: jobs of ``priorities`` (None: any) may be claimable."""
        with self.mutex:
            for priority in _PRIORITIES if priorities is None else priorities:
                self.unclaimed[priority] = True
                self.news[priority] += 1
            self.claim_wake.notify()

    def jobs_changed(self) -> None:
        """A shared store's news: another process finished jobs."""
        with self.mutex:
            self.changed_locked()

    def room_freed_locked(self, priority: Priority, slots: int = 1) -> None:
        """Wake who waits for room in ``priority``: producers, and the claimer."""
        line = self.room[priority]
        if line.waiting:
            line.wake(slots)
        if self.unclaimed[priority]:
            self.claim_wake.notify()

    def ready_locked(self, jobs: int) -> None:
        """Wake idle workers for ``jobs`` newly QUEUED."""
        idle = self.idle_workers
        if idle:
            woken = jobs if jobs < idle else idle
            self.idle_workers = idle - woken
            self.work_ready.notify(woken)

    def wake_workers_locked(self) -> None:
        """Wake every idle worker, to see the queue closing or stopping."""
        self.idle_workers = 0
        self.work_ready.notify_all()

    def changed_locked(self) -> None:
        """Jobs moved: wake wait(), join() and close(), and let a closing queue wind down."""
        self.version += 1
        if self.change_waiters:
            self.changed.notify_all()
        if self.closing and self.drained_locked():
            self.wake_workers_locked()
            self.retry_due.notify()

    def wait_changed_locked(self, timeout: float | None) -> None:
        self.change_waiters += 1
        try:
            self.changed.wait(None if timeout is None else min(timeout, _WAIT_MAX))
        finally:
            self.change_waiters -= 1

    def drained_locked(self) -> bool:
        """True when close() has nothing left to wait for.

        A persistent store keeps jobs waiting for a retry for the next start; in memory they
        would be lost, so close() waits for them too.
        """
        table = self.table
        for priority in _PRIORITIES:
            if table.reserved(priority) or table.count(QUEUED, priority):
                return False
            if table.count(PROCESSING, priority):
                return False
            if table.count(RETRYING, priority) and not self.store.persistent:
                return False
        return True
