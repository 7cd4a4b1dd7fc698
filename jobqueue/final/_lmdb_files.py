"""The LMDB store's files: the directory, who owns it, its tables, and the log left behind.

Everything here works on a store without running one: the runtime store
(:mod:`jobqueue.final._lmdb`) opens through it, and so do the read-only reader and the repairs
of :mod:`jobqueue.final.admin`, which need no flush thread and no new log segment. What a dead
owner left in its log is read by :mod:`jobqueue.final._lmdb_replay`.

Layout, in one LMDB environment directory (``persist_path``):

- ``jobs``: job id -> record (:mod:`jobqueue.final._records`), live and finished alike;
- ``order``: priority byte + arrival seq -> job id, for live jobs: claims walk it in priority
  and arrival order without loading everything;
- ``done``: finish seq -> job id, oldest first, to prune finished jobs beyond the retention;
- ``dead``: finish seq -> job id, for FAILED jobs (dead letters);
- ``corrupt``: job id -> raw bytes of records that could not be decoded, set aside;
- ``meta``: magic, format version, highest arrival seq (never reused), the log checkpoint
  (every logged frame before it is in LMDB), and the map size for read-only readers.

Ownership: an exclusive ``flock`` on ``owner.lock`` (holding the owner's pid) lets one queue or
repair at a time own the store, in this process or another; readers need no lock (LMDB readers
never block its writer).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import lmdb

from jobqueue.errors import StoreError, StoreLocked
from jobqueue.final._model import MAX_ID_BYTES
from jobqueue.final._records import FORMAT_VERSION, RecordError, decode, encode, order_key, seq_key
from jobqueue.final._states import LIVE, Status
from jobqueue.final._store import JobRecord

__all__ = [
    "MapGate",
    "Tables",
    "check_directory",
    "begin_read",
    "disk_full_note",
    "give_up_ownership",
    "id_key",
    "owner_pid",
    "take_ownership",
]

logger = logging.getLogger("jobqueue")

MAGIC = b"jobqueue-store"
LOCK_FILE = "owner.lock"
# and the log's wal-*.log; attempts.ring is _lmdb_starts's
_STORE_FILES = frozenset({LOCK_FILE, "data.mdb", "lock.mdb", "attempts.ring"})
INITIAL_MAP_SIZE = 64 << 20
_MAX_DBS = 8


def _is_store_file(name: str) -> bool:
    return name in _STORE_FILES or (name.startswith("wal-") and name.endswith(".log"))


def check_directory(path: str, *, create: bool) -> None:
    """Refuse a path that is not (and, with ``create``, cannot become) a store directory.

    A directory holding only a store's files is one, whatever stage of its creation it is
    in: another process may be creating it now (it holds the lock: ``StoreLocked`` follows),
    or one was killed while creating it (the next open completes it).
    """
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise StoreError(f"store path {path!r} is not a directory")
        if not os.path.exists(path):
            if not create:
                raise StoreError(f"store path {path!r} does not exist")
            try:
                os.makedirs(path, exist_ok=True)  # another process may create it at once
            except OSError as exc:
                raise StoreError(f"cannot create store directory {path!r}: {exc}") from None
        if create and not os.access(path, os.W_OK | os.X_OK):
            raise StoreError(f"store directory {path!r} is not writable")
        names = os.listdir(path)
    except OSError as exc:
        raise StoreError(f"cannot use store directory {path!r}: {exc}") from None
    # A store with its data file is one, whatever sits beside it (a .DS_Store, a note).
    foreign = [] if "data.mdb" in names else sorted(n for n in names if not _is_store_file(n))
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3])
        raise StoreError(f"{path!r} is not a jobqueue store: it holds other files ({shown})")


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


# Lock descriptors this process holds. A flock belongs to the open file, which a forked child
# shares: if the child kept its copy, the store would stay locked after the parent gave it up
# for as long as the child lived. The child closes its copies, which releases nothing of the
# parent's (the parent's descriptor still holds the lock).
_owned_fds: set[int] = set()


def _forget_ownership_in_child() -> None:
    for fd in _owned_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _owned_fds.clear()


os.register_at_fork(after_in_child=_forget_ownership_in_child)


def give_up_ownership(fd: int) -> None:
    """Close a descriptor from :func:`take_ownership`, which gives the store up."""
    _owned_fds.discard(fd)
    os.close(fd)


def take_ownership(path: str) -> int:
    """Lock the store for this process and return the lock file's descriptor.

    Raises ``StoreLocked`` naming the owner if another queue or repair holds it. Closing the
    descriptor (:func:`give_up_ownership`) gives the store up.
    """
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
    _owned_fds.add(fd)
    return fd


# Below this much free space, an I/O error writing the store is taken for a full disk: LMDB
# reports a failed write of its pages as "Input/output error" as often as "No space left".
_NEARLY_FULL = 16 << 20
_RESIZE_TRIES = 10  # the owner doubles its map each time: ten tries cover 1,000x growth


def disk_full_note(path: str, error: BaseException) -> str:
    """Words to add to a failure to write the store at ``path`` when the disk is full."""
    number = getattr(error, "errno", None)
    text = str(error)
    full = number in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text
    try:
        stat = os.statvfs(path)
        free = stat.f_bavail * stat.f_frsize
    except OSError:
        free = None
    io_error = number == errno.EIO or "Input/output error" in text
    if not full and not (io_error and free is not None and free < _NEARLY_FULL):
        return ""
    room = "" if free is None else f", {free} bytes free"
    return f" (the disk is full{room}: free some space, and the store carries on)"


def begin_read(env: lmdb.Environment) -> lmdb.Transaction:
    """A read transaction, for a reader beside the owner: when the owner has grown the map
    since the reader opened, LMDB refuses the transaction (``MapResizedError``) until the
    reader adopts the new size."""
    for _ in range(_RESIZE_TRIES):
        try:
            return env.begin()
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # adopt the size the owner grew it to; no transaction is open
    return env.begin()


def id_key(job_id: str) -> bytes | None:
    """The ``jobs`` key of an id, or None for a str no job can have (``Job`` refuses it):
    empty, not encodable, or too long. LMDB would raise for some of them."""
    try:
        key = job_id.encode()
    except UnicodeEncodeError:
        return None
    return key if 0 < len(key) <= MAX_ID_BYTES else None


class MapGate:
    """Read transactions run together; growing the map runs alone.

    LMDB allows ``set_mapsize`` only while this process has no transaction open, and does not
    check (older py-lmdb versions do not either). Every read goes through :meth:`reading`;
    the one writer grows the map between its transactions with :meth:`resize`.
    """

    def __init__(self) -> None:
        # _cond's lock guards _readers and _resizing.
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._resizing = False

    @contextmanager
    def reading(self, env: lmdb.Environment) -> Iterator[lmdb.Transaction]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            with env.begin() as txn:
                yield txn
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    def resize(self, env: lmdb.Environment) -> int:
        """Double the map once no read is open; return the new size."""
        with self._cond:
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            size = env.info()["map_size"] * 2
            env.set_mapsize(size)
            return size
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class _Rows:
    """A batch's rows, gathered per table and written with one ``putmulti`` each: py-lmdb
    hands the interpreter away on every call, and while producers are busy each hand-off is
    a wait (measured: 0.4 us a ``put`` alone, 140 us with one busy thread, 41 with
    ``putmulti``)."""

    __slots__ = ("jobs", "order", "done", "dead", "unordered")

    def __init__(self) -> None:
        self.jobs: list[tuple[bytes, bytes]] = []
        self.order: list[tuple[bytes, bytes]] = []
        self.done: list[tuple[bytes, bytes]] = []
        self.dead: list[tuple[bytes, bytes]] = []
        self.unordered: list[bytes] = []  # order entries of jobs that finished

    def add(self, record: JobRecord, new: bool, fseq: int) -> None:
        """A job's rows; ``new``: its ``order`` entry is not written yet; ``fseq``: its
        number in finish order, if finished."""
        job_id = record.id.encode()
        if record.status in LIVE:
            self.jobs.append((job_id, encode(record)))
            if new:
                self.order.append((order_key(record.priority, record.seq), job_id))
            return
        self.jobs.append((job_id, encode(record, fseq)))
        if not new:
            self.unordered.append(order_key(record.priority, record.seq))
        key = seq_key(fseq)
        self.done.append((key, job_id))
        if record.status is Status.FAILED:
            self.dead.append((key, job_id))

    def write(self, txn: lmdb.Transaction, tables: Tables) -> None:
        for db, rows in ((tables.jobs, self.jobs), (tables.order, self.order),
                         (tables.done, self.done), (tables.dead, self.dead)):
            if rows:
                txn.cursor(db=db).putmulti(rows)
        for key in self.unordered:
            txn.delete(key, db=tables.order)


class Tables:
    """An open environment and its tables, with the writes that keep the indexes in step."""

    def __init__(
        self, path: str, *, readonly: bool = False, create: bool = False, sync: bool = False
    ) -> None:
        """Open the store at ``path``: read-only, or for writing; ``create`` makes a new one
        in an empty directory. Raises ``StoreError`` if it is not a jobqueue store."""
        self.path = path
        try:
            if readonly:
                self.env = lmdb.open(path, readonly=True, max_dbs=_MAX_DBS, lock=True)
            else:
                self.env = lmdb.open(
                    path, map_size=INITIAL_MAP_SIZE, max_dbs=_MAX_DBS, sync=sync,
                    metasync=sync, writemap=False,
                )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open store {path!r}: {exc}") from None
        try:
            self._check_meta(initialise=create)
            self.meta = self.env.open_db(b"meta", create=not readonly)
            self.jobs = self.env.open_db(b"jobs", create=not readonly)
            if not readonly:
                self.order = self.env.open_db(b"order")
                self.done = self.env.open_db(b"done")
                self.dead = self.env.open_db(b"dead")
                self.corrupt = self.env.open_db(b"corrupt")
        except lmdb.Error as exc:
            self.env.close()
            raise StoreError(f"cannot open store {path!r}: {exc}") from None
        except BaseException:
            self.env.close()
            raise

    def _check_meta(self, *, initialise: bool) -> None:
        """Check the magic and format; write them into a new, empty environment."""
        env, path = self.env, self.path
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
            with begin_read(env) as txn:
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

    def close(self) -> None:
        self.env.close()

    # -- meta -------------------------------------------------------------------------------

    def meta_int(self, txn: lmdb.Transaction, key: bytes) -> int:
        return int(txn.get(key, b"0", db=self.meta))

    def put_meta_int(self, txn: lmdb.Transaction, key: bytes, value: int) -> None:
        txn.put(key, str(value).encode(), db=self.meta)

    def note_map_size(self) -> None:
        """Record the map size where a read-only reader can see it (LMDB does not say)."""
        with self.env.begin(write=True) as txn:
            self.put_meta_int(txn, b"map_size", self.env.info()["map_size"])

    @staticmethod
    def last_key(txn: lmdb.Transaction, db: object) -> int:
        cursor = txn.cursor(db=db)
        return int.from_bytes(cursor.key(), "big") if cursor.last() else 0

    # -- records ----------------------------------------------------------------------------

    def stored(self, txn: lmdb.Transaction, job_id: str) -> tuple[JobRecord, int] | None:
        """A job's record and finish seq; raises RecordError if it cannot be read."""
        key = id_key(job_id)
        raw = None if key is None else txn.get(key, db=self.jobs)
        return None if raw is None else decode(raw)

    def put_live(self, txn: lmdb.Transaction, record: JobRecord, new: bool) -> None:
        """Write a live job; ``new``: its ``order`` entry is not written yet."""
        rows = _Rows()
        rows.add(record, new, 0)
        rows.write(txn, self)

    def delete(self, txn: lmdb.Transaction, record: JobRecord, fseq: int) -> None:
        """Delete a job and its index entries."""
        txn.delete(record.id.encode(), db=self.jobs)
        if record.status in LIVE:
            txn.delete(order_key(record.priority, record.seq), db=self.order)
        else:
            txn.delete(seq_key(fseq), db=self.done)
            txn.delete(seq_key(fseq), db=self.dead)

    def prune(self, txn: lmdb.Transaction, done_count: int, retention: int) -> int:
        """Forget the oldest finished jobs beyond the retention; return the new count."""
        cursor = txn.cursor(db=self.done)
        cursor.first()
        while done_count > retention:
            key, job_id = cursor.item()
            raw = txn.get(job_id, db=self.jobs)
            if raw is not None:
                try:
                    record, fseq = decode(raw)
                except RecordError:
                    record, fseq = None, -1
                # The entry may be stale: the id was enqueued again since it finished.
                if record is not None and record.status not in LIVE and seq_key(fseq) == key:
                    txn.delete(job_id, db=self.jobs)
                    if record.status is Status.FAILED:
                        txn.delete(key, db=self.dead)
            if not cursor.delete():
                break
            done_count -= 1
        return done_count

    def write_batch(
        self,
        txn: lmdb.Transaction,
        batch: Iterable[tuple[JobRecord, bool]],
        counters: tuple[int, int, int],
        retention: int,
    ) -> tuple[int, int, int]:
        """Write (record, new) pairs, new meaning its ``order`` entry is not written yet.

        ``counters`` are (last finish seq, finished jobs kept, last arrival seq); returns
        them updated. Prunes finished jobs beyond ``retention`` in the same transaction.
        """
        fseq, done_count, last_seq = counters
        rows = _Rows()
        for record, new in batch:
            if new and record.seq > last_seq:
                last_seq = record.seq
            if record.status not in LIVE:
                fseq += 1
                done_count += 1
            rows.add(record, new, fseq)
        rows.write(txn, self)
        if last_seq != counters[2]:
            self.put_meta_int(txn, b"seq", last_seq)  # arrival seqs never repeat
        if done_count > retention:
            done_count = self.prune(txn, done_count, retention)
        return fseq, done_count, last_seq

    def dead_letters(self, txn: lmdb.Transaction) -> list[JobRecord]:
        found = []
        for key, job_id in txn.cursor(db=self.dead):
            raw = txn.get(job_id, db=self.jobs)
            if raw is None:
                continue
            try:
                record, fseq = decode(raw)
            except RecordError:
                continue
            if record.status is Status.FAILED and seq_key(fseq) == key:
                found.append(record)
        return found
