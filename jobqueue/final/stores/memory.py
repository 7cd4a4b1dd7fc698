"""The :class:`~jobqueue.final.stores.base.Store` contract in memory: nothing survives the
process. The default store, and the model the other stores are tested against."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Any

from jobqueue._priority import Priority
from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final._states import Status
from jobqueue.final.stores.base import JobRecord, JsonResult

__all__ = ["MemoryStore"]


# Finished records are kept as plain tuples of plain values: the garbage collector stops
# scanning a tuple once it finds it holds nothing it tracks, and enum members are tracked
# (as are NamedTuples). Up to 100,000 retained records otherwise cost every full collection.
_PLAIN_STATUS = {status: status.value for status in Status}
_STATUS = {status.value: status for status in Status}
_PRIORITIES = tuple(Priority)


def _from_plain(kept: tuple[Any, ...]) -> JobRecord:
    (job_id, payload, priority, kind, max_retries, created_at, status, attempts, last_error,
     started_at, finished_at, due_at, seq, result, json_result) = kept
    return JobRecord(job_id, payload, _PRIORITIES[priority], kind, max_retries, created_at,
                     _STATUS[status], attempts, last_error, started_at, finished_at, due_at, seq,
                     JsonResult(result) if json_result else result)


class MemoryStore:
    """The :class:`Store` contract in memory: nothing survives the process.

    Keeps every live job it was told of, the newest ``retention`` finished ones, and the jobs
    ``released`` back to it until they are claimed again.
    """

    persistent = False
    shared = None  # one process's
    running = ran = None  # nothing in memory outlives a process that dies in a handler
    confirm = None  # a move told is as kept as memory keeps anything

    def __init__(self, retention: int) -> None:
        self._retention = retention
        # No lock: the calls that change these fields come one at a time, under the queue's
        # mutex (see Store). The others read them, or (claim) take from _unheld, each with
        # single dict operations, which the GIL makes atomic. A lock here cost 6 % of the
        # queue's instructions per job.
        self._live: dict[str, JobRecord] = {}  # the latest record of each live job
        # Finished jobs, oldest first, as plain tuples (see _from_plain): up to ``retention``.
        self._finished: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._unheld: dict[str, JobRecord] = {}  # released, waiting for a claim
        self._last_seq = 0
        self._closed = False

    def last_seq(self) -> int:
        return self._last_seq

    def prepare(self, records: Sequence[JobRecord]) -> Sequence[JobRecord]:
        return records

    def add(self, prepared: object) -> None:
        records: Sequence[JobRecord] = prepared  # type: ignore[assignment]
        if self._closed:
            raise StoreError("the memory store is closed")
        unheld = self._unheld
        if unheld:
            for record in records:
                if record.id in unheld:
                    raise DuplicateJob(f"job {record.id!r} is already queued")
        live, finished = self._live, self._finished
        for record in records:
            live[record.id] = record
            finished.pop(record.id, None)  # a finished id starts a new life
            if record.seq > self._last_seq:
                self._last_seq = record.seq

    def commit(self, ticket: object) -> None:
        raise ValueError("MemoryStore.add() never returns a ticket")

    def started(self, record: JobRecord) -> None:
        self._live[record.id] = record

    retrying = started

    def finished(self, record: JobRecord) -> None:
        (job_id, payload, priority, kind, max_retries, created_at, status, attempts, last_error,
         started_at, finished_at, due_at, seq, result) = record
        finished = self._finished
        json_result = type(result) is JsonResult  # (a class the collector tracks)
        finished[job_id] = (  # plain values: see _from_plain
            job_id, payload, int(priority), kind, max_retries, created_at, _PLAIN_STATUS[status],
            attempts, last_error, started_at, finished_at, due_at, seq,
            bytes(result) if json_result and result is not None else result, json_result,
        )
        self._live.pop(job_id, None)  # after: get() without the mutex finds one or the other
        if len(finished) > self._retention:
            finished.popitem(last=False)

    def released(self, record: JobRecord) -> None:
        self._live[record.id] = record
        self._unheld[record.id] = record

    def claim(
        self, priority: Priority, limit: int, kinds: Collection[str] | None
    ) -> list[JobRecord]:
        if self._closed:
            raise StoreError("the memory store is closed")
        chosen = sorted(
            (r for r in list(self._unheld.values())
             if r.priority is priority and (kinds is None or r.kind in kinds)),
            key=lambda r: r.seq,
        )[:limit]
        for record in chosen:
            del self._unheld[record.id]
        return chosen

    def get(self, job_id: str) -> JobRecord | None:
        record = self._live.get(job_id)
        if record is not None:
            return record
        kept = self._finished.get(job_id)
        return None if kept is None else _from_plain(kept)

    def dead_letters(self) -> list[JobRecord]:
        failed = _PLAIN_STATUS[Status.FAILED]
        return [_from_plain(kept) for kept in list(self._finished.values()) if kept[6] == failed]

    def close(self, timeout: float | None = None) -> None:
        self._closed = True
