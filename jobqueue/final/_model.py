"""The final stage's values: jobs, configuration, statuses and snapshots. All immutable."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jobqueue._priority import Priority
from jobqueue.final._picker import DEFAULT_WEIGHTS
from jobqueue.final._states import Status

__all__ = [
    "Config",
    "Handler",
    "Job",
    "JobInfo",
    "LatencySummary",
    "Metrics",
    "PriorityMetrics",
    "Status",
]

#: A handler receives the job's payload; it returns for success and raises for failure.
Handler = Callable[[bytes], Any]

MAX_ID_BYTES = 256


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_seconds(name: str, value: object, *, allow_zero: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_handler(name: str, value: object) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")


_set = object.__setattr__  # how a frozen dataclass sets its fields
_MEDIUM = Priority.MEDIUM


@dataclass(frozen=True, slots=True, init=False)
class Job:
    """A unit of work: an id, an opaque payload and how to schedule it.

    ``created`` (epoch seconds) defaults to now. Raises ``TypeError`` or ``ValueError``
    naming the field when a value is wrong.
    """

    id: str
    payload: bytes
    priority: Priority
    kind: str
    max_retries: int | None
    created: float

    # Written out rather than generated: a producer makes one Job per job, and checking the
    # arguments before storing them costs a third less than dataclass's __init__ and
    # __post_init__.
    def __init__(
        self,
        id: str,
        payload: bytes = b"",
        priority: Priority = _MEDIUM,
        kind: str = "",
        max_retries: int | None = None,
        created: float | None = None,
    ) -> None:
        if type(id) is not str and not isinstance(id, str):
            raise TypeError(f"id must be a str, not {type(id).__name__}")
        if not id:
            raise ValueError("id must be a non-empty str")
        if len(id) > MAX_ID_BYTES // 4 and len(id.encode()) > MAX_ID_BYTES:
            raise ValueError(f"id must be at most {MAX_ID_BYTES} UTF-8 bytes")
        if type(payload) is not bytes:
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        if type(priority) is not Priority:
            raise TypeError(f"priority must be a Priority, not {priority!r}")
        if type(kind) is not str:
            raise TypeError(f"kind must be a str, not {type(kind).__name__}")
        if max_retries is not None:
            _check_int("max_retries", max_retries, 0)
        if created is None:
            created = time.time()
        elif isinstance(created, bool) or not isinstance(created, (int, float)):
            raise TypeError(f"created must be epoch seconds, not {type(created).__name__}")
        _set(self, "id", id)
        _set(self, "payload", payload)
        _set(self, "priority", priority)
        _set(self, "kind", kind)
        _set(self, "max_retries", max_retries)
        _set(self, "created", created)


@dataclass(frozen=True)
class Config:
    """How a :class:`JobQueue` runs. Validated when made: a wrong value raises ``ValueError``
    (``TypeError`` for a wrong type) naming the field."""

    num_workers: int = 4
    queue_size: int = 1000
    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.1
    weights: Mapping[Priority, int] | None = None
    job_timeout: float | None = None
    shutdown_timeout: float = 30.0
    persist_path: str | os.PathLike[str] | None = None
    fsync: bool = False
    handler: Handler | None = None
    handlers: Mapping[str, Handler] | None = None
    status_retention: int = 100_000

    def __post_init__(self) -> None:
        _check_int("num_workers", self.num_workers, 1)
        _check_int("queue_size", self.queue_size, 1)
        _check_int("max_retries", self.max_retries, 0)
        _check_int("status_retention", self.status_retention, 0)
        _check_seconds("base_delay", self.base_delay)
        _check_seconds("max_delay", self.max_delay)
        _check_seconds("jitter", self.jitter)
        if self.jitter > 1:
            raise ValueError(f"jitter must be a fraction from 0 to 1, got {self.jitter}")
        _check_seconds("shutdown_timeout", self.shutdown_timeout)
        if self.job_timeout is not None:
            _check_seconds("job_timeout", self.job_timeout, allow_zero=False)
        if self.weights is not None:
            if not isinstance(self.weights, Mapping):
                raise TypeError(f"weights must be a mapping, not {type(self.weights).__name__}")
            for key in self.weights:
                if type(key) is not Priority:
                    raise TypeError(f"weights keys must be Priority values, not {key!r}")
            missing = [p.name for p in Priority if p not in self.weights]
            if missing:
                raise ValueError(f"weights must give every priority a weight; missing {missing}")
            for p in Priority:
                _check_int(f"weights[{p.name}]", self.weights[p], 1)
            object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        if self.persist_path is not None and not isinstance(self.persist_path, (str, os.PathLike)):
            raise TypeError(
                f"persist_path must be a path or None, not {type(self.persist_path).__name__}"
            )
        if not isinstance(self.fsync, bool):
            raise TypeError(f"fsync must be a bool, not {type(self.fsync).__name__}")
        if self.handler is not None:
            _check_handler("handler", self.handler)
        if self.handlers is not None:
            if not isinstance(self.handlers, Mapping):
                raise TypeError(f"handlers must be a mapping, not {type(self.handlers).__name__}")
            for kind, fn in self.handlers.items():
                if not isinstance(kind, str):
                    raise TypeError(f"handlers keys must be str kinds, not {kind!r}")
                _check_handler(f"handlers[{kind!r}]", fn)
            object.__setattr__(self, "handlers", MappingProxyType(dict(self.handlers)))

    @property
    def effective_weights(self) -> Mapping[Priority, int]:
        return self.weights if self.weights is not None else DEFAULT_WEIGHTS


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What the queue knows about one job. Times are epoch seconds, ``None`` until they happen;
    ``retry_at`` is when a RETRYING job runs next."""

    id: str
    status: Status
    priority: Priority
    kind: str
    attempts: int
    last_error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Enqueue-to-handler-start latency in seconds, from a histogram (upper bucket bounds)."""

    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class PriorityMetrics:
    """Counts for one priority. ``retried`` counts rescheduled attempts, not jobs."""

    queued: int
    processing: int
    retrying: int
    completed: int
    failed: int
    retried: int


@dataclass(frozen=True, slots=True)
class Metrics:
    """An atomic snapshot of a queue, taken under its lock."""

    queued: int
    processing: int
    retrying: int
    completed: int
    failed: int
    retried: int
    abandoned: int
    per_priority: Mapping[Priority, PriorityMetrics]
    num_workers: int
    busy_workers: int
    utilization: float
    queue_latency: LatencySummary
