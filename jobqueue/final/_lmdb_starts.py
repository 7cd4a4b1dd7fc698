"""The LMDB store's record of attempts started: what makes a poison job countable.

A handler may kill its process (``os._exit``, a fatal signal, a crash in a C extension)
before the batch that tells LMDB its attempt started is written. Run again at every restart,
such a job would never use up its retries. So the start of each attempt is also written,
before the handler runs, into a small file mapped into memory, ``attempts.ring``: a copy of
32 bytes into the page cache, with no system call and no lock, by the worker just before the
handler runs (``Store.running``), which survives the process being killed.

The file is a ring of fixed slots, each ``(seq, priority, attempts, started_at, check)``: the
job's life is found by its arrival order key, which LMDB's ``order`` index maps to its id, so
a slot needs no id and has a fixed size. A slot matters only until LMDB holds that attempt,
a few milliseconds later; the ring keeps the last :data:`SLOTS` starts, far more than
that. ``check`` mixes the other fields, so that a slot half written as the process died is
ignored.

At the next start, after the write-ahead log is replayed, :func:`replay_starts` applies every
slot whose job LMDB still holds live, in that life, with fewer attempts: the job becomes
PROCESSING with the attempt counted, and the queue that claims it settles that attempt as
failed (:mod:`jobqueue.final._claimer`). A stale slot (its attempt written since, its job
finished, pruned or enqueued again) changes nothing, so replaying twice is harmless.
"""

from __future__ import annotations

import functools
import itertools
import logging
import mmap
import os
import struct

import lmdb

from jobqueue.final._lmdb_files import Tables
from jobqueue.final._records import RecordError, decode, order_key
from jobqueue.final._states import LIVE, Status
from jobqueue.final._store import JobRecord

__all__ = ["RING_FILE", "SLOTS", "StartRing", "read_starts", "replay_starts", "started"]

logger = logging.getLogger("jobqueue")

RING_FILE = "attempts.ring"
#: Starts the ring keeps: at 32 bytes a slot, 1 MiB.
SLOTS = 32_768
_SLOT = struct.Struct("<QQIBxxxd")  # seq, check, attempts, priority, started_at
_SLOT_SIZE = _SLOT.size
_MIX = 0x1E3779B97F4A7C15  # below 2**63: the check fits its field for any seq below that

#: (priority, seq) -> (attempts, started_at) of the newest start recorded for that life.
Starts = dict[tuple[int, int], tuple[int, float]]


def _check(seq: int, attempts: int, priority: int) -> int:
    # Never 0 (seq >= 1), so that a zeroed, never written slot does not check out.
    return seq ^ (attempts << 32) ^ (priority << 30) ^ _MIX


class StartRing:
    """The ring of one open store, emptied when opened. Workers record starts at once, each
    in a slot of its own: taking the next slot number is one atomic ``next()``."""

    def __init__(self, directory: str) -> None:
        path = os.path.join(directory, RING_FILE)
        size = SLOTS * _SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 0)  # what it held was replayed before
            os.posix_fallocate(fd, 0, size)  # ENOSPC here, not SIGBUS on a later write
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)  # the mapping keeps the file
        self._slots = itertools.count()  # next() is atomic: no two workers share a slot
        self._pack = functools.partial(_SLOT.pack_into, self._map)

    def record(self, record: JobRecord) -> None:
        """The attempt ``record.attempts`` of this job is starting (on every job's path).
        Raises ``ValueError`` once the ring is closed."""
        (_, _, priority, _, _, _, _, attempts, _, started_at, _, _, seq) = record
        self._pack(next(self._slots) % SLOTS * _SLOT_SIZE, seq,
                   seq ^ (attempts << 32) ^ (priority << 30) ^ _MIX, attempts, priority,
                   started_at or 0.0)

    def close(self) -> None:
        self._map.close()


def read_starts(directory: str) -> Starts:
    """The starts a store's ring holds, newest attempt per life; empty if it has none."""
    try:
        with open(os.path.join(directory, RING_FILE), "rb") as ring:
            data = ring.read()
    except FileNotFoundError:
        return {}
    starts: Starts = {}
    for seq, check, attempts, priority, started_at in _SLOT.iter_unpack(
        data[: len(data) - len(data) % _SLOT.size]
    ):
        if check != _check(seq, attempts, priority) or priority > 2:
            continue  # never written, or written as the process died
        known = starts.get((priority, seq))
        if known is None or known[0] < attempts:
            starts[priority, seq] = attempts, started_at
    return starts


def started(record: JobRecord, starts: Starts) -> JobRecord | None:
    """``record`` as a recorded start leaves it (PROCESSING, that attempt counted), or None
    when no start recorded for it is newer than what it says."""
    found = starts.get((record.priority, record.seq))
    if found is None or record.status not in LIVE or record.attempts >= found[0]:
        return None
    attempts, started_at = found
    return record._replace(status=Status.PROCESSING, attempts=attempts,
                           started_at=started_at or record.started_at, due_at=None)


def replay_starts(tables: Tables) -> int:
    """Apply the ring of the store's last owner to LMDB (see the module's docstring); return
    how many jobs were running when it died."""
    starts = read_starts(tables.path)
    if not starts:
        return 0
    env = tables.env
    while True:
        try:
            with env.begin(write=True) as txn:
                running = 0
                for priority, seq in starts:
                    job_id = txn.get(order_key(priority, seq), db=tables.order)
                    raw = None if job_id is None else txn.get(job_id, db=tables.jobs)
                    if raw is None:
                        continue  # finished since (its order entry went), or pruned
                    try:
                        record, _ = decode(raw)
                    except RecordError:
                        continue  # set aside when the backlog reads it
                    if record.seq != seq:
                        continue
                    now_running = started(record, starts)
                    if now_running is not None:
                        tables.put_live(txn, now_running, new=False)
                        running += 1
            break
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)  # nothing else runs yet
    if running:
        logger.warning("store %r: %d jobs were running when its last owner died; each "
                       "attempt counts as failed", tables.path, running)
    return running
