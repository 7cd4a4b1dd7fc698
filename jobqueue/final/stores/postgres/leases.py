"""The leases one process holds on jobs of a PostgreSQL queue: which claim of each job it
holds (``lease_id``), their renewal by heartbeats, and their release at close.

A claim stamps a row with this process's name, a new ``lease_id`` and ``lease_until``; the
writer's heartbeat renews, every third of a lease, the rows this process knows it holds,
and only those, with ``SKIP LOCKED`` (a row another transaction holds is skipped, and
still held: not forgotten). Rows of this process it does not know of (a claim whose answer
was lost with its connection) are handed back once they lapse. A row it knew but found
neither renewed nor locked was taken over by another process: this one must forget it.
"""

from __future__ import annotations

import logging
from typing import Any

from jobqueue.final.stores.postgres.connections import classify
from jobqueue.final.stores.postgres.queries import Q
from jobqueue.final.stores.postgres.rows import first_line

__all__ = ["Leases"]

logger = logging.getLogger("jobqueue")


class Leases:
    """The lease of every job a store holds, by id (``held``), and the statements that
    renew and release them. ``held`` changes by single dict operations: the claimer adds,
    the queue's calls (under its mutex) and the writer read and remove."""

    def __init__(self, queue: str, owner: str, tag: str, lease: float) -> None:
        self.queue = queue
        self.owner = owner
        self.tag = tag
        self.lease = lease
        self.held: dict[str, int] = {}

    def renew(self, conn: Any, held: list[tuple[str, int]], flying: list[int]
              ) -> list[tuple[str, int]]:
        """Renew the leases ``held`` (a copy of ``held.items()``, taken before the moves in
        flight were read: a job finished in between is in one or the other), and those of
        ``flying`` moves (written soon: their lease still counts); hand back rows of this
        process it does not know of. Returns the held (id, lease) pairs found neither
        renewed nor locked: taken over."""
        renewed: set[int] = set()
        locked: set[int] = set()
        for lease, was_renewed in conn.execute(Q["heartbeat"], {
            "queue": self.queue, "owner": self.owner, "lease": self.lease,
            "tag": self.tag, "leases": [lease for _, lease in held] + flying,
        }).fetchall():
            if lease is not None:
                (renewed if was_renewed else locked).add(lease)
        return [(job_id, lease) for job_id, lease in held
                if lease not in renewed and lease not in locked]

    def say_alive(self, conn: Any) -> None:
        """Say this process is alive, for people (``jobqueue stats``): never at the cost
        of the leases, so an error other than a lost connection is logged, not raised."""
        try:
            conn.execute(Q["alive"], {"owner": self.owner, "queue": self.queue,
                                      "lease": self.lease})
        except Exception as exc:
            if classify(exc, conn) == "connection":
                raise
            logger.error("could not say this process is alive in jobqueue_processes: %s",
                         first_line(exc))

    def release_all(self, conn: Any) -> None:
        """Hand every job this process holds back to the queue, for any process: at close."""
        conn.execute(Q["release_all"], {"queue": self.queue, "owner": self.owner,
                                        "tag": self.tag}).fetchall()
        try:  # (a process that does not say goodbye is listed gone, then forgotten)
            conn.execute(Q["goodbye"], {"owner": self.owner})
        except Exception as exc:
            logger.info("could not take this process out of jobqueue_processes: %s",
                        first_line(exc))
        self.held.clear()
