"""The production stage: fair, observable, retrying, and durable across crashes with LMDB,
or shared by processes and hosts in PostgreSQL.

See :class:`JobQueue` and :class:`Config`; the README has examples and a map of the modules.
"""

from __future__ import annotations

from jobqueue._priority import Priority
from jobqueue.errors import (
    DuplicateJob,
    Fail,
    JobCancelled,
    JobFailed,
    JobQueueError,
    JobTimeout,
    QueueClosed,
    QueueFull,
    StoreError,
    StoreLocked,
)
from jobqueue.final._app import App
from jobqueue.final._context import JobContext, current_job
from jobqueue.final._model import (
    Config,
    Handler,
    Hook,
    Job,
    JobInfo,
    LatencySummary,
    Metrics,
    PriorityMetrics,
)
from jobqueue.final._picker import DEFAULT_WEIGHTS, WeightedPicker
from jobqueue.final._queue import JobQueue
from jobqueue.final._states import InvalidTransition, Status
from jobqueue.final._tasks import JobHandle, Task, TaskCall
from jobqueue.final.stores.base import JobRecord, QueueStats, SharedStore, Store
from jobqueue.final.stores.memory import MemoryStore

__all__ = [
    "DEFAULT_WEIGHTS",
    "App",
    "Config",
    "DuplicateJob",
    "Fail",
    "Handler",
    "Hook",
    "InvalidTransition",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobHandle",
    "JobInfo",
    "JobQueue",
    "JobQueueError",
    "JobRecord",
    "JobTimeout",
    "LatencySummary",
    "MemoryStore",
    "Metrics",
    "Priority",
    "PriorityMetrics",
    "QueueClosed",
    "QueueFull",
    "QueueStats",
    "SharedStore",
    "Status",
    "Store",
    "StoreError",
    "StoreLocked",
    "Task",
    "TaskCall",
    "WeightedPicker",
    "current_job",
]
