"""The LMDB store's binary record format: compact, versioned, and never executed.

A record is a fixed header followed by the variable fields::

    B  format version (1)        B  status code       B  priority       B  flags
    I  attempts                  i  max_retries (-1: None)
    Q  seq (arrival order)       Q  fseq (finish order, 0 while live)
    d  created  d started  d finished  d due     (NaN: None)
    H  id length  H kind length  I last_error length  I payload length
    id, kind, last_error (UTF-8), payload

A COMPLETED record has no payload: its handler's result, if any, takes the payload's place,
and the ``_HAS_RESULT`` flag says so (an older record, without the flag, has no result);
``_JSON_RESULT`` marks a task's result, JSON text (an older reader ignores the mark).

Only plain values are decoded, so a damaged or hostile store cannot run code (unlike pickle).
"""

from __future__ import annotations

import math
import struct

from jobqueue._priority import Priority
from jobqueue.final._states import Status
from jobqueue.final.stores.base import JobRecord, JsonResult

__all__ = ["FORMAT_VERSION", "RecordError", "decode", "encode", "order_key", "seq_key"]

FORMAT_VERSION = 1

_HEADER = struct.Struct("<BBBBIiQQddddHHII")
_STATUS_CODES = {status: code for code, status in enumerate(Status)}
_STATUSES = tuple(Status)
_PRIORITIES = tuple(Priority)
_HAS_ERROR = 1
_HAS_RESULT = 2
_JSON_RESULT = 4
_NAN = math.nan


class RecordError(ValueError):
    """A stored record cannot be decoded: damaged, truncated, or from a newer format."""


def _float(value: float | None) -> float:
    return _NAN if value is None else value


def _optional(value: float) -> float | None:
    return None if value != value else value  # NaN is the only value unequal to itself


def encode(record: JobRecord, fseq: int = 0) -> bytes:
    """Return the record's bytes; ``fseq`` is its place in finish order, 0 while live."""
    job_id = record.id.encode()
    kind = record.kind.encode()
    error = b"" if record.last_error is None else record.last_error.encode("utf-8", "replace")
    flags = 0 if record.last_error is None else _HAS_ERROR
    body = record.payload
    if record.result is not None:
        body = record.result  # a COMPLETED record's payload is empty
        flags |= _HAS_RESULT if type(body) is not JsonResult else _HAS_RESULT | _JSON_RESULT
    header = _HEADER.pack(
        FORMAT_VERSION,
        _STATUS_CODES[record.status],
        record.priority,
        flags,
        record.attempts,
        -1 if record.max_retries is None else record.max_retries,
        record.seq,
        fseq,
        record.created_at,
        _float(record.started_at),
        _float(record.finished_at),
        _float(record.due_at),
        len(job_id),
        len(kind),
        len(error),
        len(body),
    )
    return b"".join((header, job_id, kind, error, body))


def decode(data: bytes) -> tuple[JobRecord, int]:
    """Return the record and its ``fseq``; raises :class:`RecordError` if it is not valid."""
    if len(data) < _HEADER.size:
        raise RecordError(f"record of {len(data)} bytes is shorter than its header")
    (
        version, status, priority, flags, attempts, max_retries, seq, fseq,
        created, started, finished, due, id_len, kind_len, error_len, payload_len,
    ) = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise RecordError(f"record format version {version} is not {FORMAT_VERSION}")
    if status >= len(_STATUSES) or priority >= len(_PRIORITIES):
        raise RecordError(f"record has an unknown status {status} or priority {priority}")
    start = _HEADER.size
    if start + id_len + kind_len + error_len + payload_len != len(data):
        raise RecordError("record lengths do not add up to its size")
    try:
        job_id = data[start : start + id_len].decode()
        start += id_len
        kind = data[start : start + kind_len].decode()
        start += kind_len
        error = data[start : start + error_len].decode() if flags & _HAS_ERROR else None
    except UnicodeDecodeError as exc:
        raise RecordError(f"record text is not UTF-8: {exc}") from None
    start += error_len
    body = bytes(data[start:])
    result = None
    if flags & _HAS_RESULT:
        body, result = b"", (JsonResult(body) if flags & _JSON_RESULT else body)
    record = JobRecord(
        job_id,
        body,
        _PRIORITIES[priority],
        kind,
        None if max_retries < 0 else max_retries,
        created,
        _STATUSES[status],
        attempts,
        error,
        _optional(started),
        _optional(finished),
        _optional(due),
        seq,
        result,
    )
    return record, fseq


def order_key(priority: int, seq: int) -> bytes:
    """Key of the arrival-order index: priority first, so one cursor walks one priority."""
    return bytes((priority,)) + seq.to_bytes(8, "big")


def seq_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")
