"""The LMDB store: one process's queue on disk, durable across crashes.

- :mod:`.store`: ``LmdbStore``, the contract on LMDB.
- :mod:`.writer`: the flush thread, which batches moves into LMDB.
- :mod:`.wal`: the write-ahead log that makes a move durable before it reaches LMDB.
- :mod:`.replay`: a dead owner's log moved into LMDB at the next start.
- :mod:`.attempt_ring`: attempts started, so that an attempt a process died in counts.
- :mod:`.backlog`: claims of what an earlier run left.
- :mod:`.tables`: the environment's tables, read and written.
- :mod:`.directory`: the files a store may hold, its owner lock, a full disk.
- :mod:`.record_format`: the binary, versioned, never-executed record codec.
- :mod:`.admin`: reads and repairs from outside the owner (through :mod:`jobqueue.final.admin`).
"""

from jobqueue.final.stores.lmdb.store import LmdbStore

__all__ = ["LmdbStore"]
