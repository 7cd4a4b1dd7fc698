"""The LMDB store's record of attempts started: what makes a poison job countable.

A handler may kill its process (``os._exit``, a fatal signal, a crash in a C extension)
before the batch that tells LMDB its attempt started is written. Run again at every restart,
such a job would never use up its retries. So each worker writes the start of an attempt,
before the handler runs, into a small file mapped into memory, ``attempts.ring``: a copy of
32 bytes into the page cache, with no system call and no lock (``Store.running``), which
survives the process being killed. When the handler returns or raises, the worker marks the
slot done (``Store.ran``): one byte.

The file is a ring of fixed slots, each ``(seq, check, attempts, priority, done,
started_at)``: the job's life is found by its arrival order key, which LMDB's ``order`` index
maps to its id, so a slot needs no id and has a fixed size. A slot matters only until LMDB
holds the attempt's outcome, a few milliseconds later; the ring keeps the last :data:`SLOTS`
starts, far more than that. ``check`` mixes seq, attempts and priority, so that a slot half
written as the process died is ignored.

At the next start, after the write-ahead log is replayed, :func:`replay_starts` corrects the
live jobs LMDB holds in the same life with the newest slot of each:

- started and not done: the process died while the handler ran. The job becomes
  PROCESSING with that attempt counted, and the queue that claims it settles the attempt as
  failed (:mod:`jobqueue.final._claimer`);
- done, but LMDB never got the outcome (it holds the job as PROCESSING, or with fewer
  attempts): the attempt ran, and only its outcome was lost. The job becomes QUEUED with the
  attempt counted, to run again (at least once), not charged with a death.

A stale slot (its outcome written since, its job finished, pruned or enqueued again)
changes nothing, so replaying twice is harmless.
"""

from __future__ import annotations

import functools
import itertools
import logging
import mmap
import os
import struct
from collections.abc import Callable

import lmdb

from jobqueue.final._states import LIVE, Status
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.lmdb.directory import FILE_MODE
from jobqueue.final.stores.lmdb.record_format import RecordError, decode, order_key
from jobqueue.final.stores.lmdb.tables import Tables

__all__ = ["RING_FILE", "SLOTS", "StartRing", "read_starts", "replay_starts", "started"]

logger = logging.getLogger("jobqueue")

RING_FILE = "attempts.ring"
#: Starts the ring keeps: at 32 bytes a slot, 1 MiB.
SLOTS = 32_768
_SLOT = struct.Struct("<QQIBBxxd")  # seq, check, attempts, priority, done, started_at
_SLOT_SIZE = _SLOT.size
_DONE_AT = 21  # the offset of ``done`` in a slot
_MIX = 0x1E3779B97F4A7C15  # below 2**63: the check fits its field for any seq below that

#: (priority, seq) -> (attempts, started_at, done) of the newest start recorded for a life.
Starts = dict[tuple[int, int], tuple[int, float, bool]]


def _check(seq: int, attempts: int, priority: int) -> int:
    # Never 0 (seq >= 1), so that a zeroed, never written slot does not check out.
    return seq ^ (attempts << 32) ^ (priority << 30) ^ _MIX


class StartRing:
    """The ring of one open store, emptied when opened. Workers record starts at once, each
    in a slot of its own: taking the next slot number is one atomic ``next()``."""

    def __init__(self, directory: str) -> None:
        path = os.path.join(directory, RING_FILE)
        size = SLOTS * _SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.ftruncate(fd, 0)  # what it held was replayed before
            os.posix_fallocate(fd, 0, size)  # ENOSPC here, not SIGBUS on a later write
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)  # the mapping keeps the file
        #: ``record(job_record) -> ticket``: the attempt ``job_record.attempts`` of that job
        #: is starting. ``finish(ticket)``: its handler has returned or raised. Both are on
        #: every job's path, so closures over locals: measured, 0.36 and 0.05 us a call
        #: against 0.46 and 0.19 as methods. Either raises once the ring is closed.
        self.record, self.finish = self._writers(self._map)

    @staticmethod
    def _writers(
        ring: mmap.mmap,
    ) -> tuple[Callable[[JobRecord], int], Callable[[int], None]]:
        pack = functools.partial(_SLOT.pack_into, ring)
        slots = itertools.count()  # next() is atomic: no two workers share a slot
        count, size, mix, done_at = SLOTS, _SLOT_SIZE, _MIX, _DONE_AT

        def record(job_record: JobRecord) -> int:
            seq, attempts, priority = job_record[12], job_record[7], job_record[2]
            offset = next(slots) % count * size
            pack(offset, seq, seq ^ (attempts << 32) ^ (priority << 30) ^ mix, attempts,
                 priority, 0, job_record[9] or 0.0)
            return offset

        def finish(offset: int) -> None:
            # Unchecked: had SLOTS starts taken the slot over during one handler, this
            # would mark the new occupant done, and miss counting it once if it killed the
            # process. Checking the seq first cost 0.15 us on every job.
            ring[offset + done_at] = 1

        return record, finish

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
    for seq, check, attempts, priority, done, started_at in _SLOT.iter_unpack(
        data[: len(data) - len(data) % _SLOT.size]
    ):
        if check != _check(seq, attempts, priority) or priority > 2:
            continue  # never written, or written as the process died
        known = starts.get((priority, seq))
        if known is None or known[0] < attempts or (known[0] == attempts and done):
            starts[priority, seq] = attempts, started_at, bool(done)
    return starts


def started(record: JobRecord, starts: Starts) -> JobRecord | None:
    """``record`` as the ring corrects it (see the module's docstring), or None when the ring
    has nothing newer to say of it."""
    found = starts.get((record.priority, record.seq))
    if found is None or record.status not in LIVE:
        return None
    attempts, started_at, done = found
    if attempts < record.attempts:
        return None  # its outcome, and later attempts, are written
    if done:
        if attempts == record.attempts and record.status is not Status.PROCESSING:
            return None  # its outcome is written
        status = Status.QUEUED  # it ran; only its outcome was lost: run it again
    elif attempts > record.attempts:
        status = Status.PROCESSING  # the process died while its handler ran
    else:
        return None  # PROCESSING in LMDB already, as it should be
    return record._replace(status=status, attempts=attempts, due_at=None,
                           started_at=started_at or record.started_at)


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
                    corrected = started(record, starts)
                    if corrected is not None:
                        tables.put_live(txn, corrected, new=False)
                        running += corrected.status is Status.PROCESSING
            break
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)  # nothing else runs yet
    if running:
        logger.warning("store %r: %d jobs were running when its last owner died; each "
                       "attempt counts as failed", tables.path, running)
    return running
