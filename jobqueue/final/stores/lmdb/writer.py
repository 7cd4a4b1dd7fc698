"""The LMDB store's writer: what the store was told, moved into LMDB in batches by one thread.

New jobs reach the writer already in the write-ahead log (the store appends them first);
moves of held jobs reach it as events. The flush thread waits a couple of milliseconds after
the first record so that one transaction carries many, takes everything pending (coalesced by
id: a job that started and finished meanwhile is written once), and writes it to LMDB in one
transaction with the log checkpoint, then deletes the log segments wholly before it. If LMDB
refuses a batch (a full disk, say), nothing is lost: the log keeps the new jobs and the batch
goes back in front of anything newer, to be tried again. A full map is grown, between
transactions, once no read is open.

Why batches: py-lmdb releases the GIL on every call, and each release hands the interpreter to
a busy worker; one transaction per job held a producer near 21,000 jobs/s on 2 cores.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence

import lmdb

from jobqueue.errors import StoreError
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.lmdb.directory import disk_full_note
from jobqueue.final.stores.lmdb.tables import MapGate, Tables
from jobqueue.final.stores.lmdb.wal import WriteAheadLog

__all__ = ["Writer"]

logger = logging.getLogger("jobqueue")

# The flush thread waits this long after the first batched record, so one commit carries many.
_FLUSH_LINGER = 0.002
# Records waiting for LMDB beyond which new jobs wait: bounds memory if LMDB is slow.
MAX_PENDING = 50_000
_RETRY_AFTER_ERROR = 1.0


class _Pending:
    """One job's latest unwritten state. ``new``: its ``order`` entry is not written yet."""

    __slots__ = ("record", "new")

    def __init__(self, record: JobRecord, new: bool) -> None:
        self.record = record
        self.new = new


class Writer:
    """Batches records for LMDB and writes them on its own thread, ``jobqueue-final-store-flush``.

    ``cond`` is the store's one lock: it guards the fields below and the log, which the store
    appends to. Lock order: the queue's mutex, then ``cond``, then the map gate's.
    """

    def __init__(
        self, path: str, tables: Tables, gate: MapGate, log: WriteAheadLog, retention: int
    ) -> None:
        self._path = path
        self._tables = tables
        self._gate = gate
        self._retention = retention
        with tables.env.begin() as txn:
            self.last_seq = tables.meta_int(txn, b"seq")  # the highest arrival seq written
            self._last_fseq = Tables.last_key(txn, tables.done)
            self._done_count = txn.stat(tables.done)["entries"]
        # Conditions on cond: the flush thread waits for records, flush() and close() for a
        # commit, producers for room (behind_locked). On the same lock, sync_done: producers
        # wait for a group sync of the log (the store's). Apart, so that the end of each
        # sync, thousands a second, wakes only the producers it concerns.
        lock = threading.Lock()
        self.cond = threading.Condition(lock)
        self.sync_done = threading.Condition(lock)
        self.log = log
        self.unsettled: dict[int, int] = {}  # new jobs logged but not pending: ticket -> start
        # A group sync of the log is running (fsync=True, set by the store): a batch waits
        # for it, so that LMDB's own disk flush does not compete with the log's, which
        # producers wait for. Under a steady stream of syncs, batches grow instead. The
        # flush thread looks again each _FLUSH_LINGER, not at the end of every sync.
        self.syncing = False
        self.told_seq = self.last_seq  # the highest arrival seq of a new job logged
        self._pending: dict[str, _Pending] = {}
        self._events: deque[JobRecord] = deque()  # moves of held jobs, not yet in _pending
        self._writing: dict[str, _Pending] = {}  # the batch being committed
        self._quarantine: dict[str, tuple[bytes, bytes | None]] = {}  # name -> raw, order key
        self._swaps = 0  # batches taken by the flush thread
        self._committed_swap = 0  # the last batch LMDB has
        self._failed_swap = 0  # the last batch LMDB refused (it went back to pending)
        self._flush_wanted = False
        self._idle = False
        self.closing = False
        self.closed = False
        self._thread = threading.Thread(
            target=self._loop, name="jobqueue-final-store-flush", daemon=True
        )
        self._thread.start()

    # -- what is told -----------------------------------------------------------------------

    def logged_locked(self, records: Sequence[JobRecord]) -> None:
        """New jobs, now in the log: write them with the next batch."""
        pending = self._pending
        for record in records:
            pending[record.id] = _Pending(record, True)
            if record.seq > self.told_seq:
                self.told_seq = record.seq
        self._wake_locked()

    def logged_move_locked(self, record: JobRecord) -> None:
        """A move of a held job that is in the log already (a cancel): write it with the
        next batch, after every move of the job told before it."""
        self._drain_locked()
        previous = self._pending.get(record.id)
        if previous is None:
            self._pending[record.id] = _Pending(record, False)
        else:  # (its order entry may still be unwritten: ``new`` stays as it is)
            previous.record = record
        self._wake_locked()

    def event(self, record: JobRecord) -> None:
        """A held job moved. No lock: a deque append is atomic, and the queue's mutex orders
        these calls; they reach _pending, in order, under the lock (_drain_locked)."""
        self._events.append(record)
        if self._idle:  # the flush thread sets it before it looks: no wake-up is lost
            with self.cond:
                self._wake_locked()

    def set_aside_locked(self, name: str, raw: bytes, key: bytes | None) -> None:
        """Move an unreadable record to the ``corrupt`` table with the next batch."""
        self._quarantine[name] = (raw, key)
        self._wake_locked()

    def _wake_locked(self) -> None:
        if self._idle:
            self._idle = False
            self.cond.notify_all()

    def _drain_locked(self) -> None:
        events, pending = self._events, self._pending
        if self.closed:
            # Handlers that outlived close(): their jobs stay as last written and run again
            # at the next start (at least once).
            events.clear()
            return
        while events:
            record = events.popleft()
            previous = pending.get(record.id)
            if previous is None:
                pending[record.id] = _Pending(record, False)
            elif previous.record.seq <= record.seq:  # else a new life, already told
                previous.record = record

    def latest_locked(self, job_id: str) -> JobRecord | None:
        """A job's state told but maybe not in LMDB yet, or None."""
        self._drain_locked()
        pending = self._pending.get(job_id) or self._writing.get(job_id)
        return None if pending is None else pending.record

    def behind_locked(self) -> bool:
        """Whether so much waits for LMDB that producers should wait too."""
        return len(self._pending) + len(self._events) >= MAX_PENDING

    # -- writing ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything told so far to LMDB. Blocks until committed; raises StoreError
        if LMDB refuses it."""
        with self.cond:
            self._drain_locked()
            if not self._pending and not self._writing:
                return
            target = self._swaps + 1 if self._pending else self._swaps
            self._flush_wanted = True
            self.cond.notify_all()
            while self._committed_swap < target:
                if self._failed_swap >= target or self.closed:
                    raise StoreError(f"cannot write to store {self._path!r}; see the log")
                self.cond.wait()

    def _loop(self) -> None:
        cond = self.cond
        while True:
            with cond:
                while True:
                    self._idle = True  # first, then look (see event)
                    if (self._pending or self._events or self._quarantine or self.closing
                            or self._flush_wanted):
                        break
                    cond.wait()
                self._idle = False
                urgent = self.closing or self._flush_wanted
                if not urgent and len(self._pending) + len(self._events) < MAX_PENDING // 2:
                    cond.wait(_FLUSH_LINGER)  # let more records join this transaction
                    while self.syncing and not (self.closing or self._flush_wanted
                                                or self.behind_locked()):
                        cond.wait(_FLUSH_LINGER)
                self._flush_wanted = False
                self._drain_locked()
                closing = self.closing
                batch, self._pending = self._pending, {}
                self._writing = batch  # still the latest state until LMDB has it
                quarantine, self._quarantine = self._quarantine, {}
                # Every logged frame before this is in the batch or an earlier one.
                checkpoint = min(self.unsettled.values(), default=self.log.position())
                self._swaps += 1
                swap = self._swaps
                cond.notify_all()  # producers held back by a full batch may go on
            error = self._write(batch, quarantine, checkpoint)
            retired = []
            with cond:
                if error is None:
                    retired = self.log.retire_through(checkpoint)
                    if not retired:
                        self._writing = {}
                        self._committed_swap = swap
                else:
                    self._writing = {}
                    self._failed_swap = swap
                    for job_id, pending in batch.items():
                        newer = self._pending.get(job_id)
                        if newer is None:
                            self._pending[job_id] = pending
                        elif pending.new:
                            newer.new = True
                    self._quarantine.update(quarantine)
                cond.notify_all()
            if retired:
                WriteAheadLog.discard(retired)
                with cond:  # flush() returns once the log holds nothing LMDB has
                    self._writing = {}
                    self._committed_swap = swap
                    cond.notify_all()
            if closing:
                return  # close() judges the outcome
            if error is not None:
                logger.error("%s; will try again", error)
                with cond:
                    if not self.closing:
                        cond.wait(_RETRY_AFTER_ERROR)

    def _write(
        self,
        batch: dict[str, _Pending],
        quarantine: dict[str, tuple[bytes, bytes | None]],
        checkpoint: int,
    ) -> StoreError | None:
        """Write a batch in one transaction, growing the map as needed; the error, if any."""
        tables = self._tables
        env = tables.env
        try:
            while True:
                try:
                    with env.begin(write=True) as txn:
                        counters = (self._last_fseq, self._done_count, self.last_seq)
                        pairs = [(pending.record, pending.new) for pending in batch.values()]
                        counters = tables.write_batch(txn, pairs, counters, self._retention)
                        for name, (raw, key) in quarantine.items():
                            txn.put(name.encode(), raw, db=tables.corrupt)
                            if key is not None:
                                txn.delete(name.encode(), db=tables.jobs)
                                txn.delete(key, db=tables.order)
                        tables.put_meta_int(txn, b"checkpoint", checkpoint)
                    self._last_fseq, self._done_count, self.last_seq = counters
                    return None
                except lmdb.MapFullError:
                    size = self._gate.resize(env)
                    logger.info("store %r was full; its map is now %d bytes", self._path, size)
                    tables.note_map_size()
        except lmdb.Error as exc:
            note = disk_full_note(self._path, exc)
            return StoreError(f"cannot write to store {self._path!r}: {exc}{note}")
        except BaseException as exc:  # keep the protocol: waiters must wake
            return StoreError(f"cannot write to store {self._path!r}: {exc!r}")

    def stop(self, timeout: float | None) -> bool:
        """Write what is pending and stop the flush thread, waiting up to ``timeout`` seconds
        for the last commit. True once the thread has ended (now or before); False if a
        commit still runs: the store must stay open, and stop() be called again later."""
        with self.cond:
            if self.closed:
                return True
            self.closing = True
            self.cond.notify_all()
        if self._thread is threading.current_thread():
            return False  # a log handler the flush thread ran called close(): it cannot wait
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        return True

    def settle_locked(self, ticket_number: int) -> None:
        """A commit's new jobs are pending, or revoked: the log may retire their frames."""
        del self.unsettled[ticket_number]
        if self.closing:
            self.cond.notify_all()  # the store's close() waits for commits to settle

    def everything_written_locked(self) -> bool:
        """Whether LMDB holds everything told (after stop(): nothing more will be)."""
        return not (self._pending or self._events or self._quarantine or self.unsettled)
