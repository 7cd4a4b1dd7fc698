"""The LMDB store at work: the Store contract on the files of :mod:`._lmdb_files`.

Parts: new jobs go to the write-ahead log (:mod:`._wal`) here, and are then as durable as the
``fsync`` level promises; the writer (:mod:`._lmdb_writer`) moves everything told into LMDB in
batches; the backlog (:mod:`._lmdb_backlog`) hands out, by claim, the jobs LMDB held when the
store opened, after a dead owner's log was moved in (:mod:`._lmdb_replay`).

Durability: ``fsync=False`` opens LMDB with ``sync=False, metasync=False`` and never flushes the
log: a logged job or a commit is in the OS page cache, which survives the process being killed
but not the machine losing power. ``fsync=True`` keeps LMDB's defaults (every commit flushed)
and flushes the log before ``commit()`` returns, one ``fdatasync`` per group of concurrent
callers; if the flush fails, the callers' frames are revoked and they raise. LMDB's
``writemap`` stays off: with it, a full disk would kill the process with SIGBUS instead of
failing a write.

New jobs, by the Store protocol: ``prepare`` encodes them, without the queue's mutex; ``add``
appends them to the log under it. It leaves the rest to ``commit``, outside the mutex, when
the log must be flushed (fsync), when the backlog may hold one of the ids (a read of LMDB), or
when LMDB is far behind (producers wait).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Sequence

import lmdb

from jobqueue._priority import Priority
from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final._states import LIVE, Status
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.lmdb.attempt_ring import RING_FILE, StartRing, replay_starts
from jobqueue.final.stores.lmdb.backlog import Backlog
from jobqueue.final.stores.lmdb.directory import (
    check_directory,
    disk_full_note,
    give_up_ownership,
    take_ownership,
)
from jobqueue.final.stores.lmdb.record_format import RecordError, decode, encode, order_key
from jobqueue.final.stores.lmdb.replay import replay_log
from jobqueue.final.stores.lmdb.tables import MapGate, Tables, id_key
from jobqueue.final.stores.lmdb.wal import FIRST_SEGMENT_SIZE, WriteAheadLog, frame
from jobqueue.final.stores.lmdb.writer import Writer

__all__ = ["LmdbStore"]

logger = logging.getLogger("jobqueue")

_SYNC_FAILURES_KEPT = 16


class _Ticket:
    """New jobs, encoded by ``prepare()``; ``add()`` returns it when it could not take them
    at once, and ``commit()`` finishes the work."""

    __slots__ = ("records", "frames", "number", "start")

    def __init__(self, records: Sequence[JobRecord], frames: bytes) -> None:
        self.records = records
        self.frames = frames
        self.number = 0  # its place among the commits that appended to the log
        self.start = 0  # the log position of its first frame


class LmdbStore:
    """The Store contract on LMDB. Owns the store directory until closed.

    Raises ``StoreError`` naming the path if it cannot be used, ``StoreLocked`` if another
    queue owns it.
    """

    persistent = True
    shared = None  # one process's

    def __init__(self, path: str, *, fsync: bool = False, retention: int = 100_000) -> None:
        self.path = path
        self._fsync = fsync
        check_directory(path, create=True)
        self._lock_fd: int | None = take_ownership(path)
        self._tables: Tables | None = None
        try:
            self._tables = tables = Tables(path, create=True, sync=fsync)
            first_segment = replay_log(tables)
            replay_starts(tables)
            tables.note_map_size()
            self._starts = StartRing(path)
            log = WriteAheadLog(path, first_segment)
        except lmdb.Error as exc:
            self._release()
            note = disk_full_note(path, exc)
            raise StoreError(f"cannot open store {path!r}: {exc}{note}") from None
        except OSError as exc:
            self._release()
            note = disk_full_note(path, exc)
            if note:
                note += f"; a new store needs {FIRST_SEGMENT_SIZE} bytes for its log"
            raise StoreError(f"cannot open the log of store {path!r}: {exc}{note}") from None
        except BaseException:
            self._release()
            raise
        # In the ring before the handler runs, not only in the next batch: if the handler
        # kills the process, the next start finds the attempt and counts it as failed.
        self.running = self._starts.record
        self.ran = self._starts.finish
        self._closing = False  # close() runs (its logging may call it again)
        self._gate = MapGate()
        self._writer = writer = Writer(path, tables, self._gate, log, retention)
        self._backlog = Backlog(path, tables, self._gate, writer.last_seq, self._live_record)
        # Group sync, guarded by the writer's lock (the store's one lock).
        self._appended = 0  # commits that appended to the log
        self._synced = 0  # with fsync, every one up to this has been flushed
        self._sync_failures: list[tuple[int, int, StoreError]] = []
        # Cancels the log could not take, by id, for confirm() to report (single dict
        # operations: set under the queue's mutex, taken by the cancelling caller).
        self._unlogged: dict[str, StoreError] = {}

    def _release(self) -> None:
        starts: StartRing | None = getattr(self, "_starts", None)  # unset if opening failed
        if starts is not None:
            starts.close()
        if self._tables is not None:
            self._tables.close()
        if self._lock_fd is not None:
            give_up_ownership(self._lock_fd)
            self._lock_fd = None

    def last_seq(self) -> int:
        with self._writer.cond:
            return self._writer.told_seq

    # -- new jobs ---------------------------------------------------------------------------

    def prepare(self, records: Sequence[JobRecord]) -> _Ticket:
        return _Ticket(records, b"".join([frame(encode(record)) for record in records]))

    def add(self, prepared: object) -> _Ticket | None:
        assert isinstance(prepared, _Ticket)
        writer = self._writer
        with writer.cond:
            if writer.closing:
                raise StoreError(f"store {self.path!r} is closed")
            if self._fsync or writer.behind_locked() or self._backlog.may_hold(prepared.records):
                return prepared  # commit() finishes, without the queue's mutex
            try:
                writer.log.append(prepared.frames)
            except OSError as exc:
                note = disk_full_note(self.path, exc)
                raise StoreError(f"cannot write to store {self.path!r}: {exc}{note}") from None
            writer.logged_locked(prepared.records)
            return None

    def commit(self, ticket: object) -> None:
        assert isinstance(ticket, _Ticket)
        writer = self._writer
        if self._backlog.may_hold(ticket.records):
            for record in ticket.records:
                stored = self._latest(record.id)
                if stored is not None and stored.status in LIVE and self._backlog.includes(stored):
                    raise DuplicateJob(
                        f"job {record.id!r} is already {stored.status.value} in the store"
                    )
        with writer.cond:
            if writer.closing:
                raise StoreError(f"store {self.path!r} is closed")
            try:
                ticket.start = writer.log.append(ticket.frames)
            except OSError as exc:
                note = disk_full_note(self.path, exc)
                raise StoreError(f"cannot write to store {self.path!r}: {exc}{note}") from None
            self._appended += 1
            ticket.number = self._appended
            writer.unsettled[ticket.number] = ticket.start  # holds the checkpoint back
            if self._fsync:
                try:
                    self._flush_log_locked(ticket)
                except StoreError:
                    # enqueue() will raise: leave no trace, in memory or at the next start.
                    writer.log.revoke(ticket.start, len(ticket.frames))
                    writer.settle_locked(ticket.number)
                    raise
            self._settle_locked(ticket)

    def _flush_log_locked(self, ticket: _Ticket) -> None:
        """Flush the log through ``ticket`` (fsync): one caller flushes for a group, the
        others wait for it. Call with the writer's lock held, which is released during the
        flush; raises StoreError if the flush that covered the ticket failed.

        Each caller takes the lock once before the flush and once after: a group's callers
        all wake together, and every extra turn at the lock is one more hand-off of the
        interpreter among them.
        """
        writer = self._writer
        turn = self._sync_turn_locked(ticket)
        if turn is not None:
            first, last, descriptors = turn
            error = None
            writer.cond.release()
            try:
                for descriptor in descriptors:
                    os.fdatasync(descriptor)
            except OSError as exc:
                note = disk_full_note(self.path, exc)
                error = StoreError(f"cannot flush store {self.path!r} to disk: {exc}{note}")
            finally:
                for descriptor in descriptors:
                    os.close(descriptor)
                writer.cond.acquire()
            writer.syncing = False
            self._synced = last
            if error is not None:
                failures = self._sync_failures[-(_SYNC_FAILURES_KEPT - 1):]
                self._sync_failures = [*failures, (first, last, error)]
            writer.sync_done.notify_all()
        for first, last, error in self._sync_failures:
            if first <= ticket.number <= last:
                raise error

    def _sync_turn_locked(self, ticket: _Ticket) -> tuple[int, int, list[int]] | None:
        """Wait until the log is flushed through ``ticket`` by another caller (None), or
        until no flush runs: then this caller flushes everything appended so far, and gets
        the tickets that covers and the descriptors to flush."""
        writer = self._writer
        while self._synced < ticket.number:
            if not writer.syncing:
                writer.syncing = True
                return self._synced + 1, self._appended, writer.log.take_unsynced()
            writer.sync_done.wait()
        return None

    def _settle_locked(self, ticket: _Ticket) -> None:
        """The ticket's jobs are in the log (and flushed, with fsync): hand them to the
        writer, and hold the producer while LMDB is too far behind."""
        writer = self._writer
        writer.settle_locked(ticket.number)
        writer.logged_locked(ticket.records)
        while writer.behind_locked() and not writer.closing:
            writer.cond.wait()  # LMDB is behind: hold producers, keep memory bounded

    # -- moves of held jobs: batched --------------------------------------------------------

    def started(self, record: JobRecord) -> None:
        self._writer.event(record)

    retrying = started

    def finished(self, record: JobRecord) -> None:
        self._backlog.release(record.id)
        if record.status is Status.CANCELLED:
            self._log_cancel(record)
        else:
            self._writer.event(record)

    def released(self, record: JobRecord) -> None:
        self._backlog.release(record.id)
        self._writer.event(record)

    def _log_cancel(self, record: JobRecord) -> None:
        """A cancel goes into the log, as a new job does, not only into the next batch:
        once cancel() says True, a crash must not run the job (the next start replays the
        cancel over the job). Under the queue's mutex, in the middle of its move: no flush
        here (``confirm`` flushes it with fsync, after the mutex), and nothing raised. A
        cancel the log cannot take (a full disk) goes with the next batch; ``confirm`` says
        so."""
        writer = self._writer
        with writer.cond:
            if not writer.closing:
                try:
                    writer.log.append(frame(encode(record)))
                except OSError as exc:
                    note = disk_full_note(self.path, exc)
                    self._unlogged[record.id] = StoreError(
                        f"job {record.id!r} is cancelled, but the cancel could not be written "
                        f"to the log of store {self.path!r} ({exc}{note}): a crash before "
                        "the next batch reaches LMDB would run the job")
                else:
                    self._appended += 1
                    writer.logged_move_locked(record)
                    return
        writer.event(record)

    def confirm(self, job_id: str, timeout: float | None = None) -> bool:
        """A cancel is in the log already (see ``_log_cancel``); with fsync, flush the log
        through it, one flush per group of callers. Raises StoreError if the log could not
        take it, or the flush failed."""
        unlogged = self._unlogged.pop(job_id, None)
        if unlogged is not None:
            raise unlogged
        if not self._fsync:
            return True
        with self._writer.cond:
            mark = _Ticket((), b"")
            mark.number = self._appended
            self._flush_log_locked(mark)
        return True

    # -- reading ----------------------------------------------------------------------------

    def _latest(self, job_id: str) -> JobRecord | None:
        """The newest state of a job: told and not yet written, or in LMDB."""
        writer = self._writer
        with writer.cond:
            if writer.closed:
                raise StoreError(f"store {self.path!r} is closed")
            told = writer.latest_locked(job_id)
        if told is not None:
            return told
        key = id_key(job_id)
        if key is None:
            return None
        tables = self._tables
        assert tables is not None
        with self._gate.reading(tables.env) as txn:
            raw = txn.get(key, db=tables.jobs)
        if raw is None:
            return None
        try:
            return decode(raw)[0]
        except RecordError as exc:
            logger.error("stored record of job %r cannot be read: %s", job_id, exc)
            return None

    get = _latest

    def dead_letters(self) -> list[JobRecord]:
        self._writer.flush()
        tables = self._tables
        assert tables is not None
        with self._gate.reading(tables.env) as txn:
            return tables.dead_letters(txn)

    def claim(
        self, priority: Priority, limit: int, kinds: Collection[str] | None
    ) -> list[JobRecord]:
        return self._backlog.claim(priority, limit, kinds)

    def _live_record(self, key: bytes, job_id: bytes, raw: bytes | None) -> JobRecord | None:
        """The live job an ``order`` entry points to, or None if the entry is stale."""
        if raw is None:
            return None
        writer = self._writer
        try:
            record, _ = decode(raw)
        except RecordError as exc:
            logger.error(
                "stored record of job %r cannot be read (%s); set aside in the 'corrupt' "
                "table", job_id, exc,
            )
            with writer.cond:
                writer.set_aside_locked(job_id.decode("utf-8", "replace"), raw, key)
            return None
        with writer.cond:
            record = writer.latest_locked(record.id) or record
        if record.status not in LIVE or order_key(record.priority, record.seq) != key:
            return None  # finished, or enqueued again since: the entry is stale
        return record

    def flush(self) -> None:
        """Write every record told so far to LMDB. Blocks until committed."""
        self._writer.flush()

    def close(self, timeout: float | None = None) -> None:
        """Write what is pending and give the store up, waiting up to ``timeout`` seconds for
        the last LMDB commit and for enqueues between their log append and its outcome (a
        group sync). One still running then keeps the store until it ends: call close()
        again to give it up."""
        if self._lock_fd is None or self._closing:
            return  # given up already; or a log handler called close() while it closes
        self._closing = True
        try:
            self._close(timeout)
        finally:
            self._closing = False

    def _close(self, timeout: float | None) -> None:
        endtime = None if timeout is None else time.monotonic() + timeout
        writer = self._writer
        stopped = writer.stop(timeout)
        with writer.cond:
            while stopped and writer.unsettled:
                remaining = None if endtime is None else endtime - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                writer.cond.wait(remaining)
            still_running = not stopped or bool(writer.unsettled)
            if not still_running:
                clean = writer.everything_written_locked()
                segments = writer.log.close()
        if still_running:  # logged without the lock: a log handler may call close() again
            logger.warning(
                "store %r: a commit is still running; the log keeps its jobs, and the "
                "store stays owned until it ends and close() is called again", self.path,
            )
            return
        if clean:
            WriteAheadLog.remove([*segments, os.path.join(self.path, RING_FILE)])
        else:
            logger.error("store %r: not everything reached LMDB at close; the log keeps the "
                         "new jobs, and jobs whose outcome was lost run again", self.path)
        self._release()
