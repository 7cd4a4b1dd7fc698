"""The PostgreSQL store: one queue shared by every process that names the same database and
queue name, on any host.

- :mod:`.store`: ``PostgresStore``, the contract in PostgreSQL: claims, reads, repairs.
- :mod:`.inserts`: new jobs, alone, grouped across threads (:mod:`.group_insert`) or in a
  caller's transaction.
- :mod:`.writer`: the writer thread, which writes held jobs' moves in batches.
- :mod:`.leases`: the writer's heartbeat of the leases this process holds, and their release.
- :mod:`.retention`: the trim of finished jobs beyond the retention.
- :mod:`.listener`: the thread that hears other processes' notices.
- :mod:`.schema`: tables, versions and migrations; :mod:`.connections`: connections and errors.
- :mod:`.queries`: the SQL, kept in ``sql/*.sql`` as named queries.
- :mod:`.admin`: reads and repairs on the same queries (through :mod:`jobqueue.final.admin`).

psycopg is imported when a store is opened, so that ``jobqueue.final`` works without it.
"""

from jobqueue.final.stores.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
