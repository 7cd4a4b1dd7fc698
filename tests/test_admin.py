"""One admin API for both stores: the same calls, the same answers, on an LMDB directory
and on a queue in PostgreSQL (``jobqueue.final.admin``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobqueue import final
from jobqueue.final import Status, admin

pytestmark = pytest.mark.timeout(60)


def flaky(payload: bytes) -> None:
    if payload == b"fail":
        raise ConnectionError("receiver down")


@pytest.fixture(params=["lmdb", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A store holding one COMPLETED, two FAILED and one SCHEDULED job, no process on it."""
    if request.param == "lmdb":
        fields: dict[str, object] = {"persist_path": str(tmp_path / "jobs")}
        where, queue = str(tmp_path / "jobs"), {}
    else:
        url = request.getfixturevalue("database_url")
        fields = {"database_url": url, "queue_name": "hooks"}
        where, queue = url, {"queue": "hooks"}
    config = final.Config(handler=flaky, max_retries=0, **fields)  # type: ignore[arg-type]
    with final.JobQueue(config) as jq:
        jq.enqueue_many([final.Job("ok", b"ok"), final.Job("bad-1", b"fail"),
                         final.Job("bad-2", b"fail")])
        jq.enqueue(final.Job("later", b"ok"), delay=3600)
        assert jq.join(30, scheduled=False)
    return where, queue


def statuses(where: str, queue: dict[str, str]) -> dict[str, Status]:
    with admin.open_reader(where, **queue) as reader:
        return {record.id: record.status for record in reader.records()}


def test_reads_are_the_same(where: tuple[str, dict[str, str]]) -> None:
    path, queue = where
    with admin.open_reader(path, **queue) as reader:
        assert reader.get("bad-1").status is Status.FAILED  # type: ignore[union-attr]
        assert reader.get("nope") is None
        counts = reader.counts()
        assert counts[Status.FAILED, 1] == 2 and counts[Status.COMPLETED, 1] == 1
        assert reader.oldest_queued() is None
        chosen = reader.select("failed", None, None, 1, newest=False)
        assert [(r.id, size) for r, size in chosen] == [("bad-1", 4)]
        assert reader.queues() in (None, {"hooks": 4})
        assert reader.details()


def test_repairs_are_the_same(where: tuple[str, dict[str, str]]) -> None:
    path, queue = where
    with pytest.raises(ValueError, match="not failed"):
        admin.requeue(path, ["ok"], **queue)
    with pytest.raises(KeyError):
        admin.cancel(path, ["nope"], **queue)
    assert statuses(path, queue)["ok"] is Status.COMPLETED  # nothing was written
    assert sorted(admin.requeue(path, None, **queue)) == ["bad-1", "bad-2"]
    assert admin.cancel(path, ["bad-1", "later"], **queue) == ["bad-1", "later"]
    with pytest.raises(ValueError, match="live"):
        admin.purge(path, ["bad-2"], **queue)
    assert admin.purge(path, None, [Status.CANCELLED], **queue) in (
        ["bad-1", "later"], ["later", "bad-1"])
    assert statuses(path, queue) == {"ok": Status.COMPLETED, "bad-2": Status.QUEUED}
    assert admin.purge(path, ["bad-2"], force=True, **queue) == ["bad-2"]
