"""What a store's last owner left in its write-ahead log: read it, or move it into LMDB.

The log (:mod:`.wal`) holds new jobs from the moment ``enqueue()`` returns until
a batch carries them into LMDB. LMDB records, with each batch, the log position it covers (the
checkpoint): frames before it are in LMDB already and are skipped, since their jobs may have
run, finished and been pruned since. Frames from the checkpoint on are jobs the owner
acknowledged and LMDB may not have: a new owner moves them in before anything else
(:func:`replay_log`); a reader shows them as they are (:func:`read_logged`).
"""

from __future__ import annotations

import logging
import os
import sys

import lmdb

from jobqueue.final._states import LIVE
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.lmdb.record_format import RecordError, decode
from jobqueue.final.stores.lmdb.tables import Tables, begin_read
from jobqueue.final.stores.lmdb.wal import (
    WriteAheadLog,
    position,
    read_segment,
    segment_number,
    segment_paths,
)

__all__ = ["read_logged", "replay_log"]

logger = logging.getLogger("jobqueue")


def _stored(existing: bytes | None) -> JobRecord | None:
    if existing is None:
        return None
    try:
        return decode(existing)[0]
    except RecordError:
        return None  # unreadable: what the log holds replaces it


def _newer(existing: bytes | None, record: JobRecord) -> bool:
    """Whether a logged record must still be applied over what LMDB holds for that id: a
    new job (or a new life of an id), or a cancel of the life LMDB holds live."""
    stored = _stored(existing)
    if stored is None:
        return True
    if stored.seq != record.seq:
        return stored.seq < record.seq
    # The same life: its add was applied already (and it may have run since); a cancel
    # still applies while LMDB has it live.
    return stored.status in LIVE and record.status not in LIVE


def replay_log(tables: Tables) -> int:
    """Move the jobs a dead owner logged but never wrote to LMDB, then delete the log.

    Frames before the checkpoint are in LMDB already, and skipped: their jobs may have
    finished and been pruned since. Grows the map as needed. Returns the segment number the
    next log must start at, so positions keep growing.
    """
    env, path = tables.env, tables.path
    segments = segment_paths(path)
    with env.begin() as txn:
        checkpoint = tables.meta_int(txn, b"checkpoint")
    next_number = (checkpoint >> 40) + 1
    if not segments:
        return next_number
    batch: dict[str, tuple[JobRecord, bool]] = {}  # id -> (record, its order entry is new)
    quarantine: dict[str, bytes] = {}
    with env.begin() as txn:
        for segment in segments:
            number = segment_number(segment)
            next_number = max(next_number, number + 1)
            for offset, raw in read_segment(segment):
                if position(number, offset) < checkpoint:
                    continue
                try:
                    record, _ = decode(raw)
                except RecordError as exc:
                    name = f"{os.path.basename(segment)}#{offset}"
                    logger.error("logged record %s cannot be read (%s); set aside in the "
                                 "'corrupt' table", name, exc)
                    quarantine[name] = raw
                    continue
                existing = txn.get(record.id.encode(), db=tables.jobs)
                if _newer(existing, record):
                    earlier = batch.get(record.id)
                    stored = _stored(existing)
                    ordered = stored is not None and stored.seq == record.seq
                    if earlier is not None and earlier[0].seq == record.seq:
                        ordered = not earlier[1]  # its add is in this log too
                    batch[record.id] = (record, not ordered)
    while True:
        try:
            with env.begin(write=True) as txn:
                counters = (Tables.last_key(txn, tables.done),
                            txn.stat(tables.done)["entries"], tables.meta_int(txn, b"seq"))
                # (No pruning here: the next batch of the queue prunes to its retention.)
                tables.write_batch(txn, batch.values(), counters, retention=sys.maxsize)
                for name, raw in quarantine.items():
                    txn.put(name.encode(), raw, db=tables.corrupt)
                tables.put_meta_int(txn, b"checkpoint", position(next_number, 0))
            break
        except lmdb.MapFullError:
            size = env.info()["map_size"] * 2
            logger.info("store %r is full; growing its map to %d bytes", path, size)
            env.set_mapsize(size)  # no transaction is open: nothing else runs yet
    if batch:
        logger.info("store %r: recovered %d logged jobs", path, len(batch))
    WriteAheadLog.remove(segments)
    return next_number


def read_logged(tables: Tables) -> dict[str, JobRecord]:
    """Jobs in the log that LMDB does not have yet, without changing anything."""
    logged: dict[str, JobRecord] = {}
    with begin_read(tables.env) as txn:
        checkpoint = tables.meta_int(txn, b"checkpoint")
        for segment in segment_paths(tables.path):
            try:
                number = segment_number(segment)
                for offset, raw in read_segment(segment):
                    if position(number, offset) < checkpoint:
                        continue
                    record, _ = decode(raw)
                    if _newer(txn.get(record.id.encode(), db=tables.jobs), record):
                        logged[record.id] = record
            except (OSError, RecordError):
                continue  # deleted by the owner meanwhile: LMDB has its jobs now
    return logged
