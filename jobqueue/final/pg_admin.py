"""The PostgreSQL side of :mod:`jobqueue.final.admin`, under the name scripts used before
it: ``QueueReader(url, queue)`` and repairs that take the queue's name second. New code
uses :mod:`jobqueue.final.admin`, which opens a directory or a URL alike."""

from jobqueue.final.stores.postgres.admin import (
    QueueReader,
    cancel,
    is_database_url,
    mask,
    purge,
    requeue,
)

__all__ = ["QueueReader", "cancel", "is_database_url", "mask", "purge", "requeue"]
