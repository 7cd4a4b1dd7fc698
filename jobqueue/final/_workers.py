"""The threads that run jobs: workers, and the timer that brings retries back.

A worker's loop is one mutex acquisition per job: settle the attempt it just ran, take the
next job. Everything slow happens without the mutex: the handler, formatting its failure,
logging, and deciding the retry. A job a worker holds is PROCESSING, and no other thread
moves it until that worker settles it.

The retry timer sleeps until the earliest retry is due, moves what is due back to QUEUED and
wakes workers. One thread, one heap: no per-job Timer.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable

from jobqueue.errors import Fail, JobTimeout
from jobqueue.final._context import JobContext, worker_local
from jobqueue.final._core import Core, log_safely
from jobqueue.final._model import Hook, Job, JobInfo
from jobqueue.final._retry import RetryPolicy
from jobqueue.final._states import CANCELLED, COMPLETED, FAILED, GONE, QUEUED, RETRYING
from jobqueue.final._table import Entry
from jobqueue.final.stores.base import JsonResult, LeaseLost

__all__ = ["call_hook", "call_hook_if_kept", "failed_attempt", "hook_call_locked",
           "retry_timer", "run_now", "settle_locked", "work"]


#: An attempt's outcome, worked out without the mutex: None or the result's bytes for
#: success, else the error as text and the delay before a retry (None: no retry); or LOST,
#: when a shared store said another process took the job over before its handler ran.
Outcome = tuple[str, float | None] | bytes | None
LOST: Outcome = ("taken over by another process", None)


def work(core: Core, policy: RetryPolicy, finish_close: Callable[[], None]) -> None:
    """A worker thread: run jobs until the queue is closed and drained, or gives up.

    ``finish_close`` finishes a close() that a handler called, which could not wait: the
    workers call it on their way out, once the queue is drained.
    """
    mutex, clock = core.mutex, core.clock
    entry: Entry | None = None
    outcome: Outcome = None
    hooked = core.hooks is not None
    while True:
        settled = None
        if not mutex.acquire_now():  # (the hot path: see YieldingLock)
            mutex.acquire()
        try:
            now = clock()
            if entry is not None:
                settle_locked(core, entry, outcome, now)
                if (core.shared is not None and True in core.unclaimed
                        and core.claim_wanted_locked()):
                    core.claim_wake.notify()  # a worker is free: the claimer fills it
                if hooked:
                    settled = hook_call_locked(core, entry)
            if settled is None:
                entry = _next_locked(core, now)
        finally:
            mutex.release()
        if settled is not None:  # called now, not once the next job comes
            call_hook_if_kept(core, settled[1].id, *settled)
            entry = None
            continue
        if entry is None:
            if core.close_when_drained:
                finish_close()
            return
        outcome = _run(core, policy, entry)
        if core.forked:
            return  # the handler forked, and this is the child: the queue is the parent's


def _next_locked(core: Core, now: float) -> Entry | None:
    """Take the next job, or None when this worker should exit."""
    table = core.table
    while True:
        if core.stopping:
            return None
        entry = table.take(now)
        if entry is not None:
            priority = entry.job.priority
            if core.room[priority].waiting or (
                core.unclaimed[priority] and core.shared is None  # (shared: on settling)
            ):
                core.room_freed_locked(priority)
            return entry
        if core.closing and core.drained_locked():
            return None
        core.idle_workers += 1  # counted off by whoever wakes it (see Core)
        core.work_ready.wait()
        now = core.clock()


#: The most of a failure's text kept as the job's last error: a store keeps it with the job.
MAX_ERROR_CHARS = 2000
#: What a handler returns that means it never ran its body: a call only made the object.
_UNRUN = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)


def _describe(error: BaseException) -> str:
    """The failure as text, whatever the exception does; never raises."""
    try:
        name = type(error).__name__
        if type(name) is not str:
            raise TypeError
    except BaseException:  # a metaclass made even the name raise
        name = "an exception that cannot be named"
    try:
        text = str(error)
        if type(text) is not str:
            raise TypeError
    except BaseException:  # its __str__ raised (anything at all): the type must do
        return name
    message = f"{name}: {text}" if text else name
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    # Text every store can keep: no lone surrogates, no NUL (PostgreSQL's text refuses both).
    if not message.isascii():
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\0" in message:
        message = message.replace("\0", "\\x00")
    return message


def _run(core: Core, policy: RetryPolicy, entry: Entry) -> Outcome:
    """Run one attempt; on failure, log it and decide its retry.

    The job's context stays set until the failure is logged: a log handler that calls the
    queue runs in this worker, and must be told, as the handler would be, that waiting for
    this very job would never end.
    """
    job = entry.job
    config = core.config
    job_timeout = config.job_timeout
    started = entry.started
    assert started is not None
    deadline = None if job_timeout is None else started + job_timeout
    ticket = None
    if core.running is not None:
        try:
            ticket = core.running(entry.record)
        except LeaseLost as lost:
            log_safely(logging.WARNING, "%s", lost)
            return LOST
        except Exception:  # the store is closed: close() gave up on this worker long ago
            log_safely(logging.WARNING, "job %r runs after its store was closed", job.id)
    # Eager mode runs a job inside another's handler: its context comes back after.
    outer = getattr(worker_local, "context", None) if config.eager else None
    worker_local.context = JobContext(job, entry.attempts, deadline, core.shutdown, core, entry)
    try:
        error: BaseException | None = None
        result: bytes | None = None
        try:
            handler = entry.handler  # tested against None only: a callable may be falsy
            if handler is None:
                handler = core.handlers.get(job.kind)
                if handler is None:
                    handler = config.handler
            if handler is None:  # its handler was replaced away; fail the attempt
                raise LookupError(f"no handler for kind {job.kind!r}")
            result = handler(job.payload)
            if result is not None and type(result) is not bytes:
                result = _kept(result)
        except BaseException as exc:  # even SystemExit: the worker must live to settle it
            error = exc
            result = None
        ran = core.ran
        if ticket is not None and ran is not None and not core.forked:  # (a child must not
            try:                                                         # mark the parent's)
                ran(ticket)
            except Exception:  # noqa: S110 - closed, as above
                pass
        if error is None:
            if deadline is None:
                return result
            elapsed = core.clock() - started
            if job_timeout is not None and elapsed <= job_timeout:
                return result
            error = JobTimeout(f"timed out after {elapsed:.3f} s (job_timeout={job_timeout} s)")
        # Logged before the outcome is visible: a waiter woken by the failure finds it
        # logged, and a slow log handler holds up no other thread.
        message = _describe(error)
        if core.config.eager and not isinstance(error, Exception):
            worker_local.interrupted = error  # run_now raises it once the job is settled
            return message, None
        if core.stop_asked and entry in core.stop_asked:
            log_safely(logging.INFO, "job %r stopped as cancel() asked: %s", job.id, message)
            return message, None
        return failed_attempt(core, policy, job, entry.attempts, message, error)
    finally:
        worker_local.context = outer


def _kept(result: object) -> bytes | None:
    """What the store keeps of a handler's result: bytes; nothing else (a plain handler's
    other values are not kept, so that ``return True`` costs nothing: a task encodes its
    result as JSON). Raises for what says the handler never ran."""
    if isinstance(result, (bytearray, memoryview)):
        return bytes(result)
    if type(result) is JsonResult:  # a task's
        return result
    if isinstance(result, _UNRUN):
        _discard(result)
        raise TypeError(
            f"the handler returned {type(result).__name__} {result!r} without "
            "running: handlers must be plain functions, not async or generators"
        )
    return None


def _discard(unrun: object) -> None:
    """Close a coroutine or generator a handler made, so Python does not warn it never ran."""
    try:
        if isinstance(unrun, types.AsyncGeneratorType):
            unrun.aclose().close()
        else:
            unrun.close()  # type: ignore[attr-defined]
    except BaseException:  # nothing here may keep the attempt from its outcome
        log_safely(logging.DEBUG, "closing what a handler returned failed", exc_info=True)


def failed_attempt(
    core: Core,
    policy: RetryPolicy,
    job: Job,
    attempts: int,
    message: str,
    error: BaseException | None,
) -> Outcome:
    """Decide the retry of a failed attempt and log the failure; call without the mutex."""
    if core.stopping:
        log_safely(logging.WARNING, "job %r failed as close() gave up on it: %s", job.id,
                   message)
        return message, None
    if error is not None and not _retried(core, job.kind, error):
        log_safely(logging.ERROR, "job %r failed (attempt %d), not retried: %s", job.id,
                   attempts, message, exc_info=error)
        return message, None
    delay = policy.next_delay(attempts, job.max_retries)
    if delay is not None:
        allowed = policy.max_retries if job.max_retries is None else job.max_retries
        log_safely(
            logging.WARNING, "job %r failed (attempt %d of %d), retrying in %.3f s: %s",
            job.id, attempts, allowed + 1, delay, message,
        )
    else:
        log_safely(logging.ERROR, "job %r failed after %d attempts: %s", job.id, attempts,
                   message, exc_info=error)
    return message, delay


def _retried(core: Core, kind: str, error: BaseException) -> bool:
    """Whether a failed attempt may be retried: not if the handler raised Fail, or an
    error its task's (else the config's) ``give_up_on`` names, or one ``retry_on`` does not
    name. Read without the mutex: a dict lookup."""
    if isinstance(error, Fail):
        return False
    config = core.config
    give_up_on: type[BaseException] | tuple[type[BaseException], ...]
    retry_on, give_up_on = core.retry_rules.get(kind) or (None, ())
    if retry_on is None:
        retry_on = config.retry_on
    if not give_up_on:
        give_up_on = config.give_up_on
    try:
        if give_up_on and isinstance(error, give_up_on):
            return False
        return retry_on is None or isinstance(error, retry_on)
    except BaseException:  # a metaclass whose __instancecheck__ raises: retry, as before
        log_safely(logging.ERROR, "retry_on/give_up_on could not classify %s; retried",
                   type(error), exc_info=True)
        return True


def settle_locked(core: Core, entry: Entry, outcome: Outcome, now: float) -> None:
    """Record an attempt's outcome."""
    table = core.table
    if core.stopping and table.get(entry.job.id) is not entry:
        return  # close() gave up on it and forgot it; the store keeps it as it was
    if outcome is LOST:
        table.transition(entry, GONE, now)
    elif outcome is None:
        table.transition(entry, COMPLETED, now)
    elif isinstance(outcome, bytes):  # (the rarer case: a result; a task's is JsonResult)
        entry.record = entry.record._replace(result=outcome)
        table.transition(entry, COMPLETED, now)
    else:
        entry.last_error, delay = outcome
        if core.stop_asked and entry in core.stop_asked and not core.stopping:
            table.transition(entry, CANCELLED, now)  # it stopped as cancel() asked
        elif core.stopping:
            # close() gave up on this job: it is not finished, so it is not failed either.
            # Back to the store, for the next start.
            table.transition(entry, QUEUED, now)
        elif delay is not None:
            entry.due = now + delay
            if table.transition(entry, RETRYING, now):
                core.retry_due.notify()
        else:
            table.transition(entry, FAILED, now)
    if core.stop_asked:
        core.stop_asked.discard(entry)
    core.changed_locked()


def run_now(core: Core, policy: RetryPolicy, job_id: str) -> None:
    """Eager mode: run a QUEUED job in the calling thread, its retries at once, until it
    is finished, as a worker would. The thread counts as the queue's own meanwhile, so a
    handler that waits for its own job is refused as on a worker. A KeyboardInterrupt or
    SystemExit from the handler fails the job, then reaches the caller: this is the
    caller's thread, not a worker that must live on."""
    owner = getattr(worker_local, "owner", None)
    worker_local.owner = core
    worker_local.interrupted = None
    try:
        _run_now(core, policy, job_id)
    finally:
        worker_local.owner = owner


def _run_now(core: Core, policy: RetryPolicy, job_id: str) -> None:
    table = core.table
    while True:
        with core.mutex:
            entry = table.get(job_id)
            if entry is None or entry.state not in (QUEUED, RETRYING):
                return
            now = core.clock()
            if entry.state is RETRYING:  # no waiting for the backoff
                table.retries.remove(entry)
                table.transition(entry, QUEUED, now)
            table.take_entry(entry, now)
        outcome = _run(core, policy, entry)
        with core.mutex:
            settle_locked(core, entry, outcome, core.clock())
            settled = hook_call_locked(core, entry) if core.hooks is not None else None
        if settled is not None:
            call_hook(core, *settled)  # (eager: memory, where a move is kept once told)
        interrupted = worker_local.interrupted
        if interrupted is not None:  # the job is FAILED: now the caller hears of it
            worker_local.interrupted = None
            raise interrupted


def hook_call_locked(core: Core, entry: Entry) -> tuple[Hook, JobInfo] | None:
    """The hook for the outcome just recorded, with the job's JobInfo, to call once the
    mutex is released; None if there is none. An outcome recorded while close() gives
    handlers their last second is recorded all the same, and heard of: an attempt close()
    gave up on is not (it went back to the store, QUEUED)."""
    hook = core.hooks.get(entry.state)  # type: ignore[union-attr]
    if hook is None:
        return None
    return hook, entry.record.info()


def call_hook_if_kept(core: Core, job_id: str, hook: Hook, info: JobInfo) -> None:
    """Call a hook once its outcome is kept where every process sees it: a shared store
    writes outcomes in batches, and may refuse one (another process took the job over,
    which the store logs at WARNING); then no hook is called."""
    if core.shared is not None:
        try:
            kept = core.shared.confirm(job_id, None)
        except Exception:  # closed while it waited: the outcome was never written
            kept = False
        if not kept:
            log_safely(logging.INFO, "no %s hook for job %r: its outcome here was not "
                       "written", info.status.value, job_id)
            return
    call_hook(core, hook, info)


def call_hook(core: Core, hook: Hook, info: JobInfo) -> None:
    """Call a hook; whatever it raises is logged, and changes nothing. Marked as a worker's
    call (``hook_of``): an enqueue from it waits for room as a handler's does."""
    previous = getattr(worker_local, "hook_of", None)
    worker_local.hook_of = core
    try:
        hook(info)
    except BaseException:  # even SystemExit: the job's outcome is recorded already
        log_safely(logging.ERROR, "a hook raised for job %r (%s); the job stays %s",
                   info.id, getattr(hook, "__name__", hook), info.status.value, exc_info=True)
    finally:
        worker_local.hook_of = previous


def retry_timer(core: Core) -> None:
    """The retry thread: move due retries back to QUEUED; sleep until the next one."""
    table = core.table
    with core.mutex:
        while True:
            if core.stopping or (core.closing and core.drained_locked()):
                return
            now = core.clock()
            due = table.come_due(now)
            if due:
                core.ready_locked(len(due))
            next_due = table.retries.next_due()
            wait = None if next_due is None else min(next_due - now, threading.TIMEOUT_MAX)
            core.retry_due.wait(wait)
