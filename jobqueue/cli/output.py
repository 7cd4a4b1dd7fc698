"""What the ``jobqueue`` command prints: tables for people, JSON for programs.

What it prints comes from the store, which anyone may have written to: ids, kinds and
errors are shown with control characters escaped, and JSON never holds NaN or Infinity.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from jobqueue.final import JobRecord, Status

__all__ = ["dumps", "job_json", "print_list", "print_show", "print_stats", "printable",
           "table"]

def dumps(data: object) -> str:
    return json.dumps(data, allow_nan=False)  # never NaN or Infinity: not JSON


def printable(text: str) -> str:
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


def jobs(count: int) -> str:
    return f"{count:,} job" if count == 1 else f"{count:,} jobs"


#: The most lines the last column of a table wraps to (``show`` prints it all).
_WRAP_LINES = 3


def table(rows: Sequence[Sequence[str]], width: int | None) -> str:
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


def print_stats(data: dict[str, Any]) -> None:
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
        print(f"queue             {printable(data['queue'])}")
        print(f"table size        {_size(data['table_bytes'])}, every queue of the database")
        print(f"processes         {alive} alive" + (
            f", {len(processes) - alive} gone (lease lapsed)" if len(processes) > alive else ""))
        for process in processes:
            beat, until = process["heartbeat_at"], process["lease_until"]
            state = ("holds " + jobs(process["held"]) if process["alive"] else
                     "gone: no heartbeat since " + _stamp(beat))
            print(f"  {printable(process['owner'])}  {state}; last heartbeat "
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

def print_list(records: Iterable[JobRecord]) -> None:
    rows = [["ID", "STATUS", "PRIORITY", "KIND", "ATTEMPTS", "AGE", "LAST ERROR"]]
    for r in records:
        rows.append([printable(r.id), r.status.value, r.priority.name.lower(),
                     printable(r.kind) or "-", str(r.attempts), _age(r.created_at),
                     printable(r.last_error or "")])
    if len(rows) == 1:
        print("no jobs match")
        return
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(table(rows, width))


def _stamp(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(epoch))
    except (OverflowError, ValueError, OSError):  # NaN, or beyond what the C library can tell
        return f"{epoch!r} (epoch seconds)"


def print_show(record: JobRecord) -> None:
    data = job_json(record)
    for key in ("id", "status", "priority", "kind", "attempts", "last_error"):
        value = data[key]
        print(f"{key:<12} {printable(str(value)) if value not in (None, '') else '-'}")
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
            print(f"{'result':<12} {_preview(record.result)}")
        return
    print(f"{'payload':<12} {_preview(record.payload)}")


def _preview(data: bytes) -> str:
    try:
        return f"{len(data)} bytes, UTF-8: {printable(data.decode('utf-8'))}"
    except UnicodeDecodeError:
        more = " …" if len(data) > 32 else ""
        return f"{len(data)} bytes, hex: {data[:32].hex(' ')}{more}"


def _finite(value: float | None) -> float | None:
    """A time for JSON: NaN and infinities (a store written by hand, or by an old version)
    become null, as JSON has no such numbers."""
    return value if value is not None and math.isfinite(value) else None


def job_json(record: JobRecord, payload: bool = False,
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
