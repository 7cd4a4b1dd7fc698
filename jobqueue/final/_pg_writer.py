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

Heartbeats renew, every third of a lease and before any move, the leases of the jobs this
process holds (with ``SKIP LOCKED`` too: a row another transaction holds is skipped, not
forgotten) and hand back rows of this process it no longer knows (a claim whose answer was
lost with its connection). A held move renews its job's lease as well.

Errors are told apart by SQLSTATE. A lost connection (class 08, a server shutting down, a
broken connection): connect again, with backoff, and write the same moves. Transient ones
(class 40: serialization failures and deadlocks; class 53: insufficient resources; 55P03, a
lock not available; 57014, a statement cancelled): the same moves again after a short wait.
Anything else is logged and tried again with backoff; whoever waits gives up after a while,
and the moves stay pending.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Collection
from typing import Any

from jobqueue.final._pg_schema import ALIVE, CHANNEL, connect, mask
from jobqueue.final._states import FINISHED, LIVE, Status
from jobqueue.final._store import JobRecord, JsonResult

__all__ = ["Move", "Writer", "classify"]

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
#: A producer's notices of new jobs, per priority, come at most this often (seconds).
NOTIFY_GAP = 0.002
#: Finished jobs deleted per statement, and statements per pass of the writer.
_TRIM_BATCH = 1000
_TRIM_PASSES = 10
#: Refusals remembered for confirm(), the oldest forgotten first.
_REFUSALS_KEPT = 10_000

_FINISHED = "(" + ", ".join(sorted(f"'{s.value}'" for s in FINISHED)) + ")"
_LIVE = "(" + ", ".join(sorted(f"'{s.value}'" for s in LIVE)) + ")"

# Moves, written in a batch, one index probe each (LATERAL, whatever the planner's statistics
# say: on a young table they say it is empty). Each row is locked in the order of the ids
# (the batch comes sorted), skipping rows another transaction holds, and only if it is live
# and still held under the move's lease. Every move comes back with its fate: w(ritten),
# b(usy: its row was locked) or r(efused). The batch is one JSON parameter, a list of
# [id, lease_id, status, attempts, last_error, started_at, finished_at, due_at, held,
# result (base64), result is JSON]: one C call encodes it, where psycopg dumped eleven
# arrays element by element, at 80 us a batch.
_MOVE = f"""
WITH u AS (
    SELECT m->>0 AS id, (m->>1)::bigint AS lease_id, m->>2 AS status,
           (m->>3)::integer AS attempts, m->>4 AS last_error,
           (m->>5)::float8 AS started_at, (m->>6)::float8 AS finished_at,
           (m->>7)::float8 AS due_at, (m->>8)::bool AS held,
           decode(m->>9, 'base64') AS result, (m->>10)::bool AS result_json
    FROM json_array_elements(%(moves)s::json) AS m
), locked AS (
    SELECT row.tid, u.* FROM u CROSS JOIN LATERAL (
        SELECT ctid AS tid FROM jobqueue_jobs
        WHERE queue = %(queue)s AND id = u.id AND lease_id = u.lease_id
          AND status IN {_LIVE}
        FOR UPDATE SKIP LOCKED
    ) AS row
), moved AS (
    UPDATE jobqueue_jobs AS j SET
        status = t.status, attempts = t.attempts, last_error = t.last_error,
        started_at = t.started_at, finished_at = t.finished_at, due_at = t.due_at,
        payload = CASE WHEN t.status = 'completed' THEN ''::bytea ELSE j.payload END,
        result = t.result, result_json = t.result_json,
        owner = CASE WHEN t.held THEN j.owner END,
        lease_id = CASE WHEN t.held THEN j.lease_id END,
        lease_until = CASE WHEN t.held THEN now() + make_interval(secs => %(lease)s) END
    FROM locked AS t WHERE j.ctid = t.tid
    RETURNING j.id, j.status
)
SELECT u.id, CASE
        WHEN m.id IS NOT NULL THEN 'w'
        WHEN EXISTS (SELECT 1 FROM jobqueue_jobs WHERE queue = %(queue)s AND id = u.id
                     AND lease_id = u.lease_id AND status IN {_LIVE}) THEN 'b'
        -- Applied already: this batch was sent before, and its answer lost with the link.
        WHEN EXISTS (SELECT 1 FROM jobqueue_jobs WHERE queue = %(queue)s AND id = u.id
                     AND status = u.status AND attempts = u.attempts
                     AND started_at IS NOT DISTINCT FROM u.started_at
                     AND finished_at IS NOT DISTINCT FROM u.finished_at
                     AND (u.held OR lease_id IS NULL)) THEN 'w'
        ELSE 'r' END,
    CASE WHEN m.status IN {_FINISHED} AND %(notify)s
        THEN pg_notify('{CHANNEL}', 'd' || %(tag)s || %(queue)s) END
FROM u LEFT JOIN moved AS m ON m.id = u.id
"""

# A move PostgreSQL refused the values of: the job, FAILED with its words, still only under
# the move's lease and while live.
_DROP = f"""
WITH failed AS (
    UPDATE jobqueue_jobs SET status = 'failed', last_error = %(error)s,
        finished_at = %(now)s, due_at = NULL, result = NULL, result_json = false,
        owner = NULL, lease_id = NULL, lease_until = NULL
    WHERE queue = %(queue)s AND id = %(id)s AND lease_id = %(lease)s AND status IN {_LIVE}
    RETURNING id)
SELECT id, pg_notify('{CHANNEL}', 'd' || %(tag)s || %(queue)s) FROM failed
"""

# Leases renewed, rows another transaction holds skipped (and still held: not forgotten);
# then rows of this process whose lease lapsed and that it does not know it holds, handed
# back: a claim whose answer never came (its connection died) left them.
_HEARTBEAT = f"""
WITH mine AS (
    SELECT ctid AS tid, lease_id FROM jobqueue_jobs
    WHERE queue = %(queue)s AND owner = %(owner)s AND lease_id = ANY(%(leases)s)
      AND status IN {_LIVE}
), free AS (
    SELECT ctid AS tid FROM jobqueue_jobs WHERE ctid = ANY(ARRAY(SELECT tid FROM mine))
    FOR UPDATE SKIP LOCKED
), renewed AS (
    UPDATE jobqueue_jobs AS j SET lease_until = now() + make_interval(secs => %(lease)s)
    FROM free WHERE j.ctid = free.tid RETURNING j.lease_id
), orphans AS (
    UPDATE jobqueue_jobs SET owner = NULL, lease_id = NULL, lease_until = NULL
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM jobqueue_jobs
        WHERE queue = %(queue)s AND owner = %(owner)s AND lease_until < now()
          AND NOT lease_id = ANY(%(leases)s)
        FOR UPDATE SKIP LOCKED))
    RETURNING priority
), notified AS (
    SELECT pg_notify('{CHANNEL}', priority::text || %(tag)s || %(queue)s)
    FROM (SELECT DISTINCT priority FROM orphans) AS p
)
SELECT lease_id, true FROM renewed
UNION ALL SELECT lease_id, false FROM mine WHERE lease_id NOT IN (SELECT lease_id FROM renewed)
UNION ALL SELECT NULL::bigint, NULL::boolean FROM notified
"""

# Finished jobs older than the retention's newest, a batch at a time. The cut-off is read
# without locks; rows another transaction holds (a new life being enqueued) are skipped,
# and one made live again meanwhile is skipped on the re-check.
_TRIM = f"""
WITH cutoff AS (
    SELECT finished_at, seq FROM jobqueue_jobs
    WHERE queue = %(queue)s AND status IN {_FINISHED}
    ORDER BY finished_at DESC, seq DESC OFFSET %(keep)s LIMIT 1
)
DELETE FROM jobqueue_jobs WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM jobqueue_jobs
    WHERE queue = %(queue)s AND status IN {_FINISHED}
      AND finished_at <= (SELECT finished_at FROM cutoff)
      AND (finished_at, seq) <= (SELECT finished_at, seq FROM cutoff)
    ORDER BY finished_at, seq LIMIT %(batch)s FOR UPDATE SKIP LOCKED))
  AND status IN {_FINISHED}
"""

# Every job this process holds, back to the queue for any process: at close.
_RELEASE_ALL = f"""
WITH released AS (
    UPDATE jobqueue_jobs SET owner = NULL, lease_id = NULL, lease_until = NULL
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM jobqueue_jobs WHERE queue = %(queue)s AND owner = %(owner)s
        FOR UPDATE SKIP LOCKED))
    RETURNING priority)
SELECT pg_notify('{CHANNEL}', priority::text || %(tag)s || %(queue)s)
FROM (SELECT DISTINCT priority FROM released) AS held
"""


def classify(exc: BaseException, conn: Any) -> str:
    """What a failed statement means: ``"connection"`` (connect again), ``"transient"`` (try
    the same again soon), ``"data"`` (the values: trying again would fail again; a value
    JSON cannot hold counts too) or ``"other"``."""
    import psycopg

    if not isinstance(exc, psycopg.Error):
        return "data" if isinstance(exc, (ValueError, TypeError, OverflowError)) else "other"
    state = exc.sqlstate or ""
    if conn is None or conn.broken or state[:2] == "08" or (
            state in ("57P01", "57P02", "57P03")) or (
            not state and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))):
        return "connection"
    if state[:2] in ("40", "53") or state in ("55P03", "57014"):
        return "transient"
    # A data exception; a constraint or a trigger of the application refusing the row
    # (class 23, PL/pgSQL's P0); a value past a limit (54: 1 GB, say).
    if state[:2] in ("22", "23", "54", "P0"):
        return "data"
    return "other"


class Move:
    """One move of a held job, told and not yet settled. ``lease`` is the claim it is
    conditional on, negative when the move hands the job back (unheld after it).

    ``gate``, a lock held until the move settles, is made for whoever waits for its fate:
    the writer releases it, and only its waiters wake (no condition shared by every
    worker, which woke them all at every batch). A move a newer move of its job replaced
    before it was written (``replaced``) settles with the newer one, whose record carries
    it forward; but a start so replaced settles at once as "s": its worker must not run a
    job that was handed back meanwhile (close() gave up on it).
    """

    __slots__ = ("record", "lease", "number", "told_at", "fate", "gate", "replaced")

    def __init__(self, record: JobRecord, lease: int, number: int, told_at: float) -> None:
        self.record = record
        self.lease = lease
        self.number = number
        self.told_at = told_at  # monotonic: the lease it is under runs at least this long
        self.fate: str | None = None  # "w"ritten, "r"efused, "d"ropped or "s"uperseded
        self.gate: Any = None
        self.replaced: list[Move] = []

    def settle_locked(self, fate: str) -> int:
        """Give this move, and those it replaced, their fate, once; the gates released."""
        released = 0
        for move in (self, *self.replaced):
            if move.fate is None:
                move.fate = fate
                if move.gate is not None:
                    move.gate.release()
                    released += 1
        self.replaced = []
        return released

    def size(self) -> int:
        """Bytes it adds to a batch, about."""
        record = self.record
        return (200 + len(record.id) + len(record.last_error or "")
                + len(record.result or b"") * 4 // 3)


def _supersede(old: Move, new: Move) -> None:
    """``new`` replaces ``old``, an unwritten move of the same job (call with the lock)."""
    if old.gate is not None and old.lease > 0 and old.record.status is Status.PROCESSING:
        old.settle_locked("s")  # a start: see Move
    else:
        new.replaced += [old, *old.replaced]
        old.replaced = []


_KINDS = ("0", "1", "2", "d")  # notices: new jobs of a priority, or jobs finished
_DONE = 3


class Writer:
    """Moves and heartbeats on thread ``jobqueue-final-pg-writer``, on its own connection.

    ``leases`` is the store's dict of the leases it holds, by job id: the writer forgets the
    ones it finds refused, and renews the others.
    """

    def __init__(
        self, url: str, *, queue: str, owner: str, tag: str, lease: float, fsync: bool,
        retention: int, leases: dict[str, int],
    ) -> None:
        self._url = url
        self._queue = queue
        self._owner = owner
        self._tag = tag
        self._lease = lease
        self._fsync = fsync
        self._retention = retention
        self._leases = leases
        # How long a caller waits for a write before it gives up: the database is away.
        # Long enough for a slow commit, short enough not to look like a hang.
        self.write_wait = max(5.0, min(lease, 30.0))

        # lock guards the fields below, and each move's fate and gate; work wakes the
        # writer, written whoever waits for moves of some ids to settle (reads).
        self.lock = threading.Lock()
        self._work = threading.Condition(self.lock)
        self._written = threading.Condition(self.lock)
        self._pending: dict[str, Move] = {}  # the latest move of each job, not yet taken
        self._writing: dict[str, Move] = {}  # the batch being written
        self._busy: dict[str, Move] = {}  # moves whose row was locked: tried again later
        self._busy_wait = _BUSY_WAIT
        self._busy_until = 0.0
        self._told = 0  # moves told so far: each move's number
        self._refused: dict[str, int] = {}  # job id -> number of its last refused move
        self._hurry = False  # someone waits for a fate: no lingering
        # Group commit of starts: awaited moves pending, since when, and how many workers
        # are away in the handlers the writer let run (each comes back with the outcome,
        # and its next start if it has another job, soon if its job is short; those that
        # do not within _GROUP_WAIT are not waited for again).
        self._starts = 0
        self._starts_since = 0.0
        self._away = 0
        self._idle = False  # the writer waits for work: a move must wake it
        # When a notice last went, and whether news came since that none told yet: of new
        # jobs, by priority, and (_DONE) of finished ones. At most one per NOTIFY_GAP each.
        self._notified = [0.0, 0.0, 0.0, 0.0]
        self._trailing = [False, False, False, False]
        self._closing = False  # write what is left, hand back what is held, stop
        self.closed = False
        self._finished_since_trim = 0  # (the writer thread's own)
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
                _supersede(old, move)
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
        now = time.monotonic()
        with self.lock:
            notify = [p for p in priorities if now - self._notified[p] >= NOTIFY_GAP]
            for p in notify:
                self._notified[p] = now
            later = [p for p in priorities if p not in notify]
            for p in later:
                self._trailing[p] = True
            if later:
                self._work.notify()
        return notify

    # -- waiting for fates (any thread but the writer) ---------------------------------------

    def _in_flight_locked(self, job_id: str) -> Move | None:
        return (self._pending.get(job_id) or self._writing.get(job_id)
                or self._busy.get(job_id))

    def wait_fate(self, move: Move, deadline: float | None) -> str | None:
        """The move's fate once settled, or None if ``deadline`` (monotonic) came first or
        the writer stopped without writing it."""
        gate = move.gate
        if gate is None:
            with self.lock:
                if move.fate is not None or self.closed:
                    return move.fate
                gate = move.gate
                if gate is None:
                    gate = move.gate = _allocate_lock()
                    gate.acquire()
                self._hurry = True
                self._work.notify()
        if deadline is None:
            timeout = -1.0
        else:
            timeout = min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
        if gate.acquire(True, timeout):
            gate.release()  # open for any other waiter
        return move.fate

    def confirm(self, job_id: str, timeout: float | None) -> bool:
        """Wait until the latest move told of the job is settled; True if it was written.
        Raises TimeoutError after ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            move = self._in_flight_locked(job_id)
        if move is not None:
            fate = self.wait_fate(move, deadline)
            if fate is None:
                if self.closed:
                    return False  # never written: close() gave up on it
                raise TimeoutError(f"the database did not take the outcome of job {job_id!r} "
                                   f"within {timeout} s")
            return fate == "w"
        with self.lock:
            return job_id not in self._refused

    def retract(self, move: Move, record: JobRecord) -> None:
        """A start not confirmed in time: hand the job back instead (``record`` as it was
        before the start), unless the start was refused meanwhile."""
        with self.lock:
            if move.fate == "r" or move.fate == "d":
                return
            self._told += 1
            release = Move(record, -abs(move.lease), self._told, time.monotonic())
            if self._pending.get(record.id) is move or self._busy.get(record.id) is move:
                self._pending.pop(record.id, None)
                self._busy.pop(record.id, None)
                release.replaced, move.replaced = move.replaced, []
                move.settle_locked("s")  # (its worker has given it up already)
            else:
                old = self._pending.get(record.id) or self._busy.pop(record.id, None)
                if old is not None:
                    _supersede(old, release)
            self._pending[record.id] = release
            self._work.notify()

    def settle(self, ids: Collection[str]) -> bool:
        """Wait until no move told of these ids is in flight; False if that took longer than
        ``write_wait``."""
        return self._wait_written(
            lambda: any(self._in_flight_locked(i) is not None for i in ids))

    def sync(self) -> bool:
        """Wait until every move told so far is settled; False if that took longer than
        ``write_wait``."""
        told = self._told
        return self._wait_written(lambda: any(
            move.number <= told
            for flight in (self._pending, self._writing, self._busy)
            for move in flight.values()))

    def _wait_written(self, unsettled: Callable[[], bool]) -> bool:
        """Hurry the writer and wait while ``unsettled()`` (called under the lock) holds;
        False after ``write_wait``. True once closed: nothing more will be written, and
        what there is can be read."""
        deadline = time.monotonic() + self.write_wait
        with self.lock:
            while unsettled():
                if self.closed:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._hurry = True
                self._work.notify()
                self._written.wait(remaining)
            return True

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
            for p in range(4):
                if self._trailing[p]:
                    due = min(due, self._notified[p] + NOTIFY_GAP)
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
                    _supersede(move, newer)
            self._busy = {}
        self._writing = batch
        trailing = [p for p in range(4)
                    if self._trailing[p] and now - self._notified[p] >= NOTIFY_GAP]
        for p in trailing:
            self._trailing[p] = False
            self._notified[p] = now
        return batch, trailing, self._closing

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
                done_notice = _DONE in trailing and any(
                    move.record.status in FINISHED for move in batch.values())
                for p in trailing:
                    if p != _DONE or not done_notice:
                        conn.execute("SELECT pg_notify(%s, %s)",
                                     (CHANNEL, f"{_KINDS[p]}{self._tag}{self._queue}"))
                fates = (self._write(conn, sorted(batch.values(), key=_by_id), done_notice)
                         if batch else {})
                # Finished jobs past the retention go before anyone hears of the batch: a
                # read after wait() must find what the retention keeps, and no more.
                self._trim_if_due(conn)
                self._settle_batch(batch, fates)
                backoff = 0.0
                if closing and not self._pending_work():
                    break
            except Exception as exc:
                kind = classify(exc, conn)
                backoff = min(max(backoff * 2, 0.1 if kind != "transient" else 0.01),
                              _MAX_BACKOFF)
                level = logging.WARNING if kind == "transient" else logging.ERROR
                logger.log(level, "writing to PostgreSQL failed (%s); trying again in %.2f s",
                           mask(_first_line(exc), self._url), backoff)
                if kind == "connection" and conn is not None:
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
                            _supersede(move, newer)
                    self._writing = {}
                    for p in trailing:
                        self._trailing[p] = True
                    if self.closed:
                        break
                    self._work.wait(backoff)
                    if self.closed:
                        break
        if conn is not None:
            try:
                self._release_all(conn)
            except Exception as exc:
                logger.error("could not hand back this process's jobs at close (%s): other "
                             "processes take them once their lease lapses", _first_line(exc))
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
                        _supersede(move, newer)
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
            self._drop(conn, moves[0], exc)
            return {moves[0].record.id: "d"}

    def _execute(self, conn: Any, moves: list[Move], notify: bool) -> dict[str, str]:
        # Finished jobs are news for wait() and join() in other processes: one notice per
        # gap at most, as for new jobs, and a trailing one for those in between.
        now = time.monotonic()
        notify = notify or now - self._notified[_DONE] >= NOTIFY_GAP
        rows = conn.execute(_MOVE, {
            "queue": self._queue, "tag": self._tag, "lease": self._lease, "notify": notify,
            "moves": json.dumps([_row(move) for move in moves], allow_nan=False),
        }).fetchall()
        fates = {job_id: fate for job_id, fate, _ in rows}
        finished = sum(1 for move in moves if move.record.status in FINISHED
                       and fates.get(move.record.id) == "w")
        if finished:
            self._finished_since_trim += finished
            with self.lock:
                if notify:
                    self._notified[_DONE] = now
                else:
                    self._trailing[_DONE] = True
        return fates

    def _drop(self, conn: Any, move: Move, exc: BaseException) -> None:
        record = move.record
        error = f"PostgreSQL refused to record this job as {record.status.value}: " \
                f"{_first_line(exc)}"
        logger.error("job %r: %s; it is recorded as failed instead", record.id, error)
        try:
            conn.execute(_DROP, {"queue": self._queue, "id": record.id, "tag": self._tag,
                                 "lease": abs(move.lease), "error": error,
                                 "now": time.time()}).fetchall()
        except Exception as again:
            if classify(again, conn) == "connection":
                raise
            logger.error("job %r could not be recorded as failed either (%s): it runs again "
                         "once its lease lapses", record.id, _first_line(again))

    def _heartbeat(self, conn: Any) -> None:
        """Renew the leases this store knows it holds, and only those (a row it claimed but
        never heard back about is handed back once it lapses); forget those another process
        took over."""
        held = list(self._leases.items())
        with self.lock:  # moves of jobs it held, not written yet: their lease still counts
            flying = [abs(move.lease) for flight in (self._pending, self._writing, self._busy)
                      for move in flight.values()]
        renewed, locked = set(), set()
        for lease, was_renewed in conn.execute(_HEARTBEAT, {
            "queue": self._queue, "owner": self._owner, "lease": self._lease,
            "tag": self._tag, "leases": [lease for _, lease in held] + flying,
        }).fetchall():
            if lease is not None:
                (renewed if was_renewed else locked).add(lease)
        lost = []
        for job_id, lease in held:
            if lease in renewed or lease in locked:
                continue
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
        try:  # for people (jobqueue stats): never at the cost of the leases above
            conn.execute(ALIVE, {"owner": self._owner, "queue": self._queue,
                                 "lease": self._lease})
        except Exception as exc:
            if classify(exc, conn) == "connection":
                raise
            logger.error("could not say this process is alive in jobqueue_processes: %s",
                         _first_line(exc))

    def _trim_if_due(self, conn: Any) -> None:
        """Delete finished jobs past the retention, newest kept, a batch at a time, once a
        tenth of the retention has finished since the last time."""
        if self._finished_since_trim <= self._retention // 10:
            return
        self._finished_since_trim = 0
        try:
            for _ in range(_TRIM_PASSES):
                deleted = conn.execute(_TRIM, {"queue": self._queue, "keep": self._retention,
                                               "batch": _TRIM_BATCH}).rowcount
                if deleted < _TRIM_BATCH:
                    return
            self._finished_since_trim = self._retention  # more next time
        except Exception as exc:  # the moves are written: only the trim waits
            if classify(exc, conn) == "connection":
                raise
            logger.error("deleting finished jobs past the retention failed: %s",
                         _first_line(exc))

    def _release_all(self, conn: Any) -> None:
        conn.execute(_RELEASE_ALL, {"queue": self._queue, "owner": self._owner,
                                    "tag": self._tag}).fetchall()
        try:  # (a process that does not say goodbye is listed gone, then forgotten)
            conn.execute("DELETE FROM jobqueue_processes WHERE owner = %s", (self._owner,))
        except Exception as exc:
            logger.info("could not take this process out of jobqueue_processes: %s",
                        _first_line(exc))
        self._leases.clear()

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


def _by_id(move: Move) -> str:
    return move.record.id


def _row(move: Move) -> list[Any]:
    """A move as _MOVE reads it."""
    (job_id, _, _, _, _, _, status, attempts, last_error, started_at, finished_at, due_at, _,
     result) = move.record
    if result is not None:
        json_result = type(result) is JsonResult
        result = base64.b64encode(result).decode()
    else:
        json_result = False
    return [job_id, abs(move.lease), status.value, attempts, last_error, started_at,
            finished_at, due_at, move.lease > 0, result, json_result]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

