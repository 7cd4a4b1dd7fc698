"""``jobqueue``: inspect and repair a persisted queue, while its owner runs or after it died.

Read commands (stats, list, show) open the LMDB store read-only: they never write, and LMDB
readers never block the owning process. Repairs (requeue, purge) need the store to be free:
each is one transaction. All of it goes through the public :mod:`jobqueue.final.admin`.

Given a ``postgresql://`` URL instead of a directory (and ``--queue NAME``), the commands read
and repair a queue in PostgreSQL through :mod:`jobqueue.final.pg_admin`, while its processes
run: each repair is one transaction, and a job a process holds is refused (exit 2).

Exit status: 0 done; 1 refused because a process owns the store; 2 bad input (a missing path,
not a store, an unknown id, a store from a newer jobqueue, a store it may not read); 3 an error
it did not expect, told in one line like the others: the command never prints a traceback.

What it prints comes from the store, which anyone may have written to: ids, kinds and errors
are shown with control characters escaped, and JSON never holds NaN or Infinity.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import lmdb

from jobqueue import __version__, worker
from jobqueue.errors import StoreError, StoreLocked
from jobqueue.final import JobRecord, Status, admin, pg_admin
from jobqueue.final.admin import StoreReader
from jobqueue.final.pg_admin import QueueReader, is_database_url, mask

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

def _open(path: str, queue: str = "default") -> StoreReader | QueueReader:
    """A reader of the LMDB store at ``path``, or of queue ``queue`` in the PostgreSQL
    database ``path`` names (a ``postgresql://`` URL)."""
    try:
        if is_database_url(path):
            return QueueReader(path, queue)
        return StoreReader(path)
    except StoreError as exc:
        raise CommandError(str(exc)) from None


def _finite(value: float | None) -> float | None:
    """A time for JSON: NaN and infinities (a store written by hand, or by an old version)
    become null, as JSON has no such numbers."""
    return value if value is not None and math.isfinite(value) else None


def _job_json(record: JobRecord, payload: bool = False,
              payload_size: int | None = None) -> dict[str, Any]:
    """``payload_size`` for a record read without its payload (a database's list)."""
    data: dict[str, Any] = {
        "id": record.id,
        "status": record.status.value,
        "priority": record.priority.name.lower(),
        "kind": record.kind,
        "attempts": record.attempts,
        "last_error": record.last_error,
        "created_at": _finite(record.created_at),
        "started_at": _finite(record.started_at),
        "finished_at": _finite(record.finished_at),
        "run_at": _finite(record.due_at),
        "payload_size": len(record.payload) if payload_size is None else payload_size,
    }
    if payload:
        data["payload"], data["payload_encoding"] = _text_or_hex(record.payload)
        if record.result is None:
            data["result"] = data["result_encoding"] = None
        else:
            data["result"], data["result_encoding"] = _text_or_hex(record.result)
    return data


def _text_or_hex(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.hex(), "hex"


def _database_stats(reader: QueueReader) -> dict[str, Any]:
    """``stats`` of a queue in PostgreSQL, counted by the database."""
    by_status: Counter[str] = Counter()
    by_priority: Counter[str] = Counter()
    for (status, priority), count in reader.counts().items():
        by_status[status.value] += count
        if status in _LIVE:
            by_priority[_PRIORITIES[priority]] += count
    oldest = reader.oldest_queued()
    processes = reader.processes()
    listed = {process["owner"] for process in processes}
    for owner, held in reader.holders().items():  # a process too old to say it is alive
        if owner not in listed:
            processes.append({"owner": owner, "started_at": None, "heartbeat_at": None,
                              "lease_until": None, "alive": True, "held": held})
    return {
        "by_status": {status: by_status[status] for status in _STATUSES},
        "by_priority": {priority: by_priority[priority] for priority in _PRIORITIES},
        "dead_letters": by_status[Status.FAILED.value],
        "oldest_queued_age": None if oldest is None else max(0.0, time.time() - oldest),
        "queue": reader.queue, "table_bytes": reader.table_bytes(),
        "processes": processes, "lapsed_leases": reader.lapsed(),
    }


def _known_queue(reader: QueueReader, path: str) -> None:
    """Refuse a queue name the database has never seen (a typo shows zeros otherwise)."""
    queues = reader.queues()
    if reader.queue in queues:
        return
    known = ", ".join(f"{_printable(name)!r} ({_jobs(count)})" for name, count in
                      queues.items()) or "none yet"
    raise CommandError(f"no queue {reader.queue!r} in {mask(path)}: no job and no process "
                       f"has used it (its queues: {known}); pass --queue NAME")


def stats(path: str, queue: str = "default") -> dict[str, Any]:
    """The ``stats --json`` shape, documented in the README."""
    with _open(path, queue) as reader:
        if isinstance(reader, QueueReader):
            _known_queue(reader, path)
            return _database_stats(reader)
        by_status: Counter[str] = Counter()
        by_priority: Counter[str] = Counter()
        oldest: float | None = None
        for record in reader.records():
            by_status[record.status.value] += 1
            if record.status in _LIVE:
                by_priority[record.priority.name.lower()] += 1
            if record.status is Status.QUEUED and (oldest is None or record.created_at < oldest):
                oldest = record.created_at
        data = {
            "by_status": {status: by_status[status] for status in _STATUSES},
            "by_priority": {priority: by_priority[priority] for priority in _PRIORITIES},
            "dead_letters": by_status[Status.FAILED.value],
            "oldest_queued_age": None if oldest is None else max(0.0, time.time() - oldest),
        }
        data.update(disk_bytes=reader.disk_bytes(), map_size=reader.map_size(),
                    owner_pid=reader.owner_pid())
        return data


def select(path: str, status: str | None, priority: str | None, kind: str | None,
           limit: int | None, queue: str = "default", newest: bool = False,
           ) -> list[tuple[JobRecord, int]]:
    """The matching jobs, oldest first (``newest``: newest first), each with its payload's
    size."""
    with _open(path, queue) as reader:
        if isinstance(reader, QueueReader):  # filtered by the database; no payload read
            _known_queue(reader, path)
            rank = None if priority is None else _PRIORITIES.index(priority)
            return reader.select(status, rank, kind, limit, newest)
        found = []
        for record in reader.records():
            if status is not None and record.status.value != status:
                continue
            if priority is not None and record.priority.name.lower() != priority:
                continue
            if kind is not None and record.kind != kind:
                continue
            found.append(record)
    found.sort(key=lambda r: (r.created_at, r.id), reverse=newest)
    return [(r, len(r.payload)) for r in (found if limit is None else found[:limit])]


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


# -- printing ------------------------------------------------------------------------------

def _dumps(data: object) -> str:
    return json.dumps(data, allow_nan=False)  # never NaN or Infinity: not JSON


def _printable(text: str) -> str:
    """``text`` with control characters (newlines, escapes) and lone surrogates escaped, so
    that what a store holds cannot break a table or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _age(since: float | None) -> str:
    if since is None or not math.isfinite(since):
        return "-"
    seconds = max(0.0, time.time() - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _jobs(count: int) -> str:
    return f"{count:,} job" if count == 1 else f"{count:,} jobs"


#: The most lines the last column of a table wraps to (``show`` prints it all).
_WRAP_LINES = 3


def _table(rows: Sequence[Sequence[str]], width: int | None) -> str:
    """Columns as wide as their widest cell. The last one wraps to fit ``width`` (None: as
    wide as it is), onto at most three lines aligned under it."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
    last = None if width is None else max(20, width - fixed)
    lines = []
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths[:-1], strict=True)]
        tail = row[-1]
        if last is None or len(tail) <= last:
            lines.append("  ".join([*cells, tail]).rstrip())
            continue
        pieces = [tail[i : i + last] for i in range(0, len(tail), last)]
        if len(pieces) > _WRAP_LINES:
            pieces = pieces[:_WRAP_LINES]
            pieces[-1] = pieces[-1][:-1] + "…"
        lines.append("  ".join([*cells, pieces[0]]))
        lines += [" " * fixed + piece for piece in pieces[1:]]
    return "\n".join(lines)


def _print_stats(data: dict[str, Any]) -> None:
    statuses = "  ".join(f"{k} {v}" for k, v in data["by_status"].items())
    priorities = "  ".join(f"{k} {v}" for k, v in data["by_priority"].items())
    age = data["oldest_queued_age"]
    print(f"jobs by status    {statuses}")
    print(f"live by priority  {priorities}")
    print(f"dead letters      {data['dead_letters']}")
    print(f"oldest queued     {'-' if age is None else _age(time.time() - age)}")
    if "queue" in data:
        processes = data["processes"]
        alive = sum(process["alive"] for process in processes)
        print(f"queue             {_printable(data['queue'])}")
        print(f"table size        {_size(data['table_bytes'])}, every queue of the database")
        print(f"processes         {alive} alive" + (
            f", {len(processes) - alive} gone (lease lapsed)" if len(processes) > alive else ""))
        for process in processes:
            beat, until = process["heartbeat_at"], process["lease_until"]
            state = ("holds " + _jobs(process["held"]) if process["alive"] else
                     "gone: no heartbeat since " + _stamp(beat))
            print(f"  {_printable(process['owner'])}  {state}; last heartbeat "
                  f"{_age(beat)} ago, lease until {_stamp(until)}")
        print(f"lapsed leases     {data['lapsed_leases']} (claimed by the next process to look)")
        return
    owner = data["owner_pid"]
    print(f"store size        {_size(data['disk_bytes'])} on disk, map {_size(data['map_size'])}")
    print(f"owner             {'none' if owner is None else f'process {owner}'}")
    left = {status: data["by_status"].get(status, 0) for status in ("queued", "processing",
                                                             "retrying", "scheduled")}
    if owner is None and any(left.values()):
        waiting = ", ".join(f"{count} {status}" for status, count in left.items() if count)
        print(f"note              no process runs this queue: {waiting} wait for the next "
              "JobQueue on this path.")
        if left["processing"]:
            print("                  Processing ones were interrupted by a crash: that "
                  "attempt counts as failed, and they retry if they have retries left.")

def _print_list(records: Iterable[JobRecord]) -> None:
    rows = [["ID", "STATUS", "PRIORITY", "KIND", "ATTEMPTS", "AGE", "LAST ERROR"]]
    for r in records:
        rows.append([_printable(r.id), r.status.value, r.priority.name.lower(),
                     _printable(r.kind) or "-", str(r.attempts), _age(r.created_at),
                     _printable(r.last_error or "")])
    if len(rows) == 1:
        print("no jobs match")
        return
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(_table(rows, width))


def _stamp(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(epoch))
    except (OverflowError, ValueError, OSError):  # NaN, or beyond what the C library can tell
        return f"{epoch!r} (epoch seconds)"


def _print_show(record: JobRecord) -> None:
    data = _job_json(record)
    for key in ("id", "status", "priority", "kind", "attempts", "last_error"):
        value = data[key]
        print(f"{key:<12} {_printable(str(value)) if value not in (None, '') else '-'}")
    for key in ("created_at", "started_at", "finished_at"):
        print(f"{key:<12} {_stamp(data[key])}")
    if record.status is Status.RETRYING:
        print(f"{'retry_at':<12} {_stamp(record.due_at)}")
    if record.status is Status.SCHEDULED:
        print(f"{'run_at':<12} {_stamp(record.due_at)}")
    if record.status is Status.COMPLETED:
        print(f"{'payload':<12} not kept once a job completes")
        if record.result is None:
            print(f"{'result':<12} none (a handler's result is kept when it is bytes)")
        else:
            print(f"{'result':<12} {_bytes(record.result)}")
        return
    print(f"{'payload':<12} {_bytes(record.payload)}")


def _bytes(data: bytes) -> str:
    try:
        return f"{len(data)} bytes, UTF-8: {_printable(data.decode('utf-8'))}"
    except UnicodeDecodeError:
        more = " …" if len(data) > 32 else ""
        return f"{len(data)} bytes, hex: {data[:32].hex(' ')}{more}"


# -- repairing -----------------------------------------------------------------------------

def _repair(path: str, change: str, ids: list[str] | None, statuses: list[Status],
            queue: str = "default", force: bool = False) -> list[str]:
    try:
        if is_database_url(path):  # many writers: each repair is one transaction
            if change == "requeue":
                return pg_admin.requeue(path, queue, ids)
            if change == "cancel":
                return pg_admin.cancel(path, queue, ids or [])
            return pg_admin.purge(path, queue, ids, statuses, force=force)
        if change == "requeue":
            return admin.requeue(path, ids)
        if change == "cancel":
            return admin.cancel(path, ids or [])
        return admin.purge(path, ids, statuses, force=force)
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
                print(_dumps(data), flush=True)
            else:
                _print_stats(data)
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
            print(_dumps([_job_json(r, payload_size=size) for r, size in found]))
        else:
            _print_list(r for r, _ in found)
    elif args.command == "show":
        record = show(args.path, args.id, args.queue)
        if args.json:
            print(_dumps(_job_json(record, payload=True)))
        else:
            _print_show(record)
    elif args.command == "requeue":
        if bool(args.ids) == args.all_failed:
            raise CommandError("requeue takes job ids or --all-failed, not both or neither")
        done = _repair(args.path, "requeue", None if args.all_failed else args.ids, [],
                       args.queue)
        shown = ", ".join(_printable(job_id) for job_id in done[:20])
        print(f"requeued {_jobs(len(done))}" + (f": {shown}" if done else ""))
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
        print(f"purged {_jobs(len(done))}")
    elif args.command == "cancel":
        done = _repair(args.path, "cancel", args.ids, [], args.queue)
        print(f"cancelled {_jobs(len(done))}: " + ", ".join(_printable(i) for i in done[:20]))


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
    print(f"jobqueue: error: {_printable(message)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
