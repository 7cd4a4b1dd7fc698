"""The final stage's values: jobs, configuration, statuses and snapshots. All immutable."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jobqueue._priority import Priority
from jobqueue.final._checks import (
    MAX_DELAY,
    MAX_ID_BYTES,
    MAX_KIND_BYTES,
    MAX_LEASE,
    MAX_PREFETCH,
    MAX_RETRIES,
    MIN_LEASE,
    check_database_url,
    check_epoch,
    check_exceptions,
    check_handler,
    check_int,
    check_path,
    check_seconds,
    check_text,
    parse_priority,
    payload_error,
)
from jobqueue.final._masking import mask
from jobqueue.final._picker import DEFAULT_WEIGHTS
from jobqueue.final._states import Status

__all__ = [
    "Config",
    "Handler",
    "Hook",
    "Job",
    "JobInfo",
    "LatencySummary",
    "Metrics",
    "PriorityMetrics",
    "Status",
]

#: A handler receives the job's payload; it returns for success and raises for failure.
#: What it returns is kept as the job's result when it is bytes (see ``JobQueue.result``).
Handler = Callable[[bytes], Any]
#: ``Config.on_complete``, ``on_failure`` and ``on_retry``: called with the job's JobInfo.
Hook = Callable[["JobInfo"], Any]

_set = object.__setattr__  # how a frozen dataclass sets its fields
_MEDIUM = Priority.MEDIUM


@dataclass(frozen=True, slots=True, init=False)
class Job:
    """A unit of work: an id, an opaque payload and how to schedule it.

    ``created`` (epoch seconds) defaults to now. ``run_at`` (epoch seconds) holds the job
    SCHEDULED until then; None, or a time past, runs it as soon as a worker is free.
    ``priority`` takes a :class:`Priority` or its name (``"high"``). Raises ``TypeError`` or
    ``ValueError`` naming the field when a value is wrong.
    """

    id: str
    payload: bytes
    priority: Priority
    kind: str
    max_retries: int | None
    created: float
    run_at: float | None

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
        run_at: float | None = None,
    ) -> None:
        if type(id) is not str:
            if not isinstance(id, str):
                raise TypeError(f"id must be a str, not {type(id).__name__}")
            id = str.__str__(id)  # a JobHandle, say: the stores keep plain str
        if not id:
            raise ValueError("id must be a non-empty str")
        check_text("id", id, MAX_ID_BYTES)
        if type(payload) is not bytes:
            raise TypeError(payload_error(payload))
        if type(priority) is not Priority:
            priority = parse_priority(priority)
        if type(kind) is not str:
            raise TypeError(f"kind must be a str, not {type(kind).__name__}")
        if kind:
            check_text("kind", kind, MAX_KIND_BYTES)
        if max_retries is not None:
            check_int("max_retries", max_retries, 0, MAX_RETRIES)
        if created is None:
            created = time.time()
        elif isinstance(created, bool) or not isinstance(created, (int, float)):
            raise TypeError(f"created must be epoch seconds, not {type(created).__name__}")
        elif not math.isfinite(created):
            raise ValueError(f"created must be a finite number of epoch seconds, got {created}")
        _set(self, "id", id)
        _set(self, "payload", payload)
        _set(self, "priority", priority)
        _set(self, "kind", kind)
        _set(self, "max_retries", max_retries)
        _set(self, "created", created)
        if run_at is not None:
            check_epoch("run_at", run_at)
        _set(self, "run_at", run_at)


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
    database_url: str | None = None
    queue_name: str = "default"
    lease: float = 30.0
    max_scheduled: int = 100_000
    on_complete: Hook | None = None
    on_failure: Hook | None = None
    on_retry: Hook | None = None
    eager: bool = False
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None
    give_up_on: type[BaseException] | tuple[type[BaseException], ...] = ()
    prefetch: int | None = None

    def __post_init__(self) -> None:
        check_int("num_workers", self.num_workers, 0)
        if not self.num_workers and self.database_url is None:
            raise ValueError("num_workers must be >= 1, got 0 (only a queue in PostgreSQL, "
                             "whose jobs other processes run, may have none)")
        check_int("queue_size", self.queue_size, 1)
        check_int("max_retries", self.max_retries, 0, MAX_RETRIES)
        check_int("status_retention", self.status_retention, 0)
        check_seconds("base_delay", self.base_delay, maximum=MAX_DELAY)
        check_seconds("max_delay", self.max_delay, maximum=MAX_DELAY)
        check_seconds("jitter", self.jitter)
        if self.jitter > 1:
            raise ValueError(f"jitter must be a fraction from 0 to 1, got {self.jitter}")
        check_seconds("shutdown_timeout", self.shutdown_timeout)
        if self.job_timeout is not None:
            check_seconds("job_timeout", self.job_timeout, allow_zero=False)
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
                check_int(f"weights[{p.name}]", self.weights[p], 1)
            object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        if self.persist_path is not None:
            check_path(self.persist_path)
        if self.database_url is not None:
            check_database_url(self.database_url, self.persist_path)
        if not isinstance(self.queue_name, str):
            raise TypeError(f"queue_name must be a str, not {type(self.queue_name).__name__}")
        if not self.queue_name:
            raise ValueError("queue_name must be a non-empty str")
        check_text("queue_name", self.queue_name, MAX_KIND_BYTES)
        if "\0" in self.queue_name:
            raise ValueError("queue_name must not contain a NUL character")
        check_seconds("lease", self.lease, allow_zero=False, maximum=MAX_LEASE)
        if self.lease < MIN_LEASE:
            raise ValueError(f"lease must be at least {MIN_LEASE} s (heartbeats go every third "
                             f"of it), got {self.lease}")
        check_int("max_scheduled", self.max_scheduled, 0)
        for name in ("on_complete", "on_failure", "on_retry"):
            hook = getattr(self, name)
            if hook is not None:
                check_handler(name, hook)
        if not isinstance(self.eager, bool):
            raise TypeError(f"eager must be a bool, not {type(self.eager).__name__}")
        if self.eager and (self.persist_path is not None or self.database_url is not None):
            raise ValueError("eager=True runs each job in the caller's thread, in memory, for "
                             "tests: it takes no persist_path or database_url")
        if not isinstance(self.fsync, bool):
            raise TypeError(f"fsync must be a bool, not {type(self.fsync).__name__}")
        if self.handler is not None:
            check_handler("handler", self.handler)
        _set(self, "retry_on", check_exceptions("retry_on", self.retry_on))
        _set(self, "give_up_on", check_exceptions("give_up_on", self.give_up_on) or ())
        if self.prefetch is not None:
            check_int("prefetch", self.prefetch, 0, MAX_PREFETCH)
        if self.handlers is not None:
            if not isinstance(self.handlers, Mapping):
                raise TypeError(f"handlers must be a mapping, not {type(self.handlers).__name__}")
            for kind, fn in self.handlers.items():
                if not isinstance(kind, str):
                    raise TypeError(f"handlers keys must be str kinds, not {kind!r}")
                if kind:
                    check_text(f"handlers key {kind!r}", kind, MAX_KIND_BYTES)
                check_handler(f"handlers[{kind!r}]", fn)
            object.__setattr__(self, "handlers", MappingProxyType(dict(self.handlers)))

    def __repr__(self) -> str:
        """As dataclass writes it, with the password of ``database_url`` masked."""
        fields = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "database_url" and value is not None:
                value = mask(value)
            fields.append(f"{field.name}={value!r}")
        return f"Config({', '.join(fields)})"

    __str__ = __repr__

    @property
    def effective_weights(self) -> Mapping[Priority, int]:
        return self.weights if self.weights is not None else DEFAULT_WEIGHTS


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What the queue knows about one job. Times are epoch seconds, ``None`` until they happen;
    ``retry_at`` is when a RETRYING or SCHEDULED job runs next. ``result`` is what a
    COMPLETED job's handler returned, as the store keeps it: bytes (a task's as JSON), or
    None."""

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
    result: bytes | None = None


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Enqueue-to-handler-start latency in seconds, from a histogram (upper bucket bounds)."""

    p50: float
    p90: float
    p99: float
    max: float

    def __str__(self) -> str:
        return ", ".join(f"{name} {_ms(getattr(self, name))}"
                         for name in ("p50", "p90", "p99", "max"))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms"


@dataclass(frozen=True, slots=True)
class PriorityMetrics:
    """Counts for one priority. ``retried`` counts rescheduled attempts, not jobs."""

    queued: int
    processing: int
    retrying: int
    completed: int
    failed: int
    retried: int
    scheduled: int = 0
    cancelled: int = 0

    def __str__(self) -> str:
        return "  ".join(f"{name} {getattr(self, name):,}" for name in _COUNTS)


_COUNTS = ("queued", "scheduled", "processing", "retrying", "completed", "failed",
           "cancelled", "retried")


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
    scheduled: int = 0
    cancelled: int = 0

    def __str__(self) -> str:
        """A few readable lines, for ``print(jq.metrics())``; ``repr`` has every field."""
        lines = [
            "  ".join(f"{name} {getattr(self, name):,}" for name in _COUNTS)
            + f"  abandoned {self.abandoned:,}",
            f"workers {self.busy_workers} of {self.num_workers} busy, "
            f"utilization {self.utilization:.1%}",
            f"queue latency {self.queue_latency}",
        ]
        lines += [f"{p.name.lower():<7}{m}" for p, m in self.per_priority.items()]
        return "\n".join(lines)
