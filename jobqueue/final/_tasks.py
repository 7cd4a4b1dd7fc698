"""Tasks: plain functions whose arguments travel as a job's payload, encoded as JSON.

``@jq.task`` registers a function as the handler of a kind; ``task.enqueue(...)`` checks the
arguments against the function's signature and encodes them, so that a wrong or unencodable
argument fails in the caller, not later in a worker. JSON, never pickle: a payload read back
from a store is data, and nothing in it is executed. What JSON cannot keep apart comes back
as JSON has it: a tuple as a list, a dict's keys as str.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from jobqueue._priority import Priority
from jobqueue.final._model import Job, _priority, check_handler
from jobqueue.final._store import JsonResult

if TYPE_CHECKING:
    from jobqueue.final._queue import JobQueue

__all__ = ["Task", "decode_result"]

P = ParamSpec("P")
R = TypeVar("R")

#: Keywords ``Task.enqueue`` takes for itself: a task's own parameters cannot have them.
_OWN_KEYWORDS = ("id", "delay", "run_at")


def _encode(value: object) -> bytes:
    # Standard JSON only (no NaN or Infinity), for whatever else reads the payload.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def decode_result(result: bytes | None) -> Any:
    """A job's result as ``JobQueue.result()`` gives it: a task's as its function returned
    it (through JSON), a plain handler's bytes as they are."""
    return json.loads(result) if type(result) is JsonResult else result


class Task(Generic[P, R]):
    """A function registered as the handler of a kind: call it as before, or ``enqueue``
    it to run on the queue's workers. Made by :meth:`JobQueue.task`."""

    def __init__(
        self, queue: JobQueue, function: Callable[P, R], kind: str, priority: Priority,
        max_retries: int | None,
    ) -> None:
        check_handler("task", function)
        self.function = function
        self.kind = kind
        self.priority = priority
        self.max_retries = max_retries
        self._queue = queue
        self._signature = inspect.signature(function)
        for name in _OWN_KEYWORDS:
            if name in self._signature.parameters:
                raise TypeError(
                    f"task {kind!r}: parameter {name!r} of {function.__qualname__} clashes with "
                    f"{name}=, which enqueue() takes for itself: rename the parameter"
                )
        self.__doc__ = function.__doc__
        self.__name__ = getattr(function, "__name__", kind)
        self.__wrapped__ = function

    def __repr__(self) -> str:
        return f"<Task {self.kind!r} of {self.function!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, as if it were not a task."""
        return self.function(*args, **kwargs)

    def job(self, *args: Any, id: str | None = None, run_at: float | None = None,
            **kwargs: Any) -> Job:
        """The job that runs this task with these arguments, for ``enqueue_many`` or a
        periodic schedule. ``id`` defaults to a fresh one. Raises ``TypeError`` naming the
        argument that does not fit the signature or cannot be encoded as JSON."""
        return Job(id if id is not None else uuid.uuid4().hex, self.encode(args, kwargs),
                   self.priority, self.kind, self.max_retries, run_at=run_at)

    def enqueue(self, *args: Any, id: str | None = None, delay: float | None = None,
                run_at: float | None = None, **kwargs: Any) -> str:
        """Enqueue a run with these arguments (``delay`` seconds or ``run_at`` epoch
        seconds from now, if given); return the job's id. Blocks and raises as
        :meth:`JobQueue.enqueue` does, and raises ``TypeError`` for bad arguments."""
        job = self.job(*args, id=id, run_at=run_at, **kwargs)
        self._queue.enqueue(job, delay=delay)
        return job.id

    def encode(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.kind!r}: {exc}") from None
        try:
            return _encode({"args": args, "kwargs": kwargs})
        except (TypeError, ValueError, RecursionError):
            pass
        # Name the culprit: encode each argument alone.
        bound = self._signature.bind(*args, **kwargs).arguments
        for name, value in bound.items():
            try:
                _encode(value)
            except (TypeError, ValueError, RecursionError) as exc:
                raise TypeError(f"task {self.kind!r}: argument {name!r} cannot be encoded as "
                                f"JSON ({type(value).__name__}): {exc}") from None
        raise TypeError(f"task {self.kind!r}: its arguments cannot be encoded as JSON")

    def run(self, payload: bytes) -> JsonResult:
        """The handler: decode the arguments, call the function, encode its result (marked
        JSON, so that whoever reads it decodes it, in any process)."""
        try:
            data = json.loads(payload)
            args, kwargs = data["args"], data["kwargs"]
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise TypeError("args must be a list and kwargs an object")
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"the payload is not arguments of task {self.kind!r} (made by "
                             f"Task.enqueue or Task.job): {exc}") from None
        value = self.function(*args, **kwargs)
        try:
            return JsonResult(_encode(value))
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"task {self.kind!r} returned {type(value).__name__}, which "
                            f"cannot be encoded as JSON: {exc}") from None


def make_task(
    queue: JobQueue, function: Callable[P, R], kind: str | None, priority: object,
    max_retries: int | None,
) -> Task[P, R]:
    if kind is None:
        kind = f"{function.__module__}.{function.__qualname__}"
    job = Job("-", b"", _priority(priority), kind, max_retries)  # checks every field
    return Task(queue, function, job.kind, job.priority, job.max_retries)
