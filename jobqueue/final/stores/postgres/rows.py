"""Rows of ``jobqueue_jobs`` as :class:`~jobqueue.final.stores.base.JobRecord` values, and
the text PostgreSQL can keep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jobqueue._priority import Priority
from jobqueue.final._states import Status
from jobqueue.final.stores.base import JobRecord, JsonResult

__all__ = ["COLUMNS", "NCOLS", "first_line", "from_row", "storable"]

#: The columns of a record, in the order of JobRecord's fields (result_json marks a task's
#: result): what the queries' {columns} hole stands for.
COLUMNS = ("id", "payload", "priority", "kind", "max_retries", "created_at", "status",
           "attempts", "last_error", "started_at", "finished_at", "due_at", "seq", "result",
           "result_json")
#: A row's further columns (a lease, a holder, a size) start here.
NCOLS = len(COLUMNS)

_PRIORITIES = tuple(Priority)


def from_row(row: Sequence[Any]) -> JobRecord:
    """The record a row's first NCOLS columns hold."""
    (job_id, payload, priority, kind, max_retries, created_at, status, attempts, last_error,
     started_at, finished_at, due_at, seq, result, result_json) = row[:NCOLS]
    if result is not None:
        result = JsonResult(result) if result_json else bytes(result)
    return JobRecord(job_id, bytes(payload), _PRIORITIES[priority], kind, max_retries,
                     created_at, Status(status), attempts, last_error, started_at,
                     finished_at, due_at, seq, result)


def storable(text: str) -> bool:
    """Whether PostgreSQL's text can hold ``text`` (valid UTF-8, no NUL): an id that is not
    cannot be any job's."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\0" not in text


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, for a log line or a StoreError."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
