"""The SQL of the PostgreSQL store, read once from ``sql/*.sql`` (as procrastinate keeps its
queries in ``sql/queries.sql``): the store, its writer and the admin module run the same
named statements, so that there is one requeue, one cancel, one purge.

``queries.sql`` holds named blocks, each starting with a line ``-- name --``; ``schema.sql``
and ``processes.sql`` make the tables; ``migrations/NNN_*.sql`` bring a database of
schema version NNN - 1 to NNN.
"""

from __future__ import annotations

import re
from importlib import resources

from jobqueue.final.stores.postgres.rows import COLUMNS

__all__ = ["INSERT_MANY", "INSERT_ONE", "MIGRATIONS", "PROCESSES", "Q", "SCHEMA",
           "SCHEMA_VERSION"]

_SQL = resources.files("jobqueue.final.stores.postgres") / "sql"
_NAME = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def _read(name: str) -> str:
    return (_SQL / name).read_text(encoding="utf-8")


def _named(text: str) -> dict[str, str]:
    """The blocks of ``text`` by name, each with its {columns} hole filled."""
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query {name!r} is named twice in queries.sql")
        lines = body.strip().splitlines()
        while lines and lines[0].startswith("--"):  # its description
            del lines[0]
        sql = "\n".join(lines)
        sql = sql.replace("{columns:j}", ", ".join("j." + column for column in COLUMNS))
        blocks[name] = sql.replace("{columns}", ", ".join(COLUMNS))
    return blocks


#: Every named statement of queries.sql.
Q = _named(_read("queries.sql"))
#: New jobs: one (VALUES) or many (unnest).
INSERT_ONE = Q["insert"].replace("{rows}", Q["one_row"]).replace("{held}", Q["held"])
INSERT_MANY = Q["insert"].replace("{rows}", Q["many_rows"]).replace("{held}", Q["held"])

#: The tables at the newest version, and the processes' list, which came later.
SCHEMA = _read("schema.sql")
PROCESSES = _read("processes.sql")
#: The upgrade to each version from the one before, by the version it makes.
MIGRATIONS = {int(path.name[:3]): path.read_text(encoding="utf-8")
              for path in (_SQL / "migrations").iterdir() if path.name.endswith(".sql")}
#: The version schema.sql makes: the newest migration's.
SCHEMA_VERSION = max(MIGRATIONS)
