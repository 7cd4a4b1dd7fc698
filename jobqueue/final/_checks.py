"""Checks of the values a caller gives (ids, times, handlers, URLs, paths), each raising
``TypeError`` or ``ValueError`` that names the argument; and the limits they hold to."""

from __future__ import annotations

import functools
import inspect
import math
import os
import threading
import types

from jobqueue._priority import Priority

__all__ = [
    "MAX_DELAY", "MAX_ID_BYTES", "MAX_KIND_BYTES", "MAX_LEASE", "MAX_PREFETCH", "MAX_RETRIES",
    "MIN_LEASE", "check_epoch", "check_exceptions", "check_handler", "check_timeout",
]

MAX_ID_BYTES = 256
MAX_KIND_BYTES = 256
#: The most retries a job may have: what a store keeps in a signed 32-bit field.
MAX_RETRIES = 2**31 - 1
#: The longest delay a retry may wait, in seconds: as long as a thread can wait (292 years).
MAX_DELAY = threading.TIMEOUT_MAX


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def check_seconds(
    name: str, value: object, *, allow_zero: bool = True, maximum: float | None = None
) -> float:
    """``value``, checked to be a number of seconds (an int stays one: no overflow)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds, not NaN")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:.0f} s, got {value}")
    return value


def check_timeout(name: str, value: object) -> float | None:
    """A timeout argument as the queue's waits take it: seconds, or None for forever.

    ``None`` and ``inf`` mean forever, and so does anything longer than a thread can wait
    (``threading.TIMEOUT_MAX``, 292 years). Raises ``TypeError`` for a value that is not a
    number and ``ValueError`` for NaN or a negative number, naming the argument.
    """
    if value is None:
        return None
    seconds = check_seconds(name, value)
    return None if seconds >= threading.TIMEOUT_MAX else float(seconds)


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
    target: object = value
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


def check_text(name: str, value: str, limit: int) -> None:
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


def check_database_url(url: object, persist_path: object) -> None:
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


def check_path(path: object) -> None:
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


def payload_error(payload: object) -> str:
    if isinstance(payload, str):
        return ("payload must be bytes, not str: encode it (payload.encode()), or use "
                "@jq.task for jobs with arguments")
    return f"payload must be bytes, not {type(payload).__name__}"


def parse_priority(value: object) -> Priority:
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
