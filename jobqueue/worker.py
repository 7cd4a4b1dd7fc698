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
left goes back to the store, as a close() that times out leaves it.

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
import signal
import sys
import threading
from types import FrameType

from jobqueue.errors import StoreError, StoreLocked
from jobqueue.final import App, Config, JobQueue
from jobqueue.final.pg_admin import mask

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
    except Exception as exc:
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
        changes["num_workers"] = workers
    elif not config.num_workers:
        changes["num_workers"] = Config.num_workers  # the app's producers have none
    if queue is not None:
        if config.database_url is None:
            raise WorkerError("--queue names a queue in PostgreSQL, and this config keeps "
                              "its jobs in LMDB or in memory")
        changes["queue_name"] = queue
    if prefetch is not None:
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

    Call from the main thread (it installs signal handlers). Raises WorkerError for what
    keeps it from starting.
    """
    logging.basicConfig(level=log_level.upper(), format=_LOG_FORMAT, stream=sys.stderr)
    signals: list[int] = []
    wake = threading.Event()  # set by a signal, and by the closing thread once done

    def on_signal(number: int, frame: FrameType | None) -> None:
        signals.append(number)
        wake.set()

    previous = {number: signal.signal(number, on_signal)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        config, app = load(target)
        config = _configure(config, workers, queue, prefetch)
        try:
            jq = JobQueue(config, app=app)
        except StoreLocked as exc:
            raise WorkerError(str(exc), EXIT_OWNED) from None
        except (StoreError, ValueError, TypeError, ImportError) as exc:
            raise WorkerError(str(exc)) from None
        print(_describe(config, app, jq), flush=True)
        return _serve(jq, config, signals, wake)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _serve(jq: JobQueue, config: Config, signals: list[int], wake: threading.Event) -> int:
    """Run until a signal; close gracefully; close at once on a second signal."""
    while not signals:
        wake.wait()
    name = signal.Signals(signals[0]).name
    logger.info("%s: closing (running and claimed jobs finish, up to %s s; send it again to "
                "stop waiting)", name, config.shutdown_timeout)
    outcome: list[list[str] | None] = []

    def close() -> None:
        try:
            outcome.append(jq.close())
        except BaseException:
            logger.exception("close() failed")
            outcome.append(None)
        finally:
            wake.set()

    closer = threading.Thread(target=close, name="jobqueue-worker-close")
    closer.start()
    hurried = False
    while not outcome and closer.is_alive():
        wake.clear()
        if len(signals) > 1 and not hurried:
            hurried = True
            logger.warning("%s again: not waiting for running jobs; what is unfinished goes "
                           "back to the store", signal.Signals(signals[-1]).name)
            jq.close(timeout=0)  # makes the close() in progress give up now
        elif not outcome and closer.is_alive():
            wake.wait()
    closer.join()
    abandoned = outcome[0] if outcome else None
    if abandoned is None:
        return EXIT_UNEXPECTED
    if abandoned:
        logger.warning("stopped; %d jobs left unfinished", len(abandoned))
        return EXIT_ABANDONED
    logger.info("stopped; every accepted job finished")
    return 0
