"""The LMDB store at work: jobs logged first, written to LMDB in batches, claimed back.

The :class:`~jobqueue.final._store.Store` contract on the files of
:mod:`jobqueue.final._lmdb_files`. New jobs go to the write-ahead log (:mod:`jobqueue.final._wal`)
and are then as durable as the ``fsync`` level promises; one flush thread moves everything
pending (new jobs, and the batched records of jobs starting, finishing and waiting for retries,
coalesced by id) into LMDB in one transaction every few milliseconds, with the log checkpoint.
Measured with 4 workers and one producer, one LMDB transaction per ``enqueue()`` ran about
21,000 jobs/s and the log about 83,000 (py-lmdb releases the GIL on every call; a memory copy
does not).

Durability: ``fsync=False`` opens LMDB with ``sync=False, metasync=False`` and never flushes the
log: a logged job or a commit is in the OS page cache, which survives the process being killed
but not the machine losing power. ``fsync=True`` keeps LMDB's defaults (every commit flushed)
and flushes the log before ``commit()`` returns, one ``fdatasync`` per group of concurrent
callers. LMDB's ``writemap`` stays off: with it, a full disk would kill the process with SIGBUS
instead of failing a write.

Claims: the jobs live in LMDB when the store opened (the backlog) are handed out by
:meth:`LmdbStore.claim`, a cursor per priority, in arrival order; jobs of kinds the queue cannot
run are skipped ("parked") and found again when it can. While a backlog remains, a new job goes
through ``commit()``, which refuses an id the backlog holds.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Collection, Sequence

import lmdb

from jobqueue._priority import Priority
from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final._lmdb_files import (
    MapGate,
    Tables,
    check_directory,
    replay_log,
    take_ownership,
)
from jobqueue.final._records import RecordError, decode, encode, order_key
from jobqueue.final._states import LIVE
from jobqueue.final._store import JobRecord
from jobqueue.final._wal import WriteAheadLog, frame

__all__ = ["LmdbStore"]

logger = logging.getLogger("jobqueue")

_PRIORITIES = tuple(Priority)
_CLAIM_CHUNK = 512
# The flush thread waits this long after the first batched record, so one commit carries many.
_FLUSH_LINGER = 0.002
# Records waiting for LMDB before commit() holds producers back: bounds memory if LMDB is slow.
_MAX_PENDING = 50_000
_RETRY_AFTER_ERROR = 1.0
_SYNC_FAILURES_KEPT = 16


class _Pending:
    """One job's latest unwritten state. ``new``: its ``order`` entry is not written yet."""

    __slots__ = ("record", "new")

    def __init__(self, record: JobRecord, new: bool) -> None:
        self.record = record
        self.new = new


class _Ticket:
    """New jobs, encoded outside the queue's mutex by ``prepare()``; ``add()`` returns it
    when it could not take them at once, and ``commit()`` finishes the work."""

    __slots__ = ("records", "frames", "number", "start")

    def __init__(self, records: Sequence[JobRecord], frames: bytes) -> None:
        self.records = records
        self.frames = frames
        self.number = 0  # its place in the log, once appended
        self.start = 0  # the log position of its first frame


class LmdbStore:
    """The Store contract on LMDB. Owns the store directory until closed.

    Raises ``StoreError`` naming the path if it cannot be used, ``StoreLocked`` if another
    queue owns it.
    """

    persistent = True

    def __init__(self, path: str, *, fsync: bool = False, retention: int = 100_000) -> None:
        self.path = path
        self._fsync = fsync
        self._retention = retention
        check_directory(path, create=True)
        self._lock_fd: int | None = take_ownership(path)
        self._tables: Tables | None = None
        try:
            self._tables = tables = Tables(path, create=True, sync=fsync)
            first_segment = replay_log(tables)
            tables.note_map_size()
            with tables.env.begin() as txn:
                self._last_seq = tables.meta_int(txn, b"seq")
                self._last_fseq = Tables.last_key(txn, tables.done)
                self._done_count = txn.stat(tables.done)["entries"]
                backlog = txn.stat(tables.order)["entries"] > 0
            self._wal = WriteAheadLog(path, first_segment)
        except lmdb.Error as exc:
            self._release()
            raise StoreError(f"cannot open store {path!r}: {exc}") from None
        except OSError as exc:
            self._release()
            raise StoreError(f"cannot open the log of store {path!r}: {exc}") from None
        except BaseException:
            self._release()
            raise
        self._env = tables.env
        self._gate = MapGate()
        self._open_seq = self._last_seq  # jobs up to this seq are the backlog to claim

        # _cond's lock guards every field below, and the log. Lock order: the queue's mutex,
        # then this lock, then the gate's; the store never calls the queue. Conditions on it:
        # the flush thread waits for records, commit() for a group sync and for room, flush()
        # and close() for a commit.
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[str, _Pending] = {}
        # Moves of held jobs, in call order, not yet in _pending (see _event).
        self._events: deque[tuple[JobRecord, bool]] = deque()
        self._writing: dict[str, _Pending] = {}  # the batch being committed
        self._quarantine: dict[str, tuple[bytes, bytes | None]] = {}  # name -> raw, order key
        self._unsettled: dict[int, int] = {}  # tickets logged, not yet pending: number -> start
        self._appended = 0  # tickets appended to the log
        self._synced = 0  # with fsync, every ticket up to this one has been flushed
        self._syncing = False
        self._sync_failures: list[tuple[int, int, StoreError]] = []
        self._swaps = 0  # batches taken by the flush thread
        self._committed_swap = 0  # the last batch LMDB has
        self._failed_swap = 0  # the last batch LMDB refused (it went back to pending)
        self._flush_wanted = False
        self._flusher_idle = False
        self._closing = False
        self._closed = False
        # The backlog, per priority: the next order key to read, whether it is used up, and
        # the kinds skipped for want of a handler with the first key of each.
        self._cursor = [order_key(p, 0) for p in _PRIORITIES]
        self._exhausted = [not backlog] * len(_PRIORITIES)
        self._parked: list[dict[str, bytes]] = [{} for _ in _PRIORITIES]
        self._claimed: set[str] = set()  # backlog ids handed out and not finished
        self._flusher = threading.Thread(
            target=self._flush_loop, name="jobqueue-final-store-flush", daemon=True
        )
        self._flusher.start()

    def _release(self) -> None:
        if self._tables is not None:
            self._tables.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _backlog_left(self) -> bool:
        return not all(self._exhausted) or any(self._parked)

    # -- new jobs ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        return self._last_seq

    def prepare(self, records: Sequence[JobRecord]) -> _Ticket:
        return _Ticket(records, b"".join([frame(encode(record)) for record in records]))

    def add(self, prepared: object) -> _Ticket | None:
        assert isinstance(prepared, _Ticket)
        with self._cond:
            if self._closing:
                raise StoreError(f"store {self.path!r} is closed")
            if self._fsync or self._backlog_left() or self._behind_locked():
                return prepared  # commit() finishes, outside the queue's mutex
            try:
                self._wal.append(prepared.frames)
            except OSError as exc:
                raise StoreError(f"cannot write to store {self.path!r}: {exc}") from None
            self._settle_locked(prepared.records)
            return None

    def _behind_locked(self) -> bool:
        return len(self._pending) + len(self._events) >= _MAX_PENDING

    def commit(self, ticket: object) -> None:
        assert isinstance(ticket, _Ticket)
        with self._cond:
            check = self._backlog_left()
        if check:
            for record in ticket.records:
                stored = self._latest(record.id)
                if stored is not None and stored.status in LIVE and stored.seq <= self._open_seq:
                    raise DuplicateJob(
                        f"job {record.id!r} is already {stored.status.value} in the store"
                    )
        with self._cond:
            if self._closing:
                raise StoreError(f"store {self.path!r} is closed")
            try:
                ticket.start = self._wal.append(ticket.frames)
            except OSError as exc:
                raise StoreError(f"cannot write to store {self.path!r}: {exc}") from None
            self._appended += 1
            ticket.number = self._appended
            self._unsettled[ticket.number] = ticket.start
        if self._fsync:
            self._group_sync(ticket)
        with self._cond:
            del self._unsettled[ticket.number]
            self._settle_locked(ticket.records)
            while self._behind_locked() and not self._closing:
                self._cond.wait()  # LMDB is behind: hold producers, keep memory bounded

    def _settle_locked(self, records: Sequence[JobRecord]) -> None:
        pending = self._pending
        for record in records:
            pending[record.id] = _Pending(record, True)
        self._wake_flusher_locked()

    def _group_sync(self, ticket: _Ticket) -> None:
        """Flush the log for this ticket and every one appended before it: one caller syncs
        for the group. On failure the ticket's frames are revoked and StoreError raised."""
        with self._cond:
            while self._synced < ticket.number:
                if not self._syncing:
                    self._syncing = True
                    first, last = self._synced + 1, self._appended
                    descriptors = self._wal.take_unsynced()
                    break
                self._cond.wait()
            else:
                self._raise_if_sync_failed_locked(ticket)
                return
        error = None
        try:
            for descriptor in descriptors:
                os.fdatasync(descriptor)
        except OSError as exc:
            error = StoreError(f"cannot flush store {self.path!r} to disk: {exc}")
        with self._cond:
            self._syncing = False
            self._synced = last
            if error is not None:
                failures = self._sync_failures[-(_SYNC_FAILURES_KEPT - 1):]
                self._sync_failures = [*failures, (first, last, error)]
            self._cond.notify_all()
            self._raise_if_sync_failed_locked(ticket)

    def _raise_if_sync_failed_locked(self, ticket: _Ticket) -> None:
        for first, last, error in self._sync_failures:
            if first <= ticket.number <= last:
                # enqueue() will raise: leave no trace, in memory or at the next start.
                self._wal.revoke(ticket.start, len(ticket.frames))
                del self._unsettled[ticket.number]
                raise error

    # -- moves of held jobs: batched --------------------------------------------------------

    def started(self, record: JobRecord) -> None:
        self._event(record, False)

    def retrying(self, record: JobRecord) -> None:
        self._event(record, False)

    def finished(self, record: JobRecord) -> None:
        self._event(record, True)

    def released(self, record: JobRecord) -> None:
        self._event(record, True)

    def _event(self, record: JobRecord, unclaim: bool) -> None:
        # No lock: a deque append is atomic, and the queue's mutex orders these calls. The
        # flush thread (or a reader) moves them into _pending, under the lock.
        self._events.append((record, unclaim))
        if self._flusher_idle:
            with self._cond:
                self._wake_flusher_locked()

    def _drain_events_locked(self) -> None:
        events, pending = self._events, self._pending
        while events:
            record, unclaim = events.popleft()
            if self._closed:
                # A handler that outlived close(): its job stays as last written and runs
                # again at the next start (at least once).
                continue
            if unclaim and self._claimed:
                self._claimed.discard(record.id)
            previous = pending.get(record.id)
            if previous is not None and previous.record.seq > record.seq:
                continue  # the id was enqueued again since: a new life, already told
            pending[record.id] = _Pending(record, previous is not None and previous.new)

    def _wake_flusher_locked(self) -> None:
        if self._flusher_idle:
            self._flusher_idle = False
            self._cond.notify_all()

    # -- reading ----------------------------------------------------------------------------

    def _latest(self, job_id: str) -> JobRecord | None:
        """The newest state of a job: batched, being written, or in LMDB."""
        with self._cond:
            if self._closed:
                raise StoreError(f"store {self.path!r} is closed")
            self._drain_events_locked()
            pending = self._pending.get(job_id) or self._writing.get(job_id)
        if pending is not None:
            return pending.record
        tables = self._tables
        assert tables is not None
        with self._gate.reading(self._env) as txn:
            raw = txn.get(job_id.encode(), db=tables.jobs)
        if raw is None:
            return None
        try:
            return decode(raw)[0]
        except RecordError as exc:
            logger.error("stored record of job %r cannot be read: %s", job_id, exc)
            return None

    def get(self, job_id: str) -> JobRecord | None:
        return self._latest(job_id)

    def dead_letters(self) -> list[JobRecord]:
        self.flush()
        tables = self._tables
        assert tables is not None
        with self._gate.reading(self._env) as txn:
            return tables.dead_letters(txn)

    def claim(
        self, priority: Priority, limit: int, kinds: Collection[str] | None
    ) -> list[JobRecord]:
        with self._cond:
            parked = self._parked[priority]
            runnable = [kind for kind in parked if kinds is None or kind in kinds]
            if runnable:  # read again from the first job of a kind that can run now
                self._cursor[priority] = min(parked.pop(kind) for kind in runnable)
                self._exhausted[priority] = False
            if self._exhausted[priority] or limit <= 0:
                return []
            start = self._cursor[priority]
            claimed = set(self._claimed)
        taken: list[JobRecord] = []
        newly_parked: dict[str, bytes] = {}
        exhausted = False
        while len(taken) < limit and not exhausted:
            chunk = self._read_order(priority, start)
            exhausted = len(chunk) < _CLAIM_CHUNK
            for key, job_id, raw in chunk:
                start = key + b"\x00"
                if int.from_bytes(key[1:], "big") > self._open_seq:
                    exhausted = True  # added since the store opened: held already
                    break
                record = self._live_record(key, job_id, raw)
                if record is None or record.id in claimed:
                    continue
                if kinds is not None and record.kind not in kinds:
                    newly_parked.setdefault(record.kind, key)
                    continue
                taken.append(record)
                if len(taken) == limit:
                    break
        with self._cond:
            self._cursor[priority] = start
            self._exhausted[priority] = exhausted and len(taken) < limit
            parked = self._parked[priority]
            for kind, key in newly_parked.items():
                if kind not in parked:
                    logger.warning(
                        "store %r holds jobs of kind %r with no handler; they stay queued "
                        "in the store until one is registered", self.path, kind,
                    )
                parked[kind] = min(key, parked.get(kind, key))
            self._claimed.update(record.id for record in taken)
        return taken

    def _read_order(self, priority: int, start: bytes) -> list[tuple[bytes, bytes, bytes | None]]:
        tables = self._tables
        assert tables is not None
        chunk: list[tuple[bytes, bytes, bytes | None]] = []
        with self._gate.reading(self._env) as txn:  # short, so a long claim pins no pages
            cursor = txn.cursor(db=tables.order)
            if cursor.set_range(start):
                for key, job_id in cursor:
                    if key[0] != priority or len(chunk) >= _CLAIM_CHUNK:
                        break
                    chunk.append((key, job_id, txn.get(job_id, db=tables.jobs)))
        return chunk

    def _live_record(self, key: bytes, job_id: bytes, raw: bytes | None) -> JobRecord | None:
        """The live job an ``order`` entry points to, or None if the entry is stale."""
        if raw is None:
            return None
        try:
            record, _ = decode(raw)
        except RecordError as exc:
            logger.error(
                "stored record of job %r cannot be read (%s); set aside in the 'corrupt' "
                "table", job_id, exc,
            )
            with self._cond:
                self._quarantine[job_id.decode("utf-8", "replace")] = (raw, key)
                self._wake_flusher_locked()
            return None
        with self._cond:
            self._drain_events_locked()
            pending = self._pending.get(record.id) or self._writing.get(record.id)
        if pending is not None:
            record = pending.record
        if record.status not in LIVE or order_key(record.priority, record.seq) != key:
            return None  # finished, or enqueued again since: the entry is stale
        return record

    # -- writing ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every record told so far to LMDB. Blocks until committed; raises
        StoreError if LMDB refuses them."""
        with self._cond:
            self._drain_events_locked()
            if not self._pending and not self._writing:
                return
            target = self._swaps + 1 if self._pending else self._swaps
            self._flush_wanted = True
            self._cond.notify_all()
            while self._committed_swap < target:
                if self._failed_swap >= target or self._closed:
                    raise StoreError(f"cannot write to store {self.path!r}; see the log")
                self._cond.wait()

    def _flush_loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    # Idle first, then look: an _event() that misses the flag left its record
                    # where this looks (see _event).
                    self._flusher_idle = True
                    if (self._pending or self._events or self._quarantine or self._closing
                            or self._flush_wanted):
                        break
                    cond.wait()
                self._flusher_idle = False
                urgent = self._closing or self._flush_wanted
                if not urgent and len(self._pending) + len(self._events) < _MAX_PENDING // 2:
                    cond.wait(_FLUSH_LINGER)  # let more records join this transaction
                self._flush_wanted = False
                self._drain_events_locked()
                closing = self._closing
                batch, self._pending = self._pending, {}
                self._writing = batch  # still the latest state until LMDB has it
                quarantine, self._quarantine = self._quarantine, {}
                # Every logged frame before this is in the batch or an earlier one.
                checkpoint = min(self._unsettled.values(), default=self._wal.position())
                self._swaps += 1
                swap = self._swaps
                cond.notify_all()  # producers held back by a full batch may go on
            error = self._write(batch, quarantine, checkpoint)
            with cond:
                self._writing = {}
                if error is None:
                    self._committed_swap = swap
                    self._wal.retire_through(checkpoint)
                else:
                    # Nothing is lost: the log still holds the adds, and the batched records
                    # go back in front of anything newer.
                    self._failed_swap = swap
                    for job_id, pending in batch.items():
                        newer = self._pending.get(job_id)
                        if newer is None:
                            self._pending[job_id] = pending
                        elif pending.new:
                            newer.new = True
                    self._quarantine.update(quarantine)
                cond.notify_all()
                if closing:
                    return  # close() decides what the outcome means
            if error is not None:
                logger.error("%s; will try again", error)
                with cond:
                    if not self._closing:
                        cond.wait(_RETRY_AFTER_ERROR)

    def _write(
        self,
        batch: dict[str, _Pending],
        quarantine: dict[str, tuple[bytes, bytes | None]],
        checkpoint: int,
    ) -> StoreError | None:
        """Write a batch in one transaction, growing the map as needed; the error, if any."""
        try:
            while True:
                try:
                    self._write_once(batch, quarantine, checkpoint)
                    return None
                except lmdb.MapFullError:
                    size = self._gate.resize(self._env)
                    logger.info("store %r was full; its map is now %d bytes", self.path, size)
                    assert self._tables is not None
                    self._tables.note_map_size()
        except lmdb.Error as exc:
            return StoreError(f"cannot write to store {self.path!r}: {exc}")
        except BaseException as exc:  # keep the protocol: waiters must wake
            return StoreError(f"cannot write to store {self.path!r}: {exc!r}")

    def _write_once(
        self,
        batch: dict[str, _Pending],
        quarantine: dict[str, tuple[bytes, bytes | None]],
        checkpoint: int,
    ) -> None:
        tables = self._tables
        assert tables is not None
        fseq, done_count, last_seq = self._last_fseq, self._done_count, self._last_seq
        with self._env.begin(write=True) as txn:
            for pending in batch.values():
                record = pending.record
                if pending.new and record.seq > last_seq:
                    last_seq = record.seq
                if record.status in LIVE:
                    tables.put_live(txn, record, pending.new)
                else:
                    fseq += 1
                    done_count += 1
                    tables.put_finished(txn, record, fseq, pending.new)
            for name, (raw, key) in quarantine.items():
                txn.put(name.encode(), raw, db=tables.corrupt)
                if key is not None:
                    txn.delete(name.encode(), db=tables.jobs)
                    txn.delete(key, db=tables.order)
            if last_seq != self._last_seq:
                tables.put_meta_int(txn, b"seq", last_seq)  # arrival seqs never repeat
            tables.put_meta_int(txn, b"checkpoint", checkpoint)
            if done_count > self._retention:
                done_count = tables.prune(txn, done_count, self._retention)
        self._last_fseq, self._done_count, self._last_seq = fseq, done_count, last_seq

    def close(self, timeout: float | None = None) -> None:
        """Write what is pending and give the store up, waiting up to ``timeout`` seconds for
        the last commit. A commit still running then keeps the store until it ends."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._flusher.join(timeout)
        if self._flusher.is_alive():
            logger.warning(
                "store %r: the last commit is still running; the log keeps its jobs, and "
                "the store stays owned until it ends", self.path,
            )
            return
        with self._cond:
            self._closed = True
            clean = not (self._pending or self._events or self._quarantine or self._unsettled)
            segments = self._wal.close()
            self._cond.notify_all()
        if clean:
            WriteAheadLog.remove(segments)
        else:
            logger.error("store %r: not everything reached LMDB at close; the log keeps the "
                         "new jobs, and jobs whose outcome was lost run again", self.path)
        self._release()
