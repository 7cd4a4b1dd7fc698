"""The final stage's values: jobs, configuration, statuses and snapshots. All immutable."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jobqueue._priority import Priority
from jobqueue.final._picker import DEFAULT_WEIGHTS
from jobqueue.final._states import Status

__all__ = [
    "MAX_DELAY",
    "MAX_ID_BYTES",
    "MAX_KIND_BYTES",
    "MAX_LEASE",
    "MIN_LEASE",
    "MAX_RETRIES",
    "Config",
    "Handler",
    "Hook",
    "Job",
    "JobInfo",
    "LatencySummary",
    "Metrics",
    "PriorityMetrics",
    "Status",
    "check_epoch",
    "check_exceptions",
    "check_handler",
    "check_timeout",
]

#: A handler receives the job's payload; it returns for success and raises for failure.
#: What it returns is kept as the job's result when it is bytes (see ``JobQueue.result``).
Handler = Callable[[bytes], Any]
#: ``Config.on_complete``, ``on_failure`` and ``on_retry``: called with the job's JobInfo.
Hook = Callable[["JobInfo"], Any]

MAX_ID_BYTES = 256
MAX_KIND_BYTES = 256
#: The most retries a job may have: what a store keeps in a signed 32-bit field.
MAX_RETRIES = 2**31 - 1
#: The longest delay a retry may wait, in seconds: as long as a thread can wait (292 years).
MAX_DELAY = threading.TIMEOUT_MAX


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def _check_seconds(
    name: str, value: object, *, allow_zero: bool = True, maximum: float | None = None
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds, not NaN")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:.0f} s, got {value}")


def check_timeout(name: str, value: object) -> float | None:
    """A timeout argument as the queue's waits take it: seconds, or None for forever.

    ``None`` and ``inf`` mean forever, and so does anything longer than a thread can wait
    (``threading.TIMEOUT_MAX``, 292 years). Raises ``TypeError`` for a value that is not a
    number and ``ValueError`` for NaN or a negative number, naming the argument.
    """
    if value is None:
        return None
    _check_seconds(name, value)
    return None if value >= threading.TIMEOUT_MAX else float(value)  # type: ignore[operator]


def check_epoch(name: str, value: object) -> None:
    """A time as epoch seconds: a finite number, within what a thread can wait for."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be epoch seconds (time.time()), not "
                        f"{type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of epoch seconds, got {value}")
    if abs(value) > MAX_DELAY:
        raise ValueError(f"{name} must be epoch seconds (time.time()), got {value}")


_UNRUN_FLAGS = inspect.CO_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def check_handler(name: str, value: object) -> None:
    """Refuse what cannot be a handler: not callable, or a function whose body a call would
    not run (``async def``, a generator function), which would complete without running."""
    if type(value) is types.FunctionType and not value.__code__.co_flags & _UNRUN_FLAGS:
        return  # a plain function: the common case, decided without inspect
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")
    target = value
    if not inspect.isroutine(target) and not isinstance(target, functools.partial):
        target = type(value).__call__  # a callable object: what a call runs
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"{name} must be a plain function: {value!r} is async, and calling it only makes "
            "a coroutine (the queue runs handlers on threads; wrap it with asyncio.run)"
        )
    if inspect.isgeneratorfunction(target):
        raise TypeError(
            f"{name} must be a plain function: {value!r} is a generator function, and "
            "calling it would not run its body"
        )


def check_exceptions(name: str, value: object) -> tuple[type[BaseException], ...] | None:
    """``retry_on``/``give_up_on``: an exception class or a tuple of them, as ``except``
    takes them, as a tuple; None stays None."""
    if value is None:
        return None
    classes = value if isinstance(value, tuple) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"{name} must be an exception class or a tuple of them, "
                            f"not {cls!r}")
    return classes


def _check_text(name: str, value: str, limit: int) -> None:
    """A str a store keeps as UTF-8 text: encodable, no NUL (PostgreSQL's text cannot hold
    one), and at most ``limit`` bytes."""
    if "\0" in value:
        raise ValueError(f"{name} must not contain a NUL character: {value!r}")
    if value.isascii():  # the common case, checked in C without encoding
        if len(value) > limit:
            raise ValueError(f"{name} must be at most {limit} UTF-8 bytes")
        return
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid Unicode text: it holds a lone surrogate "
                         f"({value!r})") from None
    if size > limit:
        raise ValueError(f"{name} must be at most {limit} UTF-8 bytes")


#: The most jobs ``Config.prefetch`` may hold beyond the running ones.
MAX_PREFETCH = 100_000

#: The shortest and longest lease a database store takes, in seconds.
MIN_LEASE = 0.3
MAX_LEASE = 7 * 24 * 3600.0


def _check_database_url(url: object, persist_path: object) -> None:
    if not isinstance(url, str):
        raise TypeError(f"database_url must be a str, not {type(url).__name__}")
    if persist_path is not None:
        raise ValueError(
            "database_url and persist_path are exclusive: a queue keeps its jobs in "
            "PostgreSQL (database_url) or in LMDB (persist_path), not both"
        )
    if not url.strip():
        raise ValueError("database_url must not be empty (use None to keep jobs in memory)")
    if "\0" in url:
        raise ValueError("database_url must not contain a NUL character")
    if "://" in url and not url.startswith(("postgresql://", "postgres://")):
        scheme = url.split("://", 1)[0]
        raise ValueError(f"database_url must be a postgresql:// URI or a libpq key=value "
                         f"string, not a {scheme}:// URL")


def _check_path(path: object) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"persist_path must be a path or None, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"persist_path must be a str path, not {type(text).__name__}")
    if not text:
        raise ValueError("persist_path must not be empty (use None to keep jobs in memory)")
    if "\0" in text:
        raise ValueError(f"persist_path must not contain a NUL character: {text!r}")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"persist_path must be encodable as UTF-8 (LMDB opens paths so): "
                         f"{text!r}") from None


def _payload_error(payload: object) -> str:
    if isinstance(payload, str):
        return ("payload must be bytes, not str: encode it (payload.encode()), or use "
                "@jq.task for jobs with arguments")
    return f"payload must be bytes, not {type(payload).__name__}"


def _priority(value: object) -> Priority:
    """A Priority from itself or its name ("high", as the CLI prints it)."""
    if isinstance(value, str):
        try:
            return Priority[value.upper()]
        except KeyError:
            pass
    elif isinstance(value, Priority):
        return value
    names = ", ".join(f"Priority.{p.name}" for p in Priority)
    raise TypeError(f"priority must be one of {names} (or its name: 'high', 'medium', "
                    f"'low'), not {value!r}")


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
        _check_text("id", id, MAX_ID_BYTES)
        if type(payload) is not bytes:
            raise TypeError(_payload_error(payload))
        if type(priority) is not Priority:
            priority = _priority(priority)
        if type(kind) is not str:
            raise TypeError(f"kind must be a str, not {type(kind).__name__}")
        if kind:
            _check_text("kind", kind, MAX_KIND_BYTES)
        if max_retries is not None:
            _check_int("max_retries", max_retries, 0, MAX_RETRIES)
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
        _check_int("num_workers", self.num_workers, 0)
        if not self.num_workers and self.database_url is None:
            raise ValueError("num_workers must be >= 1, got 0 (only a queue in PostgreSQL, "
                             "whose jobs other processes run, may have none)")
        _check_int("queue_size", self.queue_size, 1)
        _check_int("max_retries", self.max_retries, 0, MAX_RETRIES)
        _check_int("status_retention", self.status_retention, 0)
        _check_seconds("base_delay", self.base_delay, maximum=MAX_DELAY)
        _check_seconds("max_delay", self.max_delay, maximum=MAX_DELAY)
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
        if self.persist_path is not None:
            _check_path(self.persist_path)
        if self.database_url is not None:
            _check_database_url(self.database_url, self.persist_path)
        if not isinstance(self.queue_name, str):
            raise TypeError(f"queue_name must be a str, not {type(self.queue_name).__name__}")
        if not self.queue_name:
            raise ValueError("queue_name must be a non-empty str")
        _check_text("queue_name", self.queue_name, MAX_KIND_BYTES)
        if "\0" in self.queue_name:
            raise ValueError("queue_name must not contain a NUL character")
        _check_seconds("lease", self.lease, allow_zero=False, maximum=MAX_LEASE)
        if self.lease < MIN_LEASE:
            raise ValueError(f"lease must be at least {MIN_LEASE} s (heartbeats go every third "
                             f"of it), got {self.lease}")
        _check_int("max_scheduled", self.max_scheduled, 0)
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
            _check_int("prefetch", self.prefetch, 0, MAX_PREFETCH)
        if self.handlers is not None:
            if not isinstance(self.handlers, Mapping):
                raise TypeError(f"handlers must be a mapping, not {type(self.handlers).__name__}")
            for kind, fn in self.handlers.items():
                if not isinstance(kind, str):
                    raise TypeError(f"handlers keys must be str kinds, not {kind!r}")
                if kind:
                    _check_text(f"handlers key {kind!r}", kind, MAX_KIND_BYTES)
                check_handler(f"handlers[{kind!r}]", fn)
            object.__setattr__(self, "handlers", MappingProxyType(dict(self.handlers)))

    def __repr__(self) -> str:
        """As dataclass writes it, with the password of ``database_url`` masked."""
        from jobqueue.final._pg_schema import mask

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
