"""The PostgreSQL store's services, each on its own (River tests its services so): the notice
gaps, the retention's trim and the leases' heartbeat, against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobqueue.final.stores.postgres.leases import Leases
from jobqueue.final.stores.postgres.notices import DONE, NOTIFY_GAP, NoticeGaps
from jobqueue.final.stores.postgres.retention import Retention
from jobqueue.final.stores.postgres.schema import create_schema

pytestmark = pytest.mark.timeout(60)


class TestNoticeGaps:
    def test_one_notice_per_gap_and_a_trailing_one_for_the_rest(self) -> None:
        gaps = NoticeGaps()
        assert gaps.new_jobs([0, 1], now=100.0) == ([0, 1], False)
        assert gaps.new_jobs([0], now=100.0 + NOTIFY_GAP / 2) == ([], True)  # within the gap
        assert gaps.next_due(1e9) == pytest.approx(100.0 + NOTIFY_GAP)
        assert gaps.take_due(100.0 + NOTIFY_GAP / 2) == []  # not yet
        assert gaps.take_due(100.0 + 1.5 * NOTIFY_GAP) == [0]  # the trailing one, once
        assert gaps.take_due(200.0) == []

    def test_finished_jobs_and_a_failed_batch(self) -> None:
        gaps = NoticeGaps()
        assert gaps.finished_due(100.0)
        gaps.finished(True, 100.0)
        assert not gaps.finished_due(100.0)
        gaps.finished(False, 100.0)  # owed
        assert gaps.take_due(100.0 + 1.5 * NOTIFY_GAP) == [DONE]
        gaps.unsent([DONE])  # that batch failed: owed again
        assert gaps.take_due(100.0 + 3 * NOTIFY_GAP) == [DONE]


@pytest.fixture
def conn(database_url: str) -> Iterator[Any]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        create_schema(conn)
        yield conn


def add(conn: Any, job_id: str, status: str, finished_at: float | None = None,
        owner: str | None = None, lease_id: int | None = None, lapsed: bool = False) -> None:
    conn.execute(
        "INSERT INTO jobqueue_jobs (queue, id, payload, priority, kind, created_at, status, "
        "finished_at, seq, owner, lease_id, lease_until) VALUES ('q', %s, '', 1, '', 0, %s, "
        "%s, nextval('jobqueue_seq'), %s, %s, CASE WHEN %s::text IS NULL THEN NULL "
        "WHEN %s THEN now() - interval '1 minute' ELSE now() + interval '1 minute' END)",
        (job_id, status, finished_at, owner, lease_id, owner, lapsed))


class TestRetention:
    def test_trims_the_oldest_finished_once_a_tenth_more_finished(self, conn: Any) -> None:
        for n in range(30):
            add(conn, f"done-{n:02}", "completed", finished_at=float(n))
        add(conn, "live", "queued")
        retention = Retention("q", retention=20)
        retention.finished(2)  # not a tenth of the retention: no trim yet
        retention.trim_if_due(conn)
        assert conn.execute("SELECT count(*) FROM jobqueue_jobs").fetchone()[0] == 31
        retention.finished(1)
        retention.trim_if_due(conn)
        kept = [row[0] for row in conn.execute("SELECT id FROM jobqueue_jobs ORDER BY id")]
        assert kept == [f"done-{n:02}" for n in range(10, 30)] + ["live"]


class TestLeases:
    def test_renews_what_it_holds_and_names_what_another_took(self, conn: Any) -> None:
        add(conn, "mine", "processing", owner="me", lease_id=1)
        add(conn, "taken", "queued", owner="other", lease_id=2)  # another process has it now
        add(conn, "orphan", "queued", owner="me", lease_id=3, lapsed=True)  # a lost claim
        leases = Leases("q", owner="me", tag="t" * 8, lease=30.0)
        leases.held.update(mine=1, taken=99)
        lost = leases.renew(conn, list(leases.held.items()), flying=[])
        assert lost == [("taken", 99)]
        rows = dict(conn.execute("SELECT id, owner FROM jobqueue_jobs").fetchall())
        assert rows == {"mine": "me", "taken": "other", "orphan": None}  # handed back
        assert conn.execute("SELECT lease_until > now() + interval '20 seconds' FROM "
                            "jobqueue_jobs WHERE id = 'mine'").fetchone()[0]

    def test_release_all_hands_back_every_job_it_holds(self, conn: Any) -> None:
        add(conn, "a", "queued", owner="me", lease_id=1)
        add(conn, "b", "queued", owner="other", lease_id=2)
        leases = Leases("q", owner="me", tag="t" * 8, lease=30.0)
        leases.held["a"] = 1
        leases.release_all(conn)
        assert dict(conn.execute("SELECT id, owner FROM jobqueue_jobs").fetchall()) == {
            "a": None, "b": "other"}
        assert leases.held == {}
