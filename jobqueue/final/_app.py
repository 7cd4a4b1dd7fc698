"""An app: the tasks of a code base, declared at import time, and the config that runs them.

A module declares ``@app.task`` functions as it is imported, before any queue exists: no
store is opened and no thread started. A :class:`JobQueue` made with ``app=app`` binds it:
it runs the app's tasks if it has workers, and only enqueues them if it has none
(``num_workers=0``, a web process say), and ``task.enqueue(...)`` goes to that queue. This is
what ``jobqueue worker tasks:app`` opens.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

from jobqueue._priority import Priority
from jobqueue.final._model import Config
from jobqueue.final._queue import JobQueue
from jobqueue.final._tasks import Exceptions, Task, make_task

__all__ = ["App"]

P = ParamSpec("P")
R = TypeVar("R")


class App:
    """Tasks declared at import time, and the :class:`Config` of the queues that run them.

    ::

        app = final.App(final.Config(database_url=os.environ["DATABASE_URL"]))

        @app.task(kind="email", give_up_on=ValueError)
        def send_email(to: str, subject: str) -> None: ...

    A worker runs them (``jobqueue worker tasks:app``, or ``with app.open() as jq``); a
    process that only enqueues binds the app with no workers
    (``app.open(num_workers=0)``) and calls ``send_email.enqueue(...)``.
    One open queue binds an app at a time: ``task.enqueue`` goes to it.
    """

    def __init__(self, config: Config | None = None) -> None:
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be a jobqueue.final.Config, not "
                            f"{type(config).__name__}")
        self._config = config
        # _lock guards _tasks and _queue; taken before a queue's mutex, never after it.
        self._lock = threading.Lock()
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._queue: JobQueue | None = None

    def __repr__(self) -> str:
        return f"<App of {len(self._tasks)} tasks: {', '.join(self._tasks) or 'none'}>"

    @property
    def config(self) -> Config:
        """The config :meth:`open` and ``jobqueue worker`` start from. Raises
        ``RuntimeError`` for an app made without one."""
        if self._config is None:
            raise RuntimeError("this App was made without a config: give it one "
                               "(App(Config(...))), or open it with app.open(config)")
        return self._config

    @property
    def tasks(self) -> Mapping[str, Task[Any, Any]]:
        """The declared tasks, by kind (a read-only view)."""
        with self._lock:
            return MappingProxyType(dict(self._tasks))

    @property
    def queue(self) -> JobQueue:
        """The queue bound to this app, where ``task.enqueue`` goes. Raises
        ``RuntimeError`` if none is."""
        with self._lock:
            queue = self._bound_locked()
        if queue is None:
            raise RuntimeError(
                "no JobQueue is bound to this App: open one first (app.open(), or "
                "JobQueue(config, app=app); num_workers=0 for a process that only enqueues)"
            )
        return queue

    def task(
        self,
        kind: str | None = None,
        *,
        priority: Priority | str = Priority.MEDIUM,
        max_retries: int | None = None,
        retry_on: Exceptions | None = None,
        give_up_on: Exceptions = (),
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Decorate a function to make it a task of this app: the handler of ``kind``
        (default: its module and qualified name), enqueued with its arguments as JSON.

        ``retry_on`` (exception classes) limits the retries to those errors, and
        ``give_up_on`` ends the job FAILED at once on those; each defaults to the config's.
        A handler that raises :class:`Fail` is never retried. Raises ``ValueError`` for a
        kind another function has, ``TypeError`` for a parameter named ``id``, ``delay``
        or ``run_at`` or a function that is not a plain one.
        """
        def decorate(function: Callable[P, R]) -> Task[P, R]:
            made = make_task(lambda: self.queue, function, kind, priority, max_retries,
                             retry_on, give_up_on)
            with self._lock:
                other = self._tasks.get(made.kind)
                if other is not None and other.function != function:
                    raise ValueError(
                        f"kind {made.kind!r} is the task {other.function!r} already: give "
                        "this one its own kind= (functions of one name, made by one "
                        "factory or lambdas, share the default kind)"
                    )
                self._tasks[made.kind] = made
                if self._bound_locked() is not None:  # declared by a module imported late
                    self._queue._add_task(made)  # type: ignore[union-attr]
            return made
        return decorate

    def open(self, config: Config | None = None, **changes: Any) -> JobQueue:
        """A :class:`JobQueue` of ``config`` (default: the app's), with ``changes`` to its
        fields (``num_workers=0``), bound to this app. Raises as ``JobQueue`` and
        ``Config`` do, and ``ValueError`` if an open queue is bound to the app already."""
        config = self.config if config is None else config
        if changes:
            config = dataclasses.replace(config, **changes)
        return JobQueue(config, app=self)

    def _bind(self, queue: JobQueue) -> None:
        """Called by a JobQueue being made: register every task with it."""
        with self._lock:
            bound = self._bound_locked()
            if bound is not None and bound is not queue and not bound._core.closing:
                raise ValueError("an open JobQueue is bound to this App already: close it "
                                 "first (one queue per app and process takes its tasks)")
            self._queue = queue
            for task in self._tasks.values():
                queue._add_task(task)

    def _bound_locked(self) -> JobQueue | None:
        """The bound queue; none in a process forked from the one that opened it (its
        queue is the parent's: the child opens its own)."""
        if self._queue is not None and self._queue._core.forked:
            self._queue = None
        return self._queue

    def _unbind(self, queue: JobQueue) -> None:
        """Called by a JobQueue's close()."""
        with self._lock:
            if self._queue is queue:
                self._queue = None
