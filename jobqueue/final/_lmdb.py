"""The LMDB store: jobs survive a crash, logged first and written to LMDB in batches.

Layout, in one LMDB environment directory (``persist_path``):

- ``jobs``: job id -> record (:mod:`jobqueue.final._records`), live and finished alike;
- ``order``: priority byte + arrival seq -> job id, for live jobs: recovery walks it in
  priority and arrival order without loading everything;
- ``done``: finish seq -> job id, oldest first, to prune finished jobs beyond the retention;
- ``dead``: finish seq -> job id, for FAILED jobs (dead letters);
- ``corrupt``: job id -> raw bytes of records that could not be decoded, set aside;
- ``meta``: the store's magic, format version and highest arrival seq (never reused).

Writes: :meth:`LmdbStore.add` appends the new jobs to a write-ahead log mapped into memory
(:mod:`jobqueue.final._wal`) and returns: they are now as durable as the ``fsync`` level
promises. A flush thread moves everything pending (new jobs and the batched records of jobs
starting, finishing and waiting for retries, coalesced by id) into LMDB in one transaction
every few milliseconds, then deletes the log segments LMDB now covers. Opening a store replays
whatever log the last owner left, skipping jobs LMDB already has. Measured with 4 workers and
one producer, one LMDB transaction per ``enqueue()`` ran about 21,000 jobs/s and the log
about 83,000 (py-lmdb releases the GIL on every call; a memory copy does not).

Durability: ``fsync=False`` opens LMDB with ``sync=False, metasync=False``, and the log is
never flushed: a logged job or a commit is in the OS page cache, which survives the process
being killed but not the machine losing power. ``fsync=True`` keeps LMDB's defaults (every
commit flushed) and flushes the log before ``add()`` returns, one ``fdatasync`` per group of
concurrent callers. LMDB's ``writemap`` stays off: with it, a full disk would kill the process
with SIGBUS instead of failing a write (the log avoids that by preallocating its segments).

Ownership: an exclusive ``flock`` on ``owner.lock`` (holding the owner's pid) lets one queue at
a time own the store, in this process or another; readers need no lock (LMDB readers never
block its writer).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TypeVar

import lmdb

from jobqueue._priority import Priority
from jobqueue.errors import StoreError, StoreLocked
from jobqueue.final._model import Status
from jobqueue.final._records import (
    FORMAT_VERSION,
    RecordError,
    decode,
    encode,
    order_key,
    seq_key,
)
from jobqueue.final._store import JobRecord
from jobqueue.final._wal import WriteAheadLog, frame, read_segment, segment_paths

__all__ = ["LmdbStore", "StoreReader", "owner_pid"]

logger = logging.getLogger("jobqueue")
_T = TypeVar("_T")

MAGIC = b"jobqueue-store"
LOCK_FILE = "owner.lock"
_INITIAL_MAP_SIZE = 64 << 20
_MAX_DBS = 8
_RECOVER_CHUNK = 512
_LIVE = (Status.QUEUED, Status.PROCESSING, Status.RETRYING)
# The flush thread waits this long after the first batched record, so one commit carries many.
_FLUSH_LINGER = 0.002
# Records waiting for LMDB before add() holds producers back: bounds memory if LMDB is slow.
_MAX_PENDING = 50_000
_RETRY_AFTER_ERROR = 1.0


def _check_directory(path: str, *, create: bool) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise StoreError(f"store path {path!r} is not a directory")
    if not os.path.exists(path):
        if not create:
            raise StoreError(f"store path {path!r} does not exist")
        try:
            os.makedirs(path)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {path!r}: {exc}") from None
    if create and not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(f"store directory {path!r} is not writable")
    names = set(os.listdir(path))
    if names and "data.mdb" not in names:
        raise StoreError(f"{path!r} is not a jobqueue store: it holds other files")


def _check_meta(env: lmdb.Environment, path: str, *, initialise: bool) -> None:
    """Check the magic and format; write them into a new, empty environment."""
    if env.stat()["entries"] == 0:
        if not initialise:
            raise StoreError(f"{path!r} is not a jobqueue store: it is empty")
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"magic", MAGIC, db=meta)
            txn.put(b"format", str(FORMAT_VERSION).encode(), db=meta)
        return
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            magic = txn.get(b"magic", db=meta)
            version = int(txn.get(b"format", b"0", db=meta))
    except (lmdb.Error, ValueError):
        magic = None
    if magic != MAGIC:
        raise StoreError(f"{path!r} is not a jobqueue store")
    if version > FORMAT_VERSION:
        raise StoreError(
            f"store {path!r} was written by a newer jobqueue (format {version}; "
            f"this version reads format {FORMAT_VERSION})"
        )


def owner_pid(path: str) -> int | None:
    """Return the pid of the process owning the store at ``path``, or None if it is free.

    Reads ``/proc/locks`` so that asking never takes the lock (which could make an owner that
    is starting up fail); elsewhere, falls back to the pid file and a liveness check.
    """
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        inode = os.stat(lock_path).st_ino
    except FileNotFoundError:
        return None
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:567 0 EOF"
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                    return int(fields[4])
        return None
    except OSError:
        pass
    try:
        with open(lock_path) as f:
            pid = int(f.read().strip() or 0)
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _take_ownership(path: str) -> int:
    """Lock the store for this process and return the lock file's descriptor."""
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot open {lock_path!r}: {exc}") from None
    try:
        # flock, not fcntl locks: two opens in one process conflict, so a second queue in
        # the same process is refused too.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(f"cannot lock {lock_path!r}: {exc}") from None
        raise StoreLocked(path, owner_pid(path)) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class _Pending:
    """One job's latest unwritten state. ``new``: its ``order`` entry is not written yet."""

    __slots__ = ("record", "new")

    def __init__(self, record: JobRecord, new: bool) -> None:
        self.record = record
        self.new = new


def _newer_add(existing: bytes | None, record: JobRecord) -> bool:
    """Whether a logged add must still be applied over what LMDB holds for that id."""
    if existing is None:
        return True
    try:
        stored, _ = decode(existing)
    except RecordError:
        return True
    return stored.seq < record.seq  # equal: applied already, and maybe run since


class LmdbStore:
    """The :class:`~jobqueue.final._store.Store` on LMDB. Owns the store until closed.

    Raises ``StoreError`` naming the path if it cannot be used, ``StoreLocked`` if another
    queue owns it.
    """

    durable = True

    def __init__(self, path: str, *, fsync: bool = False, retention: int = 100_000) -> None:
        self.path = path
        self._fsync = fsync
        self._retention = retention
        self._lock_fd: int | None = None
        _check_directory(path, create=True)
        self._lock_fd = _take_ownership(path)
        try:
            self._env = lmdb.open(
                path,
                map_size=_INITIAL_MAP_SIZE,
                max_dbs=_MAX_DBS,
                sync=fsync,
                metasync=fsync,
                writemap=False,
            )
            _check_meta(self._env, path, initialise=True)
            self._meta = self._env.open_db(b"meta")
            self._jobs = self._env.open_db(b"jobs")
            self._order = self._env.open_db(b"order")
            self._done = self._env.open_db(b"done")
            self._dead = self._env.open_db(b"dead")
            self._corrupt = self._env.open_db(b"corrupt")
            with self._env.begin() as txn:
                self._done_count = txn.stat(self._done)["entries"]
                self._last_fseq = self._last_key(txn, self._done)
                self._last_seq = int(txn.get(b"seq", b"0", db=self._meta))
            self._replay_log()
            self._note_map_size()
            self._wal = WriteAheadLog(path, fsync=fsync)
        except lmdb.Error as exc:
            self._release()
            raise StoreError(f"cannot open store {path!r}: {exc}") from None
        except OSError as exc:
            self._release()
            raise StoreError(f"cannot open the log of store {path!r}: {exc}") from None
        except BaseException:
            self._release()
            raise

        # _cond's lock guards every field below and the log. add() waits on it for room and
        # for a group sync, the flush thread for records to write, flush() for a commit.
        # Lock order: the queue's mutex, then this lock; the store never calls the queue.
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[str, _Pending] = {}
        self._writing: dict[str, _Pending] = {}  # the batch being committed
        self._quarantine: dict[str, tuple[bytes, bytes | None]] = {}
        self._committing = False
        self._commits = 0
        self._appended = 0  # add() calls written to the log
        self._synced = 0  # with fsync, every add() up to this one is on the disk
        self._syncing = False
        self._failures: list[tuple[int, int, StoreError]] = []  # adds whose sync failed
        self._closing = False
        self._closed = False
        self._resizing = False  # the flush thread is growing the map: reads must wait
        self._flusher_waiting = False
        self._flusher = threading.Thread(
            target=self._flush_loop, name="jobqueue-final-store-flush", daemon=True
        )
        self._flusher.start()

    @staticmethod
    def _last_key(txn: lmdb.Transaction, db: object) -> int:
        cursor = txn.cursor(db=db)
        return int.from_bytes(cursor.key(), "big") if cursor.last() else 0

    def _replay_log(self) -> None:
        """Move jobs the last owner logged but never wrote to LMDB, then drop the log."""
        segments = segment_paths(self.path)
        if not segments:
            return
        batch: dict[str, _Pending] = {}
        quarantine: dict[str, tuple[bytes, bytes | None]] = {}
        with self._env.begin() as txn:
            for segment in segments:
                for number, raw in enumerate(read_segment(segment)):
                    try:
                        record, _ = decode(raw)
                    except RecordError as exc:
                        name = f"{os.path.basename(segment)}#{number}"
                        logger.error("logged record %s cannot be read (%s); set aside in "
                                     "the 'corrupt' table", name, exc)
                        quarantine[name] = (raw, None)
                        continue
                    if _newer_add(txn.get(record.id.encode(), db=self._jobs), record):
                        batch[record.id] = _Pending(record, True)
        logger.info("store %r: recovered %d logged jobs", self.path, len(batch))
        self._write(batch, quarantine)
        WriteAheadLog.remove(segments)

    def _note_map_size(self) -> None:
        """Record the map size where a read-only reader can see it (LMDB does not say)."""
        with self._env.begin(write=True) as txn:
            txn.put(b"map_size", str(self._env.info()["map_size"]).encode(), db=self._meta)

    def _release(self) -> None:
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- the Store protocol ---------------------------------------------------------------

    def last_seq(self) -> int:
        return self._last_seq

    def add(self, records: Sequence[JobRecord]) -> None:
        frames = b"".join([frame(encode(record)) for record in records])
        with self._cond:
            while len(self._pending) >= _MAX_PENDING and not self._closing:
                self._cond.wait()  # LMDB is behind: hold producers, keep memory bounded
            if self._closing:
                raise StoreError(f"store {self.path!r} is closed")
            try:
                self._wal.append(frames)
            except OSError as exc:
                raise StoreError(f"cannot write to store {self.path!r}: {exc}") from None
            pending = self._pending
            for record in records:
                pending[record.id] = _Pending(record, True)
            if self._flusher_waiting:
                self._flusher_waiting = False
                self._cond.notify_all()
            self._appended += 1
            ticket = self._appended
            if not self._fsync:
                return  # in the page cache: survives the process, which is the promise
            while self._synced < ticket:
                if not self._syncing:
                    self._syncing = True
                    first, last = self._synced + 1, self._appended
                    descriptor = self._wal.sync_descriptor()
                    break
                self._cond.wait()
            else:
                self._raise_if_failed(ticket)
                return
        # Group sync: this caller flushes the log for every add written so far.
        error = None
        try:
            os.fdatasync(descriptor)
        except OSError as exc:
            error = StoreError(f"cannot flush store {self.path!r} to disk: {exc}")
        with self._cond:
            self._syncing = False
            self._synced = last
            if error is not None:
                self._failures = [*self._failures[-15:], (first, last, error)]
            self._cond.notify_all()
            self._raise_if_failed(ticket)

    def _raise_if_failed(self, ticket: int) -> None:
        for first, last, error in self._failures:
            if first <= ticket <= last:
                raise error

    def update(self, record: JobRecord) -> None:
        self._batch(record)

    def finish(self, record: JobRecord) -> None:
        self._batch(record)

    def _batch(self, record: JobRecord) -> None:
        with self._cond:
            if self._closed:
                # A handler that outlived close(): its job stays as last stored and runs
                # again at the next start (at least once).
                return
            previous = self._pending.get(record.id)
            self._pending[record.id] = _Pending(record, previous is not None and previous.new)
            if self._flusher_waiting:
                self._flusher_waiting = False
                self._cond.notify_all()

    def get(self, job_id: str) -> JobRecord | None:
        with self._cond:
            if self._closed:
                raise StoreError(f"store {self.path!r} is closed")
            pending = self._pending.get(job_id) or self._writing.get(job_id)
        if pending is not None:
            return pending.record
        try:
            key = job_id.encode()
        except UnicodeEncodeError:
            return None
        raw = self._read(lambda txn: txn.get(key, db=self._jobs))
        if raw is None:
            return None
        try:
            return decode(raw)[0]
        except RecordError as exc:
            logger.error("stored record of job %r cannot be read: %s", job_id, exc)
            return None

    def dead_letters(self) -> list[JobRecord]:
        self.flush()
        return self._read(self._read_dead_letters)

    def _read_dead_letters(self, txn: lmdb.Transaction) -> list[JobRecord]:
        found = []
        for fseq_key, job_id in txn.cursor(db=self._dead):
            raw = txn.get(job_id, db=self._jobs)
            if raw is None:
                continue
            try:
                record, fseq = decode(raw)
            except RecordError:
                continue
            if record.status is Status.FAILED and seq_key(fseq) == fseq_key:
                found.append(record)
        return found

    def recover(self, priority: Priority, after_seq: int) -> Iterator[JobRecord]:
        start = order_key(priority, after_seq + 1)
        while True:
            # Short read transactions, so a long recovery does not pin old pages.
            chunk = self._read(partial(self._read_order_chunk, priority=priority, start=start))
            if not chunk:
                return
            for key, job_id, raw in chunk:
                record = self._live_record(key, job_id, raw)
                if record is not None:
                    yield record
            if len(chunk) < _RECOVER_CHUNK:
                return
            start = chunk[-1][0] + b"\x00"

    def _read_order_chunk(
        self, txn: lmdb.Transaction, priority: int, start: bytes
    ) -> list[tuple[bytes, bytes, bytes | None]]:
        chunk: list[tuple[bytes, bytes, bytes | None]] = []
        cursor = txn.cursor(db=self._order)
        if cursor.set_range(start):
            for key, job_id in cursor:
                if key[0] != priority or len(chunk) >= _RECOVER_CHUNK:
                    break
                chunk.append((key, job_id, txn.get(job_id, db=self._jobs)))
        return chunk

    def _read(self, read: Callable[[lmdb.Transaction], _T]) -> _T:
        """Run ``read`` in a read transaction, waiting out a map resize if one gets in the way.

        py-lmdb fails a call that starts while another thread grows the map, rather than
        blocking; a resize is rare and short, so wait for it and try again.
        """
        for attempt in range(3):
            try:
                with self._env.begin() as txn:
                    return read(txn)
            except lmdb.Error as exc:
                if attempt == 2:
                    raise StoreError(f"cannot read store {self.path!r}: {exc}") from None
                with self._cond:
                    while self._resizing:
                        self._cond.wait()
        raise AssertionError("unreachable")

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
            return None
        with self._cond:
            pending = self._pending.get(record.id) or self._writing.get(record.id)
        if pending is not None:
            record = pending.record
        if record.status not in _LIVE or order_key(record.priority, record.seq) != key:
            return None  # finished, or enqueued again since: the entry is stale
        return record

    def flush(self) -> None:
        """Write every batched record to LMDB now. Blocks until committed."""
        self._commit()

    def close(self) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._flusher.join()
        try:
            self._commit()
            with self._cond:
                self._closed = True
                clean = not self._pending
                segments = self._wal.close()
            if clean:
                WriteAheadLog.remove(segments)
        except StoreError as exc:
            logger.error("%s; the log keeps the jobs for the next start", exc)
        finally:
            with self._cond:
                self._closed = True
            self._release()

    # -- repairs, for the command line: each one LMDB transaction, all or nothing ---------

    def requeue_failed(self, job_ids: Sequence[str] | None) -> list[str]:
        """Make FAILED jobs QUEUED again from attempt 0; ``None`` means every FAILED job.

        Raises ``KeyError`` for an unknown id and ``ValueError`` for one that is not FAILED,
        before anything is written.
        """
        self.flush()

        def requeue(txn: lmdb.Transaction) -> list[str]:
            if job_ids is None:
                chosen = self._read_dead_letters(txn)
            else:
                chosen = [self._stored(txn, job_id) for job_id in job_ids]
                for record in chosen:
                    if record.status is not Status.FAILED:
                        raise ValueError(f"job {record.id!r} is {record.status.value}, not failed")
            seq = self._last_seq
            for record in chosen:
                _, fseq = decode(txn.get(record.id.encode(), db=self._jobs))
                seq += 1
                fresh = record._replace(
                    status=Status.QUEUED, attempts=0, last_error=None, started_at=None,
                    finished_at=None, due_at=None, seq=seq,
                )
                txn.put(record.id.encode(), encode(fresh), db=self._jobs)
                txn.put(order_key(fresh.priority, seq), record.id.encode(), db=self._order)
                txn.delete(seq_key(fseq), db=self._dead)
            txn.put(b"seq", str(seq).encode(), db=self._meta)
            self._last_seq = seq
            return [record.id for record in chosen]

        return self._repair(requeue)

    def purge(self, job_ids: Sequence[str] | None, statuses: Sequence[Status] = ()) -> list[str]:
        """Delete jobs and their index entries: the given ids, or every job in ``statuses``.

        Raises ``KeyError`` for an unknown id before anything is written.
        """
        self.flush()

        def purge(txn: lmdb.Transaction) -> list[str]:
            if job_ids is not None:
                chosen = [self._stored(txn, job_id) for job_id in job_ids]
            else:
                chosen = []
                for _, raw in txn.cursor(db=self._jobs):
                    try:
                        record = decode(raw)[0]
                    except RecordError:
                        continue
                    if record.status in statuses:
                        chosen.append(record)
            for record in chosen:
                key = record.id.encode()
                _, fseq = decode(txn.get(key, db=self._jobs))
                txn.delete(key, db=self._jobs)
                if record.status in _LIVE:
                    txn.delete(order_key(record.priority, record.seq), db=self._order)
                elif txn.delete(seq_key(fseq), db=self._done):
                    self._done_count -= 1
                    txn.delete(seq_key(fseq), db=self._dead)
            return [record.id for record in chosen]

        return self._repair(purge)

    def _stored(self, txn: lmdb.Transaction, job_id: str) -> JobRecord:
        raw = txn.get(job_id.encode(), db=self._jobs)
        if raw is None:
            raise KeyError(job_id)
        return decode(raw)[0]

    def _repair(self, change: Callable[[lmdb.Transaction], list[str]]) -> list[str]:
        with self._cond:
            while self._committing:
                self._cond.wait()
            self._committing = True  # keeps the flush thread out
        try:
            with self._env.begin(write=True) as txn:  # an exception aborts it: all or nothing
                return change(txn)
        finally:
            with self._cond:
                self._committing = False
                self._cond.notify_all()

    # -- writing ---------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._closing and not self._pending and not self._quarantine:
                    self._flusher_waiting = True
                    cond.wait()
                if self._closing:
                    return  # close() writes what is left
                if len(self._pending) < _MAX_PENDING // 2:
                    cond.wait(_FLUSH_LINGER)  # let more records join this transaction
            try:
                self._commit()
            except StoreError as exc:
                logger.error("%s; will try again", exc)
                with cond:
                    if not self._closing:
                        cond.wait(_RETRY_AFTER_ERROR)

    def _commit(self) -> None:
        """Write everything pending in one LMDB transaction, then drop the log it came from."""
        with self._cond:
            while self._committing or self._syncing:
                self._cond.wait()
            if not self._pending and not self._quarantine:
                return
            self._committing = True
            batch, self._pending = self._pending, {}
            self._writing = batch  # still the latest state until LMDB has it
            quarantine, self._quarantine = self._quarantine, {}
            position = self._wal.position()  # every logged job before it is in this batch
            self._cond.notify_all()  # producers held back by a full batch may go on
        error: StoreError | None = None
        try:
            self._write(batch, quarantine)
        except lmdb.Error as exc:
            error = StoreError(f"cannot write to store {self.path!r}: {exc}")
        except BaseException as exc:  # keep the protocol: waiters must wake
            error = StoreError(f"cannot write to store {self.path!r}: {exc!r}")
        with self._cond:
            self._committing = False
            self._writing = {}
            self._commits += 1
            if error is not None:
                # Nothing is lost: the log still holds the adds, and the batched records
                # of accepted jobs go back in front of anything newer.
                for job_id, pending in batch.items():
                    newer = self._pending.get(job_id)
                    if newer is None:
                        self._pending[job_id] = pending
                    elif pending.new:
                        newer.new = True
                self._quarantine.update(quarantine)
            else:
                self._wal.retire_through(position)
            self._cond.notify_all()
        if error is not None:
            raise error

    def _write(
        self, batch: dict[str, _Pending], quarantine: dict[str, tuple[bytes, bytes | None]]
    ) -> None:
        while True:
            try:
                fseq, done_count, last_seq = self._write_once(batch, quarantine)
            except lmdb.MapFullError:
                new_size = self._env.info()["map_size"] * 2
                logger.info("store %r is full; growing its map to %d bytes", self.path, new_size)
                with self._cond:
                    self._resizing = True
                try:
                    self._env.set_mapsize(new_size)
                finally:
                    with self._cond:
                        self._resizing = False
                        self._cond.notify_all()
                self._note_map_size()
                continue
            self._last_fseq, self._done_count, self._last_seq = fseq, done_count, last_seq
            return

    def _write_once(
        self, batch: dict[str, _Pending], quarantine: dict[str, tuple[bytes, bytes | None]]
    ) -> tuple[int, int, int]:
        jobs, order, done, dead = self._jobs, self._order, self._done, self._dead
        fseq = self._last_fseq
        done_count = self._done_count
        last_seq = self._last_seq
        with self._env.begin(write=True) as txn:
            put = txn.put
            for pending in batch.values():
                record = pending.record
                job_id = record.id.encode()
                if pending.new and record.seq > last_seq:
                    last_seq = record.seq
                if record.status in _LIVE:
                    put(job_id, encode(record), db=jobs)
                    if pending.new:
                        put(order_key(record.priority, record.seq), job_id, db=order)
                    continue
                fseq += 1
                put(job_id, encode(record, fseq), db=jobs)
                if not pending.new:
                    txn.delete(order_key(record.priority, record.seq), db=order)
                key = seq_key(fseq)
                put(key, job_id, db=done)
                done_count += 1
                if record.status is Status.FAILED:
                    put(key, job_id, db=dead)
            for job_id_text, (raw, key) in quarantine.items():
                put(job_id_text.encode(), raw, db=self._corrupt)
                if key is not None:
                    txn.delete(job_id_text.encode(), db=jobs)
                    txn.delete(key, db=order)
            if last_seq != self._last_seq:
                # Arrival seqs never repeat, even after every live job finished.
                put(b"seq", str(last_seq).encode(), db=self._meta)
            if done_count > self._retention:
                done_count = self._prune(txn, done_count)
        return fseq, done_count, last_seq

    def _prune(self, txn: lmdb.Transaction, done_count: int) -> int:
        """Forget the oldest finished jobs beyond the retention, in the same transaction."""
        cursor = txn.cursor(db=self._done)
        cursor.first()
        while done_count > self._retention:
            key, job_id = cursor.item()
            raw = txn.get(job_id, db=self._jobs)
            if raw is not None:
                try:
                    record, fseq = decode(raw)
                except RecordError:
                    record, fseq = None, -1
                if record is not None and record.status not in _LIVE and seq_key(fseq) == key:
                    txn.delete(job_id, db=self._jobs)
                    if record.status is Status.FAILED:
                        txn.delete(key, db=self._dead)
            if not cursor.delete():
                break
            done_count -= 1
        return done_count


class StoreReader:
    """Read-only access to a store another process may own, for inspection tools.

    Raises ``StoreError`` naming the path if it is missing or not a jobqueue store. Never
    writes and never blocks the owner: LMDB readers do not take the writer's lock. Jobs the
    owner has logged but not yet moved into LMDB (a few milliseconds' worth, or all of them
    after a crash) are read from the log, so what it shows is a snapshot of both.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        _check_directory(path, create=False)
        if not os.path.exists(os.path.join(path, "data.mdb")):
            raise StoreError(f"{path!r} is not a jobqueue store")
        try:
            self._env = lmdb.open(path, readonly=True, max_dbs=_MAX_DBS, lock=True)
            _check_meta(self._env, path, initialise=False)
            self._jobs = self._env.open_db(b"jobs", create=False)
            self._logged = self._read_log()
        except lmdb.Error as exc:
            raise StoreError(f"cannot read store {path!r}: {exc}") from None

    def _read_log(self) -> dict[str, JobRecord]:
        logged: dict[str, JobRecord] = {}
        with self._env.begin() as txn:
            for segment in segment_paths(self.path):
                try:
                    for raw in read_segment(segment):
                        record, _ = decode(raw)
                        if _newer_add(txn.get(record.id.encode(), db=self._jobs), record):
                            logged[record.id] = record
                except (OSError, RecordError):
                    continue  # deleted by the owner meanwhile: LMDB has its jobs now
        return logged

    def records(self) -> Iterator[JobRecord]:
        """Every readable job record, in id order; unreadable ones are logged and skipped."""
        logged = dict(self._logged)
        with self._env.begin() as txn:
            for key, raw in txn.cursor(db=self._jobs):
                try:
                    record = decode(raw)[0]
                except RecordError as exc:
                    logger.warning("record %r cannot be read: %s", key, exc)
                    continue
                yield logged.pop(record.id, record)
        yield from sorted(logged.values(), key=lambda record: record.id)

    def get(self, job_id: str) -> JobRecord | None:
        if job_id in self._logged:
            return self._logged[job_id]
        with self._env.begin() as txn:
            raw = txn.get(job_id.encode(), db=self._jobs)
        return None if raw is None else decode(raw)[0]

    def map_size(self) -> int:
        meta = self._env.open_db(b"meta", create=False)
        with self._env.begin() as txn:
            noted = txn.get(b"map_size", db=meta)
        return int(noted) if noted is not None else int(self._env.info()["map_size"])

    def disk_bytes(self) -> int:
        return sum(
            os.path.getsize(os.path.join(self.path, name))
            for name in os.listdir(self.path)
            if name.endswith(".mdb")
        )

    def owner_pid(self) -> int | None:
        return owner_pid(self.path)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
