"""The LMDB store's tables: how a store is opened, read and written, owner or not.

Everything here works on a store without running one: the runtime store
(:mod:`.store`) opens through it, and so do the read-only reader and the repairs
of :mod:`jobqueue.final.admin`, which need no flush thread and no new log segment. What a dead
owner left in its log is read by :mod:`.replay`.

Layout, in one LMDB environment directory (``persist_path``):

- ``jobs``: job id -> record (:mod:`.record_format`), live and finished alike;
- ``order``: priority byte + arrival seq -> job id, for live jobs: claims walk it in priority
  and arrival order without loading everything;
- ``done``: finish seq -> job id, oldest first, to prune finished jobs beyond the retention;
- ``dead``: finish seq -> job id, for FAILED jobs (dead letters);
- ``corrupt``: job id -> raw bytes of records that could not be decoded, set aside;
- ``meta``: magic, format version, highest arrival seq (never reused), the log checkpoint
  (every logged frame before it is in LMDB), and the map size for read-only readers.

The directory and who owns it are :mod:`jobqueue.final.stores.lmdb.directory`'s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import lmdb

from jobqueue.errors import StoreError
from jobqueue.final._checks import MAX_ID_BYTES
from jobqueue.final._states import LIVE, Status
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.lmdb.directory import FILE_MODE
from jobqueue.final.stores.lmdb.record_format import (
    FORMAT_VERSION,
    RecordError,
    decode,
    encode,
    order_key,
    seq_key,
)

__all__ = ["MapGate", "Tables", "begin_read", "id_key"]

logger = logging.getLogger("jobqueue")

MAGIC = b"jobqueue-store"
INITIAL_MAP_SIZE = 64 << 20
_MAX_DBS = 8


_RESIZE_TRIES = 10  # the owner doubles its map each time: ten tries cover 1,000x growth


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
                    metasync=sync, writemap=False, mode=FILE_MODE,
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
        finished = []
        for record, new in batch:
            if new and record.seq > last_seq:
                last_seq = record.seq
            if record.status in LIVE:
                rows.add(record, new, fseq)
            else:
                finished.append((record, new))
        # Finish numbers in the order jobs finished, not the order the batch lists them (the
        # order it was first told of each: a job enqueued after another finished may come
        # first), so that the retention forgets the oldest finished first.
        finished.sort(key=lambda pair: pair[0].finished_at or 0.0)
        for record, new in finished:
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
