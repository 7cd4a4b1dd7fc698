"""Where a queue keeps its jobs: the contract (:mod:`.base`) and the stores behind it.

- :mod:`.base`: ``JobRecord``, ``Store`` and ``SharedStore``, which every store obeys and
  the queue alone relies on. A third-party store imports only this module.
- :mod:`.memory`: the default, nothing survives the process.
- :mod:`.lmdb`: one process's queue on disk, durable across crashes.
- :mod:`.postgres`: one queue shared by processes and hosts (needs psycopg 3).

:func:`open_store` is the only code that names the stores, and imports each one only when a
config asks for it (as ``concurrent.futures`` loads its executors), so a queue in memory
never imports ``lmdb`` or ``psycopg``. The modules inside ``lmdb`` and ``postgres`` are
internal: their names may change in any release.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from jobqueue.final._model import Config
from jobqueue.final.stores.base import Store

__all__ = ["open_store"]


def open_store(config: Config, now: Callable[[], float] = time.time) -> Store:
    """The store a config asks for: PostgreSQL at ``database_url``, LMDB at
    ``persist_path``, else memory. ``now`` is the queue's clock in epoch seconds, against
    which a shared store's scheduled jobs come due. Raises StoreError if it cannot open."""
    if config.database_url is not None:
        from jobqueue.final.stores.postgres import PostgresStore

        return PostgresStore(
            config.database_url, queue=config.queue_name, fsync=config.fsync,
            retention=config.status_retention, lease=config.lease, now=now,
        )
    if config.persist_path is not None:
        from jobqueue.final.stores.lmdb import LmdbStore

        return LmdbStore(
            os.fspath(config.persist_path), fsync=config.fsync,
            retention=config.status_retention,
        )
    from jobqueue.final.stores.memory import MemoryStore

    return MemoryStore(config.status_retention)
