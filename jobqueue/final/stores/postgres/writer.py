"""The PostgreSQL store's writer: the thread that writes what this process does with the jobs
it holds, and keeps its leases.

The queue tells moves (started, retrying, finished, released) under its mutex, so telling
never blocks: a move waits in ``pending``, the latest one per job, until the writer takes a
batch, a couple of milliseconds after the first move or at once when someone waits for one.

Each move is conditional on the claim it came from (``lease_id``) and on its row being live:
a finished row is never moved again, and a process that lost a job cannot overwrite what the
process that took it did. A batch locks its rows in id order with ``SKIP LOCKED``: the writer
never waits for a row another transaction holds (an application's, a repair's), so it is in
no deadlock and no lock wait; a move whose row is locked is *busy*, and tried again a moment
later while the others are written. Every move ends with a fate:

- written: committed, so every process sees it;
- refused: the row's lease moved on, or the row finished or is gone (another process took the
  job over, or a repair changed it): logged at WARNING, and the job forgotten here;
- dropped: PostgreSQL refused its values (a data error, SQLSTATE class 22): the batch is split
  until the moves it is about are found, those are logged at ERROR, and their jobs recorded
  FAILED with PostgreSQL's words, so that the mistake is seen and not run for ever.

``running`` (a start), ``confirm`` (an outcome) and ``settle`` (reads) wait for fates.

Heartbeats (:mod:`.leases`) renew the leases of the jobs this process holds every third of
a lease, before any move; a held move renews its job's lease as well. Notices of new and
finished jobs go at most once per gap (:mod:`.notices`); finished jobs past the retention
are trimmed before a batch is settled (:mod:`.retention`).

Errors are told apart by SQLSTATE. A lost connection (class 08, a server shutting down, a
broken connection): connect again, with backoff, and write the same moves. Transient ones
(class 40: serialization failures and deadlocks; class 53: insufficient resources; 55P03, a
lock not available; 57014, a statement cancelled): the same moves again after a short wait.
Anything else is logged and tried again with backoff; whoever waits gives up after a while,
and the moves stay pending.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections.abc import Collection
from typing import Any

from jobqueue.final._states import FINISHED, Status
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.postgres.connections import classify, connect, mask
from jobqueue.final.stores.postgres.leases import Leases
from jobqueue.final.stores.postgres.ledger import Ledger
from jobqueue.final.stores.postgres.moves import Move, by_id, drop, encoded, supersede
from jobqueue.final.stores.postgres.notices import DONE, KINDS, NoticeGaps
from jobqueue.final.stores.postgres.queries import Q
from jobqueue.final.stores.postgres.retention import Retention
from jobqueue.final.stores.postgres.rows import first_line

__all__ = ["Move", "Writer"]

logger = logging.getLogger("jobqueue")

#: How long the writer waits for more moves before it writes a batch, and the batch size
#: that ends the wait early (seconds, moves).
_LINGER = 0.002
_BATCH = 500
#: The most a batch's parameter holds, about (bytes): a backlog of large results after an
#: outage goes in several statements, none near PostgreSQL's 1 GB limit.
_BATCH_BYTES = 16 << 20
#: How long the writer waits for the rest of a group of starts: the workers that the last
#: batch let run come back together with their next starts, a handler's length later, and
#: one commit for all of them costs less than one each (seconds).
_GROUP_WAIT = 0.0005
#: How long a busy move waits before it is tried again, at first and at most (seconds).
_BUSY_WAIT = 0.02
_MAX_BUSY_WAIT = 1.0
#: The longest the writer waits before it tries a lost connection or a failing batch again.
_MAX_BACKOFF = 5.0
#: Refusals remembered for confirm(), the oldest forgotten first.
_REFUSALS_KEPT = 10_000




class Writer(Ledger):
    """Moves and heartbeats on thread ``jobqueue-final-pg-writer``, on its own connection.

    ``leases`` are the store's: the writer forgets the ones it finds refused, and renews the
    others (:mod:`.leases`); it trims finished jobs past ``retention`` (:mod:`.retention`).
    """

    def __init__(
        self, url: str, *, leases: Leases, fsync: bool, retention: Retention,
    ) -> None:
        self._url = url
        self._queue = leases.queue
        self._tag = leases.tag
        self._lease = leases.lease
        self._fsync = fsync
        self._retention = retention
        self._lease_keeper = leases
        self._leases = leases.held
        # How long a caller waits for a write before it gives up: the database is away.
        # Long enough for a slow commit, short enough not to look like a hang.
        super().__init__(write_wait=max(5.0, min(self._lease, 30.0)))
        # The lock (Ledger's) guards these too.
        self._busy_wait = _BUSY_WAIT
        self._busy_until = 0.0
        # Group commit of starts: awaited moves pending, since when, and how many workers
        # are away in the handlers the writer let run (each comes back with the outcome,
        # and its next start if it has another job, soon if its job is short; those that
        # do not within _GROUP_WAIT are not waited for again).
        self._starts = 0
        self._starts_since = 0.0
        self._away = 0
        self._idle = False  # the writer waits for work: a move must wake it
        self._gaps = NoticeGaps()  # at most one notice per gap of each kind
        self._closing = False  # write what is left, hand back what is held, stop
        self._thread = threading.Thread(
            target=self._loop, name="jobqueue-final-pg-writer", daemon=True
        )
        self._thread.start()

    # -- telling (under the queue's mutex: never blocks for long) ----------------------------

    def tell(self, record: JobRecord, lease: int, *, awaited: bool = False) -> Move:
        """A held job moved; ``lease`` negative if the move hands it back. ``awaited``: a
        worker will wait for its fate (a start), so the writer does not linger."""
        with self.lock:
            self._told += 1
            move = Move(record, lease, self._told, time.monotonic())
            old = self._pending.get(record.id) or self._busy.pop(record.id, None)
            if old is not None:
                supersede(old, move)
            self._pending[record.id] = move
            if awaited and not self.closed:
                move.gate = _allocate_lock()
                move.gate.acquire()
                if not self._starts:
                    self._starts_since = move.told_at
                self._starts += 1
                # The writer looks again: at the first start of a group (it lingers no
                # longer than _GROUP_WAIT from now), and once the group is whole.
                if self._idle or self._starts == 1 or not self._away:
                    self._idle = False
                    self._work.notify()
                return move
            if self._away:  # an outcome: a worker back from its handler
                self._away -= 1
                if not self._away and self._starts:
                    self._work.notify()
            if self._idle:
                self._idle = False
                self._work.notify()
            return move

    def notices(self, priorities: Collection[int]) -> list[int]:
        """Of the priorities of new jobs, those to notify of now; the writer notifies of the
        others once the gap has passed (a busy producer sends one notice per gap)."""
        with self.lock:
            notify, later = self._gaps.new_jobs(priorities, time.monotonic())
            if later:
                self._work.notify()
        return notify

    # -- the thread ---------------------------------------------------------------------------

    def _take_locked(self, next_heartbeat: float) -> tuple[dict[str, Move], list[int], bool]:
        """Wait for work; return the batch, the notices to send (indexes of _KINDS), and
        whether the writer is closing."""
        while True:
            now = time.monotonic()
            busy_due = bool(self._busy) and now >= self._busy_until
            if self._pending or busy_due or (self._closing and not self._busy):
                break
            due = next_heartbeat
            if self._busy:
                due = min(due, self._busy_until)
            due = self._gaps.next_due(due)
            if due <= now or self.closed:
                break
            self._idle = True
            self._work.wait(due - now)
        self._idle = False
        # Linger a moment for more moves: fewer, larger batches cost the database (and this
        # process) less. Anyone waiting for a fate cuts it short; workers waiting for their
        # starts, once the rest of their group has come or _GROUP_WAIT has passed.
        linger_until = time.monotonic() + _LINGER
        while self._pending and not self._hurry and not self._closing and (
                len(self._pending) < _BATCH):
            until = linger_until
            if self._starts:
                if not self._away:
                    break
                until = min(until, self._starts_since + _GROUP_WAIT)
            left = until - time.monotonic()
            if left <= 0:
                if self._starts:
                    self._away = 0  # in long handlers: the next batches do not wait
                break
            self._work.wait(left)
        self._hurry = False
        self._starts = 0
        batch = self._pending
        if len(batch) > _BATCH or sum(move.size() for move in batch.values()) > _BATCH_BYTES:
            batch, size = {}, 0
            for job_id, move in self._pending.items():
                if batch and (len(batch) >= _BATCH or size + move.size() > _BATCH_BYTES):
                    break
                batch[job_id] = move
                size += move.size()
            for job_id in batch:
                del self._pending[job_id]
        else:
            self._pending = {}
        now = time.monotonic()
        if self._busy and now >= self._busy_until:
            for job_id, move in self._busy.items():
                newer = batch.get(job_id)
                if newer is None:
                    batch[job_id] = move
                else:
                    supersede(move, newer)
            self._busy = {}
        self._writing = batch
        return batch, self._gaps.take_due(now), self._closing

    def _loop(self) -> None:
        conn = None
        heartbeat_every = self._lease / 3
        next_heartbeat = time.monotonic() + heartbeat_every
        backoff = 0.0
        while True:
            with self.lock:
                if self.closed:
                    break
                batch, trailing, closing = self._take_locked(next_heartbeat)
            try:
                if conn is None:
                    conn = connect(self._url, synchronous_commit=self._fsync, lease=self._lease,
                                   lock_timeout=self._lease / 3)
                    # Its few statements run thousands of times a second, and their plans
                    # (one index probe per move) do not depend on the values: planning
                    # each anew cost half of every batch. A plan is made once, maybe while
                    # the table is young and looks empty, where a scan of every row looks
                    # cheapest: every access here is by index or ctid, so none scans.
                    conn.execute("SET plan_cache_mode = force_generic_plan")
                    conn.execute("SET enable_seqscan = off")
                # Leases first: a slow batch must not let them lapse.
                if time.monotonic() >= next_heartbeat:
                    self._heartbeat(conn)
                    next_heartbeat = time.monotonic() + heartbeat_every
                # A notice of finished jobs rides on a batch that finishes jobs too.
                done_notice = DONE in trailing and any(
                    move.record.status in FINISHED for move in batch.values())
                for kind in trailing:
                    if kind != DONE or not done_notice:
                        conn.execute(Q["notify"],
                                     {"payload": f"{KINDS[kind]}{self._tag}{self._queue}"})
                fates = (self._write(conn, sorted(batch.values(), key=by_id), done_notice)
                         if batch else {})
                # Finished jobs past the retention go before anyone hears of the batch: a
                # read after wait() must find what the retention keeps, and no more.
                self._retention.trim_if_due(conn)
                self._settle_batch(batch, fates)
                backoff = 0.0
                if closing and not self._pending_work():
                    break
            except Exception as exc:
                failure = classify(exc, conn)
                backoff = min(max(backoff * 2, 0.1 if failure != "transient" else 0.01),
                              _MAX_BACKOFF)
                level = logging.WARNING if failure == "transient" else logging.ERROR
                logger.log(level, "writing to PostgreSQL failed (%s); trying again in %.2f s",
                           mask(first_line(exc), self._url), backoff)
                if failure == "connection" and conn is not None:
                    conn.close()
                    conn = None
                with self.lock:
                    for job_id, move in batch.items():  # back, unless a newer move came
                        if move.fate is not None or self._busy.get(job_id) is move:
                            continue
                        newer = self._pending.get(job_id)
                        if newer is None:
                            self._pending[job_id] = move
                        else:
                            supersede(move, newer)
                    self._writing = {}
                    self._gaps.unsent(trailing)
                    if self.closed:
                        break
                    self._work.wait(backoff)
                    if self.closed:
                        break
        if conn is not None:
            try:
                self._lease_keeper.release_all(conn)
            except Exception as exc:
                logger.error("could not hand back this process's jobs at close (%s): other "
                             "processes take them once their lease lapses", first_line(exc))
            finally:
                conn.close()

    def _pending_work(self) -> bool:
        with self.lock:
            return bool(self._pending or self._busy)

    def _settle_batch(self, batch: dict[str, Move], fates: dict[str, str]) -> None:
        refused = []
        with self.lock:
            released = 0
            for job_id, move in batch.items():
                fate = fates.get(job_id, "r")
                if fate == "b":
                    newer = self._pending.get(job_id)
                    if newer is None:
                        self._busy[job_id] = move
                    else:
                        supersede(move, newer)
                    continue
                if fate == "w":
                    self._refused.pop(job_id, None)
                else:
                    if fate == "r":
                        refused.append(move)
                    self._refused[job_id] = move.number
                    if self._leases.get(job_id) == abs(move.lease):
                        self._leases.pop(job_id, None)  # (a newer claim keeps its own)
                released += move.settle_locked(fate)
            self._away += released
            if len(self._refused) > _REFUSALS_KEPT:
                for job_id in list(self._refused)[: _REFUSALS_KEPT // 2]:
                    del self._refused[job_id]
            if any(fate == "b" for fate in fates.values()):  # wait longer each time
                self._busy_until = time.monotonic() + self._busy_wait
                self._busy_wait = min(self._busy_wait * 2, _MAX_BUSY_WAIT)
            elif not self._busy:
                self._busy_wait = _BUSY_WAIT
            self._writing = {}
            self._written.notify_all()
        for move in refused:
            record = move.record
            if record.status is Status.PROCESSING:
                logger.warning("job %r was taken over by another process (this one held it "
                               "past its lease of %s s): it is not run here", record.id,
                               self._lease)
            elif move.lease < 0 and record.status not in FINISHED:
                continue  # handed back, and taken already: nothing of this process is lost
            else:
                logger.warning(
                    "job %r was taken over by another process, or changed by a repair (this "
                    "one held it past its lease of %s s without a heartbeat): its outcome "
                    "here, %s, is not written", record.id, self._lease, record.status.value,
                )

    def _write(self, conn: Any, moves: list[Move], notify: bool = False) -> dict[str, str]:
        """Write the moves (sorted by id); their fates by id. A data error splits the batch
        until the moves it is about are found, and drops those. ``notify``: a notice of
        finished jobs is due, whatever the gap."""
        try:
            return self._execute(conn, moves, notify)
        except Exception as exc:
            kind = classify(exc, conn)
            if kind in ("connection", "transient") or (kind == "other" and len(moves) == 1):
                raise  # the batch again, whole: nothing in it is at fault
            if len(moves) > 1:  # find the moves at fault; the others are written
                half = len(moves) // 2
                return {**self._write(conn, moves[:half], notify),
                        **self._write(conn, moves[half:], notify)}
            drop(conn, moves[0], exc, self._queue, self._tag)
            return {moves[0].record.id: "d"}

    def _execute(self, conn: Any, moves: list[Move], notify: bool) -> dict[str, str]:
        # Finished jobs are news for wait() and join() in other processes: one notice per
        # gap at most, as for new jobs, and a trailing one for those in between.
        now = time.monotonic()
        with self.lock:
            notify = notify or self._gaps.finished_due(now)
        rows = conn.execute(Q["move"], {
            "queue": self._queue, "tag": self._tag, "lease": self._lease, "notify": notify,
            "moves": json.dumps([encoded(move) for move in moves], allow_nan=False),
        }).fetchall()
        fates = {job_id: fate for job_id, fate, _ in rows}
        finished = sum(1 for move in moves if move.record.status in FINISHED
                       and fates.get(move.record.id) == "w")
        if finished:
            self._retention.finished(finished)
            with self.lock:
                self._gaps.finished(notify, now)
        return fates

    def _heartbeat(self, conn: Any) -> None:
        """Renew the leases this store knows it holds, and only those (a row it claimed but
        never heard back about is handed back once it lapses); forget those another process
        took over."""
        # Held first, then the moves in flight: a job finished meanwhile leaves the first only
        # after its move is told, so it is in one or the other.
        held = list(self._leases.items())
        with self.lock:  # moves of jobs it held, not written yet: their lease still counts
            flying = [abs(move.lease) for flight in (self._pending, self._writing, self._busy)
                      for move in flight.values()]
        lost = []
        for job_id, lease in self._lease_keeper.renew(conn, held, flying):
            with self.lock:
                if self._in_flight_locked(job_id) is not None:
                    continue  # its move settles it, and says what became of it
                if self._leases.get(job_id) == lease:
                    self._leases.pop(job_id, None)  # running() refuses it from now on
                    self._refused[job_id] = self._told  # and confirm() says so
                    lost.append(job_id)
        for job_id in lost:
            logger.warning("job %r was taken over by another process (this one held it past "
                           "its lease of %s s without a heartbeat): this one will not run it "
                           "or write its outcome", job_id, self._lease)
        self._lease_keeper.say_alive(conn)

    # -- closing ------------------------------------------------------------------------------

    def close(self, timeout: float | None) -> None:
        """Write every move told, hand back the jobs still held, stop; waits up to
        ``timeout`` seconds (None: no limit), then gives up on what is left."""
        with self.lock:
            if self.closed:
                return
            self._closing = True
            self._work.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("the PostgreSQL writer did not finish within %s s: moves not yet "
                         "written are lost, and other processes take this one's jobs once "
                         "their lease lapses", timeout)
            with self.lock:  # it stops at its next try
                self.closed = True
                self._work.notify_all()
            self._thread.join(1.0)
        with self.lock:
            self.closed = True
            for flight in (self._pending, self._writing, self._busy):
                for move in flight.values():  # never written: whoever waits gives up
                    for unwritten in (move, *move.replaced):
                        if unwritten.fate is None and unwritten.gate is not None:
                            unwritten.gate.release()
                            unwritten.gate = None
            self._written.notify_all()
