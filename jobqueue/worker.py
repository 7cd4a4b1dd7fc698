"""``jobqueue worker MODULE:ATTR``: run the tasks of an app (or the handlers of a config) in
this process until a signal stops it, as ``celery worker`` or ``rq worker`` do.

It imports ``MODULE`` (from the current directory first, as ``python -m`` does), takes its
``ATTR``, a :class:`jobqueue.final.App` or :class:`jobqueue.final.Config`, opens a
``JobQueue`` of it with the command line's changes, and says so in one line on stdout:

    jobqueue worker: ready (pid 4242): store postgresql://app:***@db/app, queue 'emails',
    4 workers, prefetch auto, 2 tasks: tasks.resize, tasks.send_email

Logging goes to stderr at ``--log-level`` (INFO by default, so that failed jobs are seen).
SIGTERM or SIGINT closes the queue gracefully: no new job starts, running and claimed ones
finish (up to ``shutdown_timeout``), and the store is given up; a second signal stops
waiting: running handlers are told to stop (``current_job().cancelled()``), and what is
left goes back to the store, as a close() that times out leaves it (and if that close() has
not returned 10 s later, say with the database away, the worker exits all the same). Until
the queue is open the signals do what they always do.

Exit status: 0 stopped by a signal, every accepted job finished; 1 another process owns the
LMDB store; 2 bad input (a module that does not import, an attribute that is not an app or
a config, a config no worker can run, a store that cannot be opened); 3 an error it did not
expect; 4 stopped by a signal, with jobs left unfinished (handed back to the store).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import select
import signal
import sys
import threading
import time
from types import FrameType

from jobqueue.errors import StoreError, StoreLocked
from jobqueue.final import App, Config, JobQueue
from jobqueue.final.admin import mask

__all__ = ["EXIT_ABANDONED", "WorkerError", "load", "run"]

logger = logging.getLogger("jobqueue.worker")

EXIT_OWNED = 1
EXIT_USAGE = 2
EXIT_UNEXPECTED = 3
EXIT_ABANDONED = 4
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d %(threadName)s] %(message)s"


class WorkerError(Exception):
    """What stops the worker before it runs, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def load(target: str) -> tuple[Config, App | None]:
    """The config and app ``MODULE:ATTR`` names. Raises WorkerError saying what is wrong."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise WorkerError(f"{target!r} is not MODULE:ATTR (say tasks:app, for the app "
                          "made in tasks.py)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")  # the current directory, as python -m has it
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise WorkerError(f"no module named {module_name!r} (from {os.getcwd()!r} or "
                              "the installed packages)") from None
        raise WorkerError(f"importing {module_name!r} failed: {exc}") from None
    except (Exception, SystemExit) as exc:  # (a module that exits as it is imported, too)
        logger.error("importing %r raised", module_name, exc_info=True)
        raise WorkerError(f"importing {module_name!r} raised {type(exc).__name__}: "
                          f"{exc}") from None
    value: object = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise WorkerError(f"module {module_name!r} has no {attr!r}") from None
    if isinstance(value, App):
        try:
            return value.config, value
        except RuntimeError as exc:
            raise WorkerError(f"{target}: {exc}") from None
    if isinstance(value, Config):
        if value.handler is None and not value.handlers:
            raise WorkerError(f"{target} is a Config with no handler or handlers: a worker "
                              "would have nothing to run")
        return value, None
    raise WorkerError(f"{target} is a {type(value).__name__}, not a jobqueue.final.App or "
                      "jobqueue.final.Config")


def _configure(config: Config, workers: int | None, queue: str | None,
               prefetch: int | None) -> Config:
    changes: dict[str, object] = {}
    if workers is not None:
        if workers < 1:
            raise WorkerError(f"--workers must be >= 1: a worker runs jobs (got {workers})")
        changes["num_workers"] = workers
    elif not config.num_workers:
        changes["num_workers"] = Config.num_workers  # the app's producers have none
    if queue is not None:
        if config.database_url is None:
            raise WorkerError("--queue names a queue in PostgreSQL, and this config keeps "
                              "its jobs in LMDB or in memory")
        changes["queue_name"] = queue
    if prefetch is not None:
        if config.database_url is None:
            raise WorkerError("--prefetch sets what a process claims from PostgreSQL, and "
                              "this config keeps its jobs in LMDB or in memory")
        changes["prefetch"] = prefetch
    if config.database_url is None and config.persist_path is None:
        raise WorkerError("the config keeps its jobs in memory, where no other process can "
                          "enqueue them: give it database_url (PostgreSQL) or persist_path "
                          "(LMDB)")
    if config.eager:
        raise WorkerError("the config is eager (eager=True runs jobs in the caller, for "
                          "tests): a worker needs a store")
    try:
        return dataclasses.replace(config, **changes)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise WorkerError(str(exc)) from None


def _describe(config: Config, app: App | None, queue: JobQueue) -> str:
    if config.database_url is not None:
        store = f"store {mask(config.database_url)}, queue {config.queue_name!r}"
    else:
        store = f"store {os.fspath(config.persist_path)!r} (LMDB)"  # type: ignore[arg-type]
    prefetch = "auto" if config.prefetch is None else str(config.prefetch)
    if app is not None:
        kinds = sorted(app.tasks)
        runs = f"{len(kinds)} tasks: {', '.join(kinds) or '(none)'}"
    else:
        kinds = sorted(config.handlers or {})
        runs = f"handlers for {', '.join(map(repr, kinds))}" if kinds else "one handler"
        if config.handler is not None and kinds:
            runs += " and a default handler"
    return (f"jobqueue worker: ready (pid {os.getpid()}): {store}, "
            f"{config.num_workers} workers, prefetch {prefetch}, {runs}")


def run(
    target: str,
    *,
    workers: int | None = None,
    queue: str | None = None,
    prefetch: int | None = None,
    log_level: str = "INFO",
) -> int:
    """Run a worker until SIGTERM or SIGINT; return the exit status (see the module).

    Call from the main thread (it installs signal handlers once the queue is open; until
    then the signals do what they always do). Raises WorkerError for what keeps it from
    starting.
    """
    logging.basicConfig(level=log_level.upper(), format=_LOG_FORMAT, stream=sys.stderr)
    config, app = load(target)
    config = _configure(config, workers, queue, prefetch)
    try:
        jq = JobQueue(config, app=app)
    except StoreLocked as exc:
        raise WorkerError(str(exc), EXIT_OWNED) from None
    except (StoreError, ValueError, TypeError, ImportError) as exc:
        raise WorkerError(str(exc)) from None
    try:
        with _Signals() as signals:
            print(_describe(config, app, jq), flush=True)
            return _serve(jq, config, signals)
    except BaseException:  # (stdout closed under it, say): no thread outlives it
        jq.close(timeout=0)
        raise


class _Signals:
    """SIGTERM and SIGINT, and the closing thread's word that it is done, as bytes on a
    pipe the main thread reads. The handlers run on the main thread between two of its
    bytecodes, maybe while it holds a lock: they take none (C writes the signal's number
    to the pipe: ``signal.set_wakeup_fd``)."""

    CLOSED = 0  # what the closing thread writes: no signal has number 0

    def __enter__(self) -> _Signals:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {number: signal.signal(number, self._ignore)
                          for number in (signal.SIGTERM, signal.SIGINT)}
        return self

    @staticmethod
    def _ignore(number: int, frame: FrameType | None) -> None:
        """The Python half of the handler: nothing (the pipe has the signal already)."""

    def next(self, timeout: float | None = None) -> int | None:
        """The next signal's number, or CLOSED; None if ``timeout`` seconds passed first."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        if not ready:
            return None
        return os.read(self._read, 1)[0]

    def closed(self) -> None:
        """Called by the closing thread: close() returned."""
        os.write(self._write, bytes([self.CLOSED]))

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)


#: After a second signal, how long the worker waits for close() to give up on what runs
#: (it gives handlers a second, then hands their jobs back) before it exits all the same.
_HURRIED_WAIT = 10.0


def _serve(jq: JobQueue, config: Config, signals: _Signals) -> int:
    """Run until a signal; close gracefully; stop waiting on a second signal."""
    number = signals.next()
    while number == _Signals.CLOSED or number is None:  # (only a signal wakes it here)
        number = signals.next()
    logger.info("%s: closing (running and claimed jobs finish, up to %s s; send it again to "
                "stop waiting)", signal.Signals(number).name, config.shutdown_timeout)
    outcome: list[list[str] | None] = []

    def close() -> None:
        try:
            outcome.append(jq.close())
        except BaseException:
            logger.exception("close() failed")
            outcome.append(None)
        finally:
            signals.closed()

    threading.Thread(target=close, name="jobqueue-worker-close", daemon=True).start()
    deadline = None
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        number = signals.next(wait)
        if number == _Signals.CLOSED:
            break
        if number is None:  # hurried, and still not closed: leave it behind
            logger.error("close() did not finish within %s s of the second signal: exiting "
                         "with it unfinished", _HURRIED_WAIT)
            return EXIT_ABANDONED
        if deadline is None:
            deadline = time.monotonic() + _HURRIED_WAIT
            logger.warning("%s again: not waiting for running jobs; what is unfinished goes "
                           "back to the store", signal.Signals(number).name)
            # close() blocks until the one in progress returns: from a thread of its own,
            # so that this one keeps count of the time and of further signals.
            threading.Thread(target=lambda: jq.close(timeout=0), daemon=True,
                             name="jobqueue-worker-hurry").start()
    abandoned = outcome[0] if outcome else None
    if abandoned is None:
        return EXIT_UNEXPECTED
    if abandoned:
        logger.warning("stopped; %d jobs left unfinished", len(abandoned))
        return EXIT_ABANDONED
    logger.info("stopped; every accepted job finished")
    return 0
