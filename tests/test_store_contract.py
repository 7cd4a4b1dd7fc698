"""The Store contract, run against each store directly, as huey's storage tests run against
every back end. The JobQueue suite (test_final_contract.py) runs over both stores too; this one
pins down what a store itself promises, so a new store can be checked against it.
The PostgreSQL store runs it too, with its own numbering mapped back (``Renumbered``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobqueue.errors import DuplicateJob, StoreError
from jobqueue.final import JobRecord, MemoryStore, Priority, Status
from jobqueue.final.stores.base import Store
from jobqueue.final.stores.lmdb.store import LmdbStore
from jobqueue.final.stores.postgres.store import PostgresStore

HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW
QUEUED, PROCESSING, RETRYING = Status.QUEUED, Status.PROCESSING, Status.RETRYING
COMPLETED, FAILED = Status.COMPLETED, Status.FAILED
Open = Callable[..., Store]


def record(job_id: str, seq: int, status: Status = QUEUED, priority: Priority = MEDIUM,
           kind: str = "", attempts: int = 0, payload: bytes = b"p") -> JobRecord:
    finished = 2.0 if status in (COMPLETED, FAILED) else None
    due = 9e9 if status is RETRYING else None
    started = 1.5 if attempts else None
    return JobRecord(job_id, payload, priority, kind, None, 1.0, status, attempts, None,
                     started, finished, due, seq)


def add(store: Store, records: list[JobRecord]) -> None:
    """New jobs, as a queue gives them: prepare, add, and commit if asked to."""
    ticket = store.add(store.prepare(records))
    if ticket is not None:
        store.commit(ticket)
    if isinstance(store, Renumbered):
        store.given.update((record.id, record.seq) for record in records)


class Renumbered:
    """A shared store numbers jobs itself (``seq``, in arrival order across processes):
    this maps its numbers back to the ones the test gave, so that records compare whole."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.given: dict[str, int] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def _given(self, record: JobRecord | None) -> JobRecord | None:
        return None if record is None else record._replace(seq=self.given[record.id])

    def get(self, job_id: str) -> JobRecord | None:
        return self._given(self.store.get(job_id))

    def claim(self, *args: object) -> list[JobRecord]:
        return [self._given(r) for r in self.store.claim(*args)]  # type: ignore[misc]

    def dead_letters(self) -> list[JobRecord]:
        return [self._given(r) for r in self.store.dead_letters()]  # type: ignore[misc]


def _opener(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Store]:
    if kind == "memory":
        return MemoryStore
    if kind == "lmdb":
        return lambda retention=100_000: LmdbStore(str(tmp_path / "store"), retention=retention)
    url = request.getfixturevalue("database_url")
    given: dict[str, int] = {}  # (shared by reopened stores, as the database is)

    def open_postgres(retention: int = 100_000) -> Store:
        store = Renumbered(PostgresStore(url, retention=retention))
        store.given = given
        return store  # type: ignore[return-value]

    return open_postgres


@pytest.fixture(params=["memory", "lmdb", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    opened: list[Store] = []
    opener = _opener(request.param, tmp_path, request)

    def open_(retention: int = 100) -> Store:
        store = opener(retention)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


class TestNewJobs:
    def test_added_jobs_can_be_read(self, open_store: Open) -> None:
        store = open_store()
        jobs = [record("a", 1), record("b", 2, priority=HIGH)]
        add(store, jobs)
        assert [store.get("a"), store.get("b")] == jobs
        assert store.get("unknown") is None
        assert store.last_seq() >= 2

    def test_moves_are_read_back_in_call_order(self, open_store: Open) -> None:
        store = open_store()
        add(store, [record("a", 1)])
        store.started(record("a", 1, PROCESSING, attempts=1))
        store.retrying(record("a", 1, RETRYING, attempts=1))
        store.started(record("a", 1, PROCESSING, attempts=2))
        assert store.get("a") == record("a", 1, PROCESSING, attempts=2)
        store.finished(record("a", 1, COMPLETED, attempts=2, payload=b""))
        assert store.get("a") == record("a", 1, COMPLETED, attempts=2, payload=b"")

    def test_a_finished_id_starts_a_new_life(self, open_store: Open) -> None:
        store = open_store()
        add(store, [record("a", 1)])
        store.finished(record("a", 1, FAILED, attempts=1))
        add(store, [record("a", 2)])
        assert store.get("a") == record("a", 2)
        assert store.dead_letters() == []

    def test_a_closed_store_takes_nothing(self, open_store: Open) -> None:
        store = open_store()
        store.close()
        with pytest.raises(StoreError, match="closed"):
            add(store, [record("a", 1)])
        store.close()  # twice is harmless


class TestFinished:
    def test_retention_keeps_the_newest(self, open_store: Open) -> None:
        store = open_store(retention=2)
        for seq in range(1, 5):
            add(store, [record(f"j{seq}", seq)])
            store.finished(record(f"j{seq}", seq, COMPLETED, attempts=1, payload=b""))
        store.dead_letters()  # (a store may batch: this reads what was told)
        assert [store.get(f"j{n}") is None for n in range(1, 5)] == [True, True, False, False]

    def test_retention_never_forgets_a_live_job(self, open_store: Open) -> None:
        store = open_store(retention=1)
        add(store, [record("again", 1)])
        store.finished(record("again", 1, COMPLETED, attempts=1, payload=b""))
        add(store, [record("again", 2)])  # live again
        add(store, [record("other", 3)])
        store.finished(record("other", 3, COMPLETED, attempts=1, payload=b""))
        store.dead_letters()
        assert store.get("again") == record("again", 2)

    def test_dead_letters_are_the_failed_oldest_first(self, open_store: Open) -> None:
        store = open_store()
        for seq, (job_id, status) in enumerate(
            [("f1", FAILED), ("ok", COMPLETED), ("f2", FAILED)], 1
        ):
            add(store, [record(job_id, seq)])
            store.finished(record(job_id, seq, status, attempts=1))
        assert [r.id for r in store.dead_letters()] == ["f1", "f2"]


class TestClaims:
    def test_nothing_to_claim_in_a_new_store(self, open_store: Open) -> None:
        store = open_store()
        assert [store.claim(p, 10, None) for p in Priority] == [[], [], []]

    def test_released_jobs_are_claimed_again(self, open_store: Open) -> None:
        store = open_store()
        add(store, [record("a", 1), record("b", 2)])
        store.started(record("a", 1, PROCESSING, attempts=1))
        store.released(record("a", 1, QUEUED, attempts=1))
        if store.persistent:  # a persistent store hands back what it held at open
            store.close()
            store = open_store()
        claimed = store.claim(MEDIUM, 10, None)
        assert [r.id for r in claimed][: 1] == ["a"]
        assert claimed[0].attempts == 1
        assert store.claim(MEDIUM, 10, None) == []  # held now: not handed out twice

    def test_an_id_the_store_holds_unclaimed_is_refused_without_trace(
        self, open_store: Open
    ) -> None:
        store = open_store()
        add(store, [record("taken", 1)])
        store.released(record("taken", 1))
        if store.persistent:
            store.close()
            store = open_store()
        with pytest.raises(DuplicateJob, match="'taken'"):
            add(store, [record("fresh", 10), record("taken", 11)])
        assert store.get("fresh") is None
        assert store.get("taken") == record("taken", 1)


@pytest.fixture(params=["lmdb", "postgres"])
def open_persistent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    opened: list[Store] = []
    opener = _opener(request.param, tmp_path, request)

    def open_() -> Store:
        opened.append(opener())
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


class TestPersistent:
    """What only a persistent store promises: unfinished jobs outlive it, to be claimed."""

    def test_claims_follow_priority_then_arrival_and_kinds(self, open_persistent: Open) -> None:
        open_store = open_persistent
        store = open_store()
        assert store.persistent
        add(store, [
            record("low-1", 1, priority=LOW), record("high-1", 2, priority=HIGH),
            record("mail", 3, kind="email"), record("high-2", 4, priority=HIGH),
            record("med", 5), record("done", 6),
        ])
        store.started(record("high-2", 4, PROCESSING, HIGH, attempts=1))
        store.retrying(record("med", 5, RETRYING, attempts=1))
        store.finished(record("done", 6, COMPLETED, attempts=1, payload=b""))
        store.close()
        store = open_store()
        assert [r.id for r in store.claim(HIGH, 1, None)] == ["high-1"]
        assert [(r.id, r.status) for r in store.claim(HIGH, 5, None)] == [
            ("high-2", PROCESSING)
        ]
        assert [r.id for r in store.claim(MEDIUM, 5, {""})] == ["med"]  # "mail" waits
        assert [r.id for r in store.claim(MEDIUM, 5, {"", "email"})] == ["mail"]
        assert [r.id for r in store.claim(LOW, 5, None)] == ["low-1"]
        assert store.get("done") is not None and store.claim(MEDIUM, 5, None) == []
