"""The PostgreSQL store's SQL files, read as the store reads them (no server needed): every
named query is used, the status lists written in SQL are those of the state machine, and
the migrations lead to the version schema.sql makes."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

import jobqueue
from jobqueue.final._states import CANCELLABLE, FINISHED, LIVE, Status
from jobqueue.final.stores.base import JobRecord
from jobqueue.final.stores.postgres import queries
from jobqueue.final.stores.postgres.connections import CHANNEL
from jobqueue.final.stores.postgres.rows import COLUMNS

pytestmark = pytest.mark.timeout(30)

SQL = resources.files("jobqueue.final.stores.postgres") / "sql"
ROOT = Path(jobqueue.__file__).parent
#: Every set of statuses a status list in the SQL may stand for.
KNOWN = {
    "live": {s.value for s in LIVE},
    "finished": {s.value for s in FINISHED},
    "cancellable": {s.value for s in CANCELLABLE},
    "unheld, ready to claim": {s.value for s in LIVE} - {Status.SCHEDULED.value},
}


def all_sql() -> str:
    files = [SQL / "queries.sql", SQL / "schema.sql", SQL / "processes.sql"]
    files += sorted((SQL / "migrations").iterdir(), key=lambda p: p.name)
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def test_the_sql_files_ship_with_the_package() -> None:
    for name in ("queries.sql", "schema.sql", "processes.sql"):
        assert (SQL / name).is_file()
    assert [p.name for p in (SQL / "migrations").iterdir()]


@pytest.mark.parametrize("listed", sorted(set(
    re.findall(r"status IN \(([^)]*)\)", all_sql()))))
def test_each_status_list_is_one_the_state_machine_defines(listed: str) -> None:
    statuses = set(re.findall(r"'([a-z]+)'", listed))
    assert statuses in KNOWN.values(), f"({listed}) is no set of _states"


def test_the_columns_hole_is_a_record_in_order() -> None:
    assert COLUMNS[:len(JobRecord._fields)] == JobRecord._fields
    assert COLUMNS[len(JobRecord._fields):] == ("result_json",)
    assert ", ".join(COLUMNS) in queries.Q["get"]
    assert "{" not in "".join(queries.Q[name] for name in queries.Q
                              if name not in ("insert", "one_row", "many_rows"))


def test_every_notice_goes_to_the_channel_the_listener_hears() -> None:
    channels = set(re.findall(r"pg_notify\('([^']*)'", all_sql()))
    assert channels == {CHANNEL}


def test_every_named_query_is_run_somewhere() -> None:
    python = "\n".join(path.read_text(encoding="utf-8")
                       for path in (ROOT / "final" / "stores" / "postgres").glob("*.py"))
    fragments = {"insert", "one_row", "many_rows", "held"}  # (composed in queries.py)
    unused = [name for name in queries.Q
              if name not in fragments and f'"{name}"' not in python]
    assert not unused, f"queries.sql names queries no code runs: {unused}"


def test_one_requeue_one_cancel_one_purge() -> None:
    """Store and admin run the same statement: no other SQL changes a status to these."""
    python = "\n".join(path.read_text(encoding="utf-8") for path in ROOT.rglob("*.py"))
    assert "UPDATE jobqueue_jobs" not in python and "DELETE FROM jobqueue_jobs" not in python
    text = all_sql()
    assert len(re.findall(r"status = 'cancelled'", text)) == 1
    assert len(re.findall(r"SET status = 'queued', attempts = 0", text)) == 1


def test_the_migrations_lead_to_the_schema_version() -> None:
    numbers = sorted(queries.MIGRATIONS)
    assert numbers == list(range(2, queries.SCHEMA_VERSION + 1))
    for path in (SQL / "migrations").iterdir():
        assert re.fullmatch(r"\d{3}_[a-z_]+\.sql", path.name), path.name


def test_a_name_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="named twice"):
        queries._named("-- a --\nSELECT 1\n-- a --\nSELECT 2\n")
