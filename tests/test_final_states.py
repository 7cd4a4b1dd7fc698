"""The state machine and the job table, without threads: every move, every count, the store.

The README's table of moves is checked against MOVES, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobqueue.final import InvalidTransition, Job, JobRecord, MemoryStore, Priority, Status
from jobqueue.final._picker import DEFAULT_WEIGHTS
from jobqueue.final._states import GONE, LIVE, MOVES, NEW, STORED
from jobqueue.final._table import Entry, JobTable

QUEUED, PROCESSING, RETRYING = Status.QUEUED, Status.PROCESSING, Status.RETRYING
COMPLETED, FAILED = Status.COMPLETED, Status.FAILED
README = Path(__file__).resolve().parent.parent / "README.md"


class Recorder(MemoryStore):
    """A memory store that also remembers which calls it got, in order."""

    def __init__(self) -> None:
        super().__init__(retention=100)
        self.calls: list[tuple[str, str, Status]] = []

    def started(self, record: JobRecord) -> None:
        self.calls.append(("started", record.id, record.status))
        super().started(record)

    def retrying(self, record: JobRecord) -> None:
        self.calls.append(("retrying", record.id, record.status))
        super().retrying(record)

    def finished(self, record: JobRecord) -> None:
        self.calls.append(("finished", record.id, record.status))
        super().finished(record)

    def released(self, record: JobRecord) -> None:
        self.calls.append(("released", record.id, record.status))
        super().released(record)


def table_with(*jobs: Job) -> tuple[JobTable, Recorder, list[Entry]]:
    store = Recorder()
    table = JobTable(store, DEFAULT_WEIGHTS, clock=lambda: 100.0)
    entries = [Entry(job, None, seq, 100.0) for seq, job in enumerate(jobs, 1)]
    table.reserve(entries)
    return table, store, entries


def counts(table: JobTable, priority: Priority = Priority.MEDIUM) -> dict[str, int]:
    return {s.name: table.count(s, priority) for s in (NEW, QUEUED, PROCESSING, RETRYING,
                                                       COMPLETED, FAILED)}


class TestMoves:
    def test_the_readme_table_is_moves(self) -> None:
        section = README.read_text().split("### A job's life", 1)[1].split("\n#", 1)[0]
        rows = re.findall(r"^\| (\w+) \| (\w+) \| .* \| `?([\w-]+)`? \|$", section, re.M)
        described = {(frm, to): None if told == "-" else told for frm, to, told in rows}
        assert described == {(f.name, t.name): told for (f, t), told in MOVES.items()}

    def test_only_live_statuses_are_live(self) -> None:
        assert {QUEUED, PROCESSING, RETRYING, Status.SCHEDULED} == LIVE

    @pytest.mark.parametrize(
        ("frm", "to"),
        [(QUEUED, COMPLETED), (RETRYING, PROCESSING), (COMPLETED, QUEUED),
         (FAILED, PROCESSING), (QUEUED, RETRYING), (NEW, PROCESSING)],
    )
    def test_an_illegal_move_raises_and_changes_nothing(self, frm: object, to: Status) -> None:
        table, store, (entry,) = table_with(Job("a"))
        entry.state = frm  # type: ignore[assignment]
        before = counts(table)
        with pytest.raises(InvalidTransition, match=rf"^job 'a' cannot move from {frm.name} "  # type: ignore[attr-defined]
                                                    rf"to {to.name}$"):
            table.transition(entry, to, 101.0)
        assert entry.state is frm
        assert counts(table) == before
        assert store.calls == []

    def test_a_life_keeps_counts_and_tells_the_store(self) -> None:
        table, store, (entry,) = table_with(Job("a"))
        assert counts(table)["NEW"] == 1 and table.occupied(Priority.MEDIUM) == 1
        table.transition(entry, QUEUED, 100.0)
        assert table.take(100.5) is entry
        assert (entry.state, entry.attempts) == (PROCESSING, 1)
        assert table.occupied(Priority.MEDIUM) == 0  # a running job holds no room
        entry.due = 160.0
        entry.last_error = "ValueError: no"
        assert table.transition(entry, RETRYING, 101.0) is True  # the earliest retry
        assert table.retries.next_due() == 160.0
        assert table.come_due(159.9) == []
        assert table.come_due(160.0) == [entry]
        assert table.take(161.0) is entry
        table.transition(entry, COMPLETED, 162.0)
        assert table.get("a") is None
        assert counts(table) == {"NEW": 0, "QUEUED": 0, "PROCESSING": 0, "RETRYING": 0,
                                 "COMPLETED": 1, "FAILED": 0}
        assert store.calls == [("started", "a", PROCESSING), ("retrying", "a", RETRYING),
                               ("started", "a", PROCESSING), ("finished", "a", COMPLETED)]
        record = store.get("a")
        assert record is not None
        assert (record.attempts, record.last_error, record.payload) == (2, "ValueError: no", b"")
        metrics = table.metrics(num_workers=1, elapsed=62.0, abandoned=0)
        assert (metrics.completed, metrics.retried, metrics.retrying, metrics.queued) == (
            1, 1, 0, 0)
        assert metrics.queue_latency.max == pytest.approx(1.0)  # ready at 160, started at 161
        assert metrics.utilization == pytest.approx((0.5 + 1.0) / 62.0)

    def test_a_refused_job_leaves_nothing(self) -> None:
        table, store, (entry,) = table_with(Job("a", priority=Priority.LOW))
        table.transition(entry, GONE, 100.0)
        assert table.get("a") is None and len(table) == 0
        assert counts(table, Priority.LOW) == dict.fromkeys(counts(table, Priority.LOW), 0)
        assert store.calls == []

    def test_a_failure_keeps_its_payload_for_requeue(self) -> None:
        table, store, (entry,) = table_with(Job("a", b"data"))
        table.transition(entry, QUEUED, 100.0)
        table.take(100.0)
        table.transition(entry, FAILED, 101.0)
        record = store.get("a")
        assert record is not None and (record.status, record.payload) == (FAILED, b"data")
        assert record.finished_at is not None

    def test_close_giving_up_releases_a_running_job(self) -> None:
        table, store, (entry,) = table_with(Job("a"))
        table.transition(entry, QUEUED, 100.0)
        table.take(100.0)
        table.transition(entry, QUEUED, 101.0)
        assert store.calls[-1] == ("released", "a", QUEUED)
        assert table.drop_all(102.0) == ["a"]
        assert len(table) == 0 and counts(table)["QUEUED"] == 0

    def test_close_forgetting_a_job_still_running_releases_it_first(self) -> None:
        # Left PROCESSING in the store, the next start would count the attempt as one its
        # process died in.
        table, store, (entry,) = table_with(Job("a"))
        table.transition(entry, QUEUED, 100.0)
        table.take(100.0)
        assert table.drop_all(101.0) == ["a"]
        assert store.calls[-1] == ("released", "a", QUEUED)
        assert len(table) == 0 and counts(table)["PROCESSING"] == 0

    def test_a_claimed_job_keeps_its_history(self) -> None:
        table, store, _ = table_with()
        stored = JobRecord("s", b"p", Priority.HIGH, "k", 2, 5.0, RETRYING, 1, "boom", 6.0,
                           None, 1e12, 42)
        entry = table.claim(stored, 100.0)
        assert entry.state is RETRYING and entry.record == stored
        assert table.count(RETRYING, Priority.HIGH) == 1
        assert store.calls == []  # the store handed it out: nothing to tell
        assert STORED is not entry.state

    def test_records_are_snapshots(self) -> None:
        table, _, (entry,) = table_with(Job("a"))
        before = entry.record
        table.transition(entry, QUEUED, 100.0)
        table.take(100.0)
        assert before.status is QUEUED and entry.record.status is PROCESSING
