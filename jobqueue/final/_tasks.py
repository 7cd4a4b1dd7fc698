"""Tasks: plain functions whose arguments travel as a job's payload, encoded as JSON.

``@app.task`` (or ``@jq.task``) makes a function the handler of a kind; ``task.enqueue(...)``
checks the arguments against the function's signature and encodes them, so that a wrong or
unencodable argument fails in the caller, not later in a worker. JSON, never pickle: a
payload read back from a store is data, and nothing in it is executed. What JSON cannot keep
apart comes back as JSON has it: a tuple as a list, a dict's keys as str.

A task does not hold a queue: it asks for one when it enqueues (the queue its app is bound
to, or the queue that declared it), so tasks can be declared at import time, before any
queue exists, and enqueued from a process that never runs them.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from jobqueue._priority import Priority
from jobqueue.final._admission import check_delay
from jobqueue.final._checks import check_epoch, check_exceptions, check_handler, parse_priority
from jobqueue.final._model import Job
from jobqueue.final.stores.base import JsonResult

if TYPE_CHECKING:
    from jobqueue.final._queue import JobQueue
    from jobqueue.final._states import Status

__all__ = ["JobHandle", "Task", "TaskCall", "decode_result", "make_task"]

P = ParamSpec("P")
R = TypeVar("R")

#: Keywords ``Task.enqueue`` still takes for itself (``options()`` is the typed way): a
#: task's own parameters cannot have them.
_OWN_KEYWORDS = ("id", "delay", "run_at")

#: An exception class, or a tuple of them, as ``except`` takes them.
Exceptions = type[BaseException] | tuple[type[BaseException], ...]


def _encode(value: object) -> bytes:
    # Standard JSON only (no NaN or Infinity), for whatever else reads the payload.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def decode_result(result: bytes | None) -> Any:
    """A job's result as ``JobQueue.result()`` gives it: a task's as its function returned
    it (through JSON), a plain handler's bytes as they are."""
    return json.loads(result) if type(result) is JsonResult else result


class JobHandle(str, Generic[R]):
    """The id of a task's job, as ``Task.enqueue`` returns it: a ``str`` (pass it wherever
    an id goes), and the typed way to the job's outcome through the queue that took it.

    Pickled or copied, it is the plain id: the queue stays behind.
    """

    _queue: JobQueue

    def __new__(cls, job_id: str, queue: JobQueue) -> JobHandle[R]:
        handle = super().__new__(cls, job_id)
        handle._queue = queue
        return handle

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return str, (str(self),)

    @property
    def id(self) -> str:
        return str.__str__(self)

    def result(self, timeout: float | None = None) -> R:
        """What the task returned, through JSON: blocks and raises as
        :meth:`JobQueue.result` does."""
        value: R = self._queue.result(self.id, timeout)
        return value

    def wait(self, timeout: float | None = None) -> Status:
        """Block until the job is finished; see :meth:`JobQueue.wait`."""
        return self._queue.wait(self.id, timeout)

    def status(self) -> Status | None:
        """The job's status now; see :meth:`JobQueue.status`."""
        return self._queue.status(self.id)

    def cancel(self) -> bool:
        """Cancel the job; see :meth:`JobQueue.cancel`."""
        return self._queue.cancel(self.id)


class Task(Generic[P, R]):
    """A function made the handler of a kind: call it as before, or ``enqueue`` it to run
    on a queue's workers. Made by :meth:`App.task` or :meth:`JobQueue.task`.

    ``enqueue`` and ``job`` take exactly the function's arguments (a type checker holds
    them to its signature); ``options(id=..., delay=..., run_at=..., priority=...)`` sets
    how the job runs, for one call.
    """

    def __init__(
        self,
        queue_of: Callable[[], JobQueue],
        function: Callable[P, R],
        kind: str,
        priority: Priority,
        max_retries: int | None,
        retry_on: tuple[type[BaseException], ...] | None = None,
        give_up_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        check_handler("task", function)
        self.function = function
        self.kind = kind
        self.priority = priority
        self.max_retries = max_retries
        self.retry_on = retry_on
        self.give_up_on = give_up_on
        self._queue_of = queue_of
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

    def options(
        self,
        *,
        id: str | None = None,
        delay: float | None = None,
        run_at: float | None = None,
        priority: Priority | str | None = None,
    ) -> TaskCall[P, R]:
        """This task with options for one job: ``send.options(id="welcome-42",
        delay=60).enqueue(to="ada@example.com")``. ``id`` defaults to a fresh one; ``delay``
        (seconds from now) or ``run_at`` (epoch seconds) hold it SCHEDULED until then;
        ``priority`` overrides the task's. Raises ``TypeError``/``ValueError`` for a bad one.
        """
        return TaskCall(self, id, delay, run_at, priority)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue a run with these arguments; return its id, as a :class:`JobHandle`.

        Blocks and raises as :meth:`JobQueue.enqueue` does, raises ``TypeError`` naming an
        argument that does not fit the signature or cannot be encoded as JSON, and
        ``RuntimeError`` if no open queue is there to take it. ``id=``, ``delay=`` and
        ``run_at=`` are still taken here, untyped: ``options()`` is the typed way.
        """
        own = {name: kwargs.pop(name) for name in _OWN_KEYWORDS if name in kwargs}
        return TaskCall(self, **own).enqueue(*args, **kwargs)  # type: ignore[arg-type]

    def job(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """The job that runs this task with these arguments, for ``enqueue_many`` or a
        periodic schedule; raises ``TypeError`` as :meth:`enqueue` does."""
        own = {name: kwargs.pop(name) for name in _OWN_KEYWORDS if name in kwargs}
        return TaskCall(self, **own).job(*args, **kwargs)  # type: ignore[arg-type]

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


class TaskCall(Generic[P, R]):
    """A task with the options of one job (``Task.options``): ``enqueue`` or ``job`` it."""

    __slots__ = ("task", "id", "delay", "run_at", "priority")

    def __init__(
        self, task: Task[P, R], id: str | None = None, delay: float | None = None,
        run_at: float | None = None, priority: Priority | str | None = None,
    ) -> None:
        if delay is not None and run_at is not None:
            raise ValueError("give delay or run_at, not both")
        if run_at is not None:
            check_epoch("run_at", run_at)
        self.task = task
        self.id = id
        self.delay = check_delay(delay)
        self.run_at = run_at
        self.priority = task.priority if priority is None else parse_priority(priority)

    def job(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """The job, as :meth:`Task.job` makes it, with these options (a ``delay`` counts
        from now)."""
        task = self.task
        run_at = self.run_at
        if self.delay is not None:
            run_at = time.time() + self.delay
        return Job(self.id if self.id is not None else uuid.uuid4().hex,
                   task.encode(args, kwargs), self.priority, task.kind, task.max_retries,
                   run_at=run_at)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue the job, as :meth:`Task.enqueue` does, with these options."""
        task = self.task
        job = Job(self.id if self.id is not None else uuid.uuid4().hex,
                  task.encode(args, kwargs), self.priority, task.kind, task.max_retries,
                  run_at=self.run_at)
        queue = task._queue_of()
        queue.enqueue(job, delay=self.delay)
        return JobHandle(job.id, queue)


def make_task(
    queue_of: Callable[[], JobQueue], function: Callable[P, R], kind: str | None,
    priority: object, max_retries: int | None, retry_on: object = None,
    give_up_on: object = (),
) -> Task[P, R]:
    """A task, every option checked (``TypeError``/``ValueError`` naming the wrong one)."""
    if kind is None:
        kind = f"{function.__module__}.{function.__qualname__}"
    job = Job("-", b"", parse_priority(priority), kind, max_retries)  # checks every field
    return Task(queue_of, function, job.kind, job.priority, job.max_retries,
                check_exceptions("retry_on", retry_on),
                check_exceptions("give_up_on", give_up_on) or ())
