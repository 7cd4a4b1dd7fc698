"""``jobqueue``: inspect and repair a persisted queue, while its owner runs or after it died.

Read commands (stats, list, show) open the LMDB store read-only: they never write, and LMDB
readers never block the owning process. Repairs (requeue, purge) need the store to be free:
each is one transaction. All of it goes through the public :mod:`jobqueue.final.admin`.

Given a ``postgresql://`` URL instead of a directory (and ``--queue NAME``), the commands read
and repair a queue in PostgreSQL, through the same module, while its processes run: each
repair is one transaction, and a job a process holds is refused (exit 2).

Exit status: 0 done; 1 refused because a process owns the store; 2 bad input (a missing path,
not a store, an unknown id, a store from a newer jobqueue, a store it may not read); 3 an error
it did not expect, told in one line like the others: the command never prints a traceback.

What it prints comes from the store, which anyone may have written to: ids, kinds and errors
are shown with control characters escaped, and JSON never holds NaN or Infinity.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import lmdb

from jobqueue import __version__, worker
from jobqueue.cli import output
from jobqueue.errors import StoreError, StoreLocked
from jobqueue.final import JobRecord, Status, admin
from jobqueue.final.admin import Reader, is_database_url, mask

__all__ = ["main"]

EXIT_OWNED = 1
EXIT_USAGE = 2
EXIT_UNEXPECTED = 3
EXIT_INTERRUPTED = 130  # as a shell reports a process Ctrl-C ended
_MAP_RESIZED_TRIES = 5  # the owner grew its map while a command read: read again

_STATUSES = [status.value for status in Status]
_PRIORITIES = ["high", "medium", "low"]
_LIVE = (Status.QUEUED, Status.PROCESSING, Status.RETRYING, Status.SCHEDULED)


class CommandError(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


# -- reading -------------------------------------------------------------------------------

def _open(path: str, queue: str = "default") -> Reader:
    """A reader of the LMDB store at ``path``, or of queue ``queue`` in the PostgreSQL
    database ``path`` names (a ``postgresql://`` URL)."""
    try:
        return admin.open_reader(path, queue)
    except StoreError as exc:
        raise CommandError(str(exc)) from None


def _known_queue(reader: Reader, path: str) -> None:
    """Refuse a queue name the database has never seen (a typo shows zeros otherwise)."""
    queues = reader.queues()
    if queues is None or reader.queue in queues:
        return
    known = ", ".join(f"{output.printable(name)!r} ({output.jobs(count)})" for name, count in
                      queues.items()) or "none yet"
    raise CommandError(f"no queue {reader.queue!r} in {mask(path)}: no job and no process "
                       f"has used it (its queues: {known}); pass --queue NAME")


def stats(path: str, queue: str = "default") -> dict[str, Any]:
    """The ``stats --json`` shape, documented in the README."""
    with _open(path, queue) as reader:
        _known_queue(reader, path)
        by_status: Counter[str] = Counter()
        by_priority: Counter[str] = Counter()
        for (status, priority), count in reader.counts().items():
            by_status[status.value] += count
            if status in _LIVE:
                by_priority[_PRIORITIES[priority]] += count
        oldest = reader.oldest_queued()
        return {
            "by_status": {status: by_status[status] for status in _STATUSES},
            "by_priority": {priority: by_priority[priority] for priority in _PRIORITIES},
            "dead_letters": by_status[Status.FAILED.value],
            "oldest_queued_age": None if oldest is None else max(0.0, time.time() - oldest),
            **reader.details(),
        }


def select(path: str, status: str | None, priority: str | None, kind: str | None,
           limit: int | None, queue: str = "default", newest: bool = False,
           ) -> list[tuple[JobRecord, int]]:
    """The matching jobs, oldest first (``newest``: newest first), each with its payload's
    size."""
    with _open(path, queue) as reader:
        _known_queue(reader, path)
        rank = None if priority is None else _PRIORITIES.index(priority)
        return reader.select(status, rank, kind, limit, newest)


def show(path: str, job_id: str, queue: str = "default") -> JobRecord:
    with _open(path, queue) as reader:
        try:
            record = reader.get(job_id)
        except StoreError as exc:
            raise CommandError(str(exc)) from None
    if record is None:
        raise CommandError(f"no job {job_id!r} in {_where(path, queue)}")
    return record


def _where(path: str, queue: str) -> str:
    return f"queue {queue!r} of the database" if is_database_url(path) else repr(path)


# -- repairing -----------------------------------------------------------------------------

def _repair(path: str, change: str, ids: list[str] | None, statuses: list[Status],
            queue: str = "default", force: bool = False) -> list[str]:
    try:
        if change == "requeue":
            return admin.requeue(path, ids, queue=queue)
        if change == "cancel":
            return admin.cancel(path, ids or [], queue=queue)
        return admin.purge(path, ids, statuses, queue=queue, force=force)
    except StoreLocked as exc:
        raise CommandError(
            f"{exc}; stop it first: repairs change the store only when no process owns it",
            EXIT_OWNED,
        ) from None
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    except KeyError as exc:
        raise CommandError(f"no job {exc.args[0]!r} in {_where(path, queue)}; nothing "
                           "changed") from None
    except ValueError as exc:
        raise CommandError(f"{exc}; nothing changed") from None


# -- the command line ----------------------------------------------------------------------

EXAMPLES = """examples:
  jobqueue stats ./jobs.db                 counts, oldest queued job, owner
  jobqueue stats postgresql:///app --queue emails   a queue in PostgreSQL
  jobqueue stats ./jobs.db --watch 2       refresh every 2 seconds
  jobqueue list ./jobs.db --status failed  the dead letters, with their last error
  jobqueue show ./jobs.db welcome-42       everything stored about one job
  jobqueue requeue ./jobs.db --all-failed  after the outage: run the failed jobs again
  jobqueue cancel ./jobs.db welcome-42     it will not run (queued, scheduled, retrying)
  jobqueue purge ./jobs.db --status completed   forget finished jobs

exit status: 0 done, 1 refused (a process owns the store), 2 bad input, 3 unexpected error

  jobqueue worker tasks:app --workers 8     run the tasks of tasks.py's app until SIGTERM"""

WORKER_EPILOG = """examples:
  jobqueue worker tasks:app                 the app made in tasks.py (current directory)
  jobqueue worker myproject.jobs:app --workers 8 --queue emails --prefetch 0

exit status: 0 stopped by a signal, every accepted job finished; 1 another process owns the
LMDB store; 2 bad input (module, attribute, config, store); 3 unexpected error; 4 stopped by
a signal with jobs left unfinished (back in the store)"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobqueue",
        description="Inspect and repair a jobqueue store (Config(persist_path=...)).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jobqueue {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("path", metavar="PATH", help="the store directory (persist_path), "
                         "or a postgresql:// URL (database_url)")
        sub.add_argument("--queue", default="default", metavar="NAME",
                         help="in a database, the queue_name (default: default)")
        return sub

    sub = commands.add_parser(
        "worker", help="run the tasks of an app until SIGTERM or SIGINT",
        description="Run the tasks of an App (or the handlers of a Config) in this process "
        "until SIGTERM or SIGINT; a second signal stops waiting for running jobs.",
        epilog=WORKER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("target", metavar="MODULE:ATTR",
                     help="the app (final.App) or config (final.Config) to run, as "
                     "tasks:app for the app made in tasks.py")
    sub.add_argument("--workers", type=_count, metavar="N",
                     help="worker threads (default: the config's num_workers)")
    sub.add_argument("--queue", metavar="NAME",
                     help="in PostgreSQL, the queue_name to serve (default: the config's)")
    sub.add_argument("--prefetch", type=_count, metavar="N",
                     help="jobs held beyond the running ones, in PostgreSQL (0: claim only "
                     "for idle workers; default: the config's, else by the pace of the jobs)")
    sub.add_argument("--log-level", default="INFO", type=str.upper,
                     choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                     help="logging to stderr from this level (default INFO)")

    sub = command("stats", "counts by status and priority, dead letters, size, owner",
                  "jobqueue stats ./jobs.db --json")
    sub.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub.add_argument("--watch", type=_seconds, metavar="SECONDS", help="refresh until Ctrl-C")

    sub = command("list", "one line a job, oldest first",
                  "jobqueue list ./jobs.db --status failed --kind email --limit 20")
    sub.add_argument("--status", choices=_STATUSES, help="only jobs with this status")
    sub.add_argument("--newest", action="store_true", help="newest first")
    sub.add_argument("--priority", choices=_PRIORITIES, help="only jobs of this priority")
    sub.add_argument("--kind", help="only jobs of this kind")
    sub.add_argument("--limit", type=_count, default=100, help="at most N jobs (default 100)")
    sub.add_argument("--json", action="store_true", help="print JSON for scripts")

    sub = command("show", "everything stored about one job", "jobqueue show ./jobs.db job-42")
    sub.add_argument("id", metavar="ID", help="the job's id, as given to Job(id=...)")
    sub.add_argument("--json", action="store_true", help="print JSON for scripts")

    sub = command("requeue", "run FAILED jobs again from attempt 0 (store must be free)",
                  "jobqueue requeue ./jobs.db --all-failed")
    sub.add_argument("ids", metavar="ID", nargs="*", help="the jobs to run again")
    sub.add_argument("--all-failed", action="store_true", help="every FAILED job")

    sub = command("cancel", "cancel queued, scheduled or retrying jobs (LMDB: store must be "
                  "free; PostgreSQL: while processes run, if none holds the job)",
                  "jobqueue cancel ./jobs.db welcome-42")
    sub.add_argument("ids", metavar="ID", nargs="+", help="the jobs to cancel")

    sub = command("purge", "delete finished jobs or given ids (LMDB: store must be free)",
                  "jobqueue purge ./jobs.db --status completed --status cancelled")
    sub.add_argument("ids", metavar="ID", nargs="*", help="the jobs to delete")
    sub.add_argument("--status", choices=_STATUSES, action="append", default=[],
                     help="every job with this status (repeat for several)")
    sub.add_argument("--force", action="store_true",
                     help="delete live jobs too (queued, scheduled, retrying): they never run")
    sub.add_argument("--completed", action="store_true", help="same as --status completed")
    sub.add_argument("--failed", action="store_true", help="same as --status failed")
    sub.add_argument("--cancelled", action="store_true", help="same as --status cancelled")
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.command == "stats":
        while True:
            data = stats(args.path, args.queue)
            if args.json:
                print(output.dumps(data), flush=True)
            else:
                output.print_stats(data)
            if not args.watch:
                return
            time.sleep(args.watch)
            if not args.json and sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            else:
                print()
    elif args.command == "list":
        found = select(args.path, args.status, args.priority, args.kind, args.limit,
                       args.queue, args.newest)
        if args.json:
            print(output.dumps([output.job_json(r, payload_size=size) for r, size in found]))
        else:
            output.print_list(r for r, _ in found)
    elif args.command == "show":
        record = show(args.path, args.id, args.queue)
        if args.json:
            print(output.dumps(output.job_json(record, payload=True)))
        else:
            output.print_show(record)
    elif args.command == "requeue":
        if bool(args.ids) == args.all_failed:
            raise CommandError("requeue takes job ids or --all-failed, not both or neither")
        done = _repair(args.path, "requeue", None if args.all_failed else args.ids, [],
                       args.queue)
        shown = ", ".join(output.printable(job_id) for job_id in done[:20])
        print(f"requeued {output.jobs(len(done))}" + (f": {shown}" if done else ""))
    elif args.command == "purge":
        statuses = [Status(value) for value in args.status]
        statuses += [s for s, on in ((Status.COMPLETED, args.completed),
                                     (Status.FAILED, args.failed),
                                     (Status.CANCELLED, args.cancelled))
                     if on and s not in statuses]
        if bool(args.ids) == bool(statuses):
            raise CommandError("purge takes job ids, or --status STATUS (repeatable), not "
                               "both or neither")
        done = _repair(args.path, "purge", None if statuses else args.ids, statuses,
                       args.queue, args.force)
        print(f"purged {output.jobs(len(done))}")
    elif args.command == "cancel":
        done = _repair(args.path, "cancel", args.ids, [], args.queue)
        shown = ", ".join(output.printable(job_id) for job_id in done[:20])
        print(f"cancelled {output.jobs(len(done))}: {shown}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "worker":
        return _worker(args)
    try:
        for attempt in range(_MAP_RESIZED_TRIES):
            try:
                _run(args)
                break
            except lmdb.MapResizedError:  # the owner grew its map as this read it
                if attempt == _MAP_RESIZED_TRIES - 1:
                    raise
    except CommandError as exc:
        return _fail(mask(str(exc), args.path), exc.status)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
    except StoreError as exc:
        return _fail(mask(str(exc), args.path), EXIT_USAGE)
    except OSError as exc:  # a store it may not read (permissions), a disk error
        where = f" {exc.filename!r}" if exc.filename else ""
        return _fail(f"cannot read{where}: {exc.strerror or exc}", EXIT_USAGE)
    except Exception as exc:
        if type(exc).__module__.startswith("psycopg"):  # the database said no: not a bug here
            return _fail(mask(f"the database refused: {exc}", args.path), EXIT_USAGE)
        # A bug: one line, and the way to report it.
        return _fail(f"unexpected {type(exc).__name__}: {exc} (please report it)",
                     EXIT_UNEXPECTED)
    return 0


def _worker(args: argparse.Namespace) -> int:
    try:
        return worker.run(args.target, workers=args.workers, queue=args.queue,
                          prefetch=args.prefetch, log_level=args.log_level)
    except worker.WorkerError as exc:
        return _fail(str(exc), exc.status)
    except KeyboardInterrupt:  # Ctrl-C before the queue was open: nothing to close
        return _fail("interrupted while starting", EXIT_INTERRUPTED)
    except Exception as exc:
        worker.logger.critical("the worker failed", exc_info=True)
        return _fail(f"unexpected {type(exc).__name__}: {exc} (please report it)",
                     EXIT_UNEXPECTED)


def _fail(message: str, status: int) -> int:
    print(f"jobqueue: error: {output.printable(message)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
