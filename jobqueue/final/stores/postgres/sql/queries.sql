-- The PostgreSQL store's statements, by name: a line "-- name --" starts each, and the
-- comments under it say what it does. queries.py reads this file once; the store, its
-- writer and the admin module run the same statements (one requeue, one cancel, one purge).
--
-- Parameters are psycopg's %(name)s. One hole is filled when the file is read: {columns}
-- (or {columns:j}, each prefixed "j.") is every column of a JobRecord, in its order
-- (rows.COLUMNS). Status lists are literal, as the partial indexes of schema.sql are: a
-- generic plan cannot prove that a parameter implies an index's predicate.
-- tests/test_pg_sql.py checks each list against jobqueue.final._states.
-- Notices go to the channel 'jobqueue', as "<kind><tag><queue>": kind is a priority (new
-- jobs of it) or d (jobs finished), tag the sender's (8 characters; '--------' for a
-- sender that is no store: the CLI, a caller's transaction).

-- insert --
-- New jobs, {rows} being one_row or many_rows. A live id is a duplicate: ON CONFLICT
-- updates only a finished row (a new life), so a live one returns no row. Notices are sent
-- for the priorities in %(notify)s.
WITH added AS (
    INSERT INTO jobqueue_jobs AS j
        (queue, id, payload, priority, kind, max_retries, created_at, status, due_at, seq,
         owner, lease_id, lease_until)
    {rows}
    ON CONFLICT (queue, id) DO UPDATE SET
        payload = excluded.payload, priority = excluded.priority, kind = excluded.kind,
        max_retries = excluded.max_retries, created_at = excluded.created_at,
        status = excluded.status, attempts = 0, last_error = NULL, started_at = NULL,
        finished_at = NULL, due_at = excluded.due_at, seq = excluded.seq, result = NULL,
        result_json = false, owner = excluded.owner, lease_id = excluded.lease_id,
        lease_until = excluded.lease_until
    WHERE j.status IN ('cancelled', 'completed', 'failed') AND %(revive)s
    RETURNING j.id, j.priority, j.lease_id
)
SELECT id, lease_id, CASE WHEN priority = ANY(%(notify)s::smallint[])
    THEN pg_notify('jobqueue', priority::text || %(tag)s || %(queue)s) END
FROM added

-- one_row --
-- The rows of insert: one job. Held by %(owner)s from the start when it is not NULL.
VALUES (
    %(queue)s, %(id)s, %(payload)s, %(priority)s, %(kind)s, %(max_retries)s::integer,
    %(created)s, %(status)s, %(due)s::float8, nextval('jobqueue_seq'), {held})

-- many_rows --
-- The rows of insert: many jobs, in the order given.
    SELECT %(queue)s, u.id, u.payload, u.priority, u.kind, u.max_retries, u.created_at,
           u.status, u.due_at, nextval('jobqueue_seq'), {held}
    FROM unnest(%(ids)s::text[], %(payloads)s::bytea[], %(priorities)s::smallint[],
                %(kinds)s::text[], %(max_retries)s::integer[], %(created)s::float8[],
                %(statuses)s::text[], %(due)s::float8[])
         WITH ORDINALITY AS u(id, payload, priority, kind, max_retries, created_at, status,
                              due_at, n)
    ORDER BY u.n

-- held --
-- The owner, lease_id and lease_until of new rows: held by %(owner)s, or by none.
%(owner)s, CASE WHEN %(owner)s::text IS NULL THEN NULL
                          ELSE nextval('jobqueue_lease_ids') END,
           CASE WHEN %(owner)s::text IS NULL THEN NULL
                ELSE now() + make_interval(secs => %(lease)s) END

-- claim --
-- The oldest unheld live jobs of a priority, scheduled ones come due, then live jobs whose
-- lease lapsed. Rows another claimer has locked are skipped, not waited for; a finished row
-- is never taken. The rows are locked as they are picked, and updated by ctid (see move).
-- A scheduled job claimed once due is QUEUED from then on. A lapsed lease of the claimer's
-- own is not taken back: its queue still holds that job (it was paused), and its start is
-- refused if another process took the job meanwhile. %(kinds)s NULL: every kind.
WITH unheld AS (
    SELECT ctid AS tid, id, seq, NULL::text AS old_owner FROM jobqueue_jobs
    WHERE queue = %(queue)s AND priority = %(priority)s AND owner IS NULL
      AND status IN ('queued', 'processing', 'retrying')
      AND (%(kinds)s::text[] IS NULL OR kind = ANY(%(kinds)s::text[]))
    ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), due AS (
    SELECT ctid AS tid, id, seq, NULL::text AS old_owner FROM jobqueue_jobs
    WHERE queue = %(queue)s AND owner IS NULL AND status = 'scheduled'
      AND due_at <= %(now)s AND priority = %(priority)s
      AND (%(kinds)s::text[] IS NULL OR kind = ANY(%(kinds)s::text[]))
    ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), lapsed AS (
    SELECT ctid AS tid, id, seq, owner AS old_owner FROM jobqueue_jobs
    WHERE queue = %(queue)s AND owner IS NOT NULL AND lease_until < now()
      AND owner <> %(owner)s AND priority = %(priority)s
      AND status IN ('processing', 'queued', 'retrying', 'scheduled')
      AND (%(kinds)s::text[] IS NULL OR kind = ANY(%(kinds)s::text[]))
    ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT * FROM unheld UNION ALL SELECT * FROM due UNION ALL SELECT * FROM lapsed
    ORDER BY seq LIMIT %(limit)s
)
UPDATE jobqueue_jobs AS j
SET owner = %(owner)s, lease_id = nextval('jobqueue_lease_ids'),
    lease_until = now() + make_interval(secs => %(lease)s),
    status = CASE WHEN j.status = 'scheduled' AND j.due_at <= %(now)s THEN 'queued'
                  ELSE j.status END,
    due_at = CASE WHEN j.status = 'scheduled' AND j.due_at <= %(now)s THEN NULL
                  ELSE j.due_at END
FROM picked WHERE j.ctid = picked.tid
RETURNING {columns:j}, j.lease_id, picked.old_owner

-- hand_back --
-- Jobs claimed while the claimer still held an old life of them, handed back: skipped if
-- another transaction holds the row (the lease then lapses, and any process claims it).
WITH back AS (
    UPDATE jobqueue_jobs SET owner = NULL, lease_id = NULL, lease_until = NULL
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM jobqueue_jobs WHERE queue = %(queue)s AND lease_id = ANY(%(leases)s)
        FOR UPDATE SKIP LOCKED))
    RETURNING priority)
SELECT pg_notify('jobqueue', priority::text || %(tag)s || %(queue)s)
FROM (SELECT DISTINCT priority FROM back) AS p

-- move --
-- The writer's batch of moves, one index probe each (LATERAL, whatever the planner's
-- statistics say: on a young table they say it is empty). Each row is locked in the order
-- of the ids (the batch comes sorted), skipping rows another transaction holds, and only if
-- it is live and still held under the move's lease. Every move comes back with its fate:
-- w(ritten), b(usy: its row was locked) or r(efused). The batch is one JSON parameter, a
-- list of [id, lease_id, status, attempts, last_error, started_at, finished_at, due_at,
-- held, result (base64), result is JSON]: one C call encodes it, where psycopg dumped
-- eleven arrays element by element, at 80 us a batch.
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
          AND status IN ('processing', 'queued', 'retrying', 'scheduled')
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
                     AND lease_id = u.lease_id
                     AND status IN ('processing', 'queued', 'retrying', 'scheduled')) THEN 'b'
        -- Applied already: this batch was sent before, and its answer lost with the link.
        WHEN EXISTS (SELECT 1 FROM jobqueue_jobs WHERE queue = %(queue)s AND id = u.id
                     AND status = u.status AND attempts = u.attempts
                     AND started_at IS NOT DISTINCT FROM u.started_at
                     AND finished_at IS NOT DISTINCT FROM u.finished_at
                     AND (u.held OR lease_id IS NULL)) THEN 'w'
        ELSE 'r' END,
    CASE WHEN m.status IN ('cancelled', 'completed', 'failed') AND %(notify)s
        THEN pg_notify('jobqueue', 'd' || %(tag)s || %(queue)s) END
FROM u LEFT JOIN moved AS m ON m.id = u.id

-- drop --
-- A move PostgreSQL refused the values of: the job, FAILED with its words, still only under
-- the move's lease and while live.
WITH failed AS (
    UPDATE jobqueue_jobs SET status = 'failed', last_error = %(error)s,
        finished_at = %(now)s, due_at = NULL, result = NULL, result_json = false,
        owner = NULL, lease_id = NULL, lease_until = NULL
    WHERE queue = %(queue)s AND id = %(id)s AND lease_id = %(lease)s
      AND status IN ('processing', 'queued', 'retrying', 'scheduled')
    RETURNING id)
SELECT id, pg_notify('jobqueue', 'd' || %(tag)s || %(queue)s) FROM failed

-- heartbeat --
-- Leases renewed, rows another transaction holds skipped (and still held: not forgotten);
-- then rows of this process whose lease lapsed and that it does not know it holds, handed
-- back: a claim whose answer never came (its connection died) left them.
WITH mine AS (
    SELECT ctid AS tid, lease_id FROM jobqueue_jobs
    WHERE queue = %(queue)s AND owner = %(owner)s AND lease_id = ANY(%(leases)s)
      AND status IN ('processing', 'queued', 'retrying', 'scheduled')
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
    SELECT pg_notify('jobqueue', priority::text || %(tag)s || %(queue)s)
    FROM (SELECT DISTINCT priority FROM orphans) AS p
)
SELECT lease_id, true FROM renewed
UNION ALL SELECT lease_id, false FROM mine WHERE lease_id NOT IN (SELECT lease_id FROM renewed)
UNION ALL SELECT NULL::bigint, NULL::boolean FROM notified

-- release_all --
-- Every job a process holds, back to the queue for any process: at its close.
WITH released AS (
    UPDATE jobqueue_jobs SET owner = NULL, lease_id = NULL, lease_until = NULL
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM jobqueue_jobs WHERE queue = %(queue)s AND owner = %(owner)s
        FOR UPDATE SKIP LOCKED))
    RETURNING priority)
SELECT pg_notify('jobqueue', priority::text || %(tag)s || %(queue)s)
FROM (SELECT DISTINCT priority FROM released) AS held

-- notify --
-- A notice on its own: a trailing one for the jobs a busy producer did not notify of, or a
-- listener's stop.
SELECT pg_notify('jobqueue', %(payload)s)

-- trim --
-- Finished jobs older than the retention's newest, a batch at a time. The cut-off is read
-- without locks; rows another transaction holds (a new life being enqueued) are skipped,
-- and one made live again meanwhile is skipped on the re-check.
WITH cutoff AS (
    SELECT finished_at, seq FROM jobqueue_jobs
    WHERE queue = %(queue)s AND status IN ('cancelled', 'completed', 'failed')
    ORDER BY finished_at DESC, seq DESC OFFSET %(keep)s LIMIT 1
)
DELETE FROM jobqueue_jobs WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM jobqueue_jobs
    WHERE queue = %(queue)s AND status IN ('cancelled', 'completed', 'failed')
      AND finished_at <= (SELECT finished_at FROM cutoff)
      AND (finished_at, seq) <= (SELECT finished_at, seq FROM cutoff)
    ORDER BY finished_at, seq LIMIT %(batch)s FOR UPDATE SKIP LOCKED))
  AND status IN ('cancelled', 'completed', 'failed')

-- alive --
-- A process says it is alive: when it starts, and with every heartbeat.
INSERT INTO jobqueue_processes AS p (owner, queue, started_at, heartbeat_at, lease_until)
VALUES (%(owner)s, %(queue)s, now(), now(), now() + make_interval(secs => %(lease)s))
ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now(), lease_until = excluded.lease_until

-- forget_gone --
-- Processes gone for a day are forgotten (one that crashed leaves its row).
DELETE FROM jobqueue_processes WHERE lease_until < now() - interval '1 day'

-- goodbye --
-- A process that closes takes itself out of the list.
DELETE FROM jobqueue_processes WHERE owner = %(owner)s

-- requeue --
-- FAILED jobs QUEUED again from attempt 0, for any process to claim, in one statement: two
-- processes (or a process and the CLI) requeueing a job at once run it once.
WITH again AS (
    UPDATE jobqueue_jobs SET status = 'queued', attempts = 0, last_error = NULL,
        started_at = NULL, finished_at = NULL, due_at = NULL,
        seq = nextval('jobqueue_seq'), owner = NULL, lease_id = NULL, lease_until = NULL
    WHERE queue = %(queue)s AND id = ANY(%(ids)s::text[]) AND status = 'failed'
    RETURNING id, priority)
SELECT id, priority, pg_notify('jobqueue', priority::text || %(tag)s || %(queue)s) FROM again

-- cancel --
-- Jobs no process holds under a live lease (QUEUED, SCHEDULED or RETRYING) CANCELLED. A
-- lapsed claim it overrides is cleared: the process that held it (paused, say) can neither
-- start the job nor write an outcome over the cancel.
WITH cancelled AS (
    UPDATE jobqueue_jobs SET status = 'cancelled', finished_at = %(now)s,
        due_at = NULL, owner = NULL, lease_id = NULL, lease_until = NULL
    WHERE queue = %(queue)s AND id = ANY(%(ids)s::text[])
      AND status IN ('queued', 'retrying', 'scheduled')
      AND (owner IS NULL OR lease_until < now())
    RETURNING id)
SELECT id, pg_notify('jobqueue', 'd' || %(tag)s || %(queue)s) FROM cancelled

-- purge --
-- Jobs deleted: those of %(ids)s (NULL: any) in %(statuses)s (NULL: any), but for rows a
-- process holds under a live lease (it runs them, or writes their outcome). Locked in id
-- order, so that two repairs never deadlock.
DELETE FROM jobqueue_jobs WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM jobqueue_jobs
    WHERE queue = %(queue)s AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
      AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
      AND (owner IS NULL OR lease_until < now())
    ORDER BY id FOR UPDATE))
RETURNING id

-- lock_jobs --
-- Jobs a repair is about, locked until its transaction ends, in id order, with the
-- process that holds each under a live lease (NULL: none). A lease lapses as claims
-- see it: once lease_until < now().
SELECT {columns}, CASE WHEN lease_until >= now() THEN owner END FROM jobqueue_jobs
WHERE queue = %(queue)s AND id = ANY(%(ids)s::text[]) ORDER BY id FOR UPDATE

-- failed_ids --
-- Every FAILED job of a queue, locked in id order: a repair of all of them.
SELECT id FROM jobqueue_jobs WHERE queue = %(queue)s AND status = 'failed'
ORDER BY id FOR UPDATE

-- get --
SELECT {columns} FROM jobqueue_jobs WHERE queue = %(queue)s AND id = %(id)s

-- dead_letters --
SELECT {columns} FROM jobqueue_jobs WHERE queue = %(queue)s AND status = 'failed'
ORDER BY finished_at, seq

-- records --
-- Every job of a queue, oldest first.
SELECT {columns} FROM jobqueue_jobs WHERE queue = %(queue)s ORDER BY created_at, id

-- select_jobs --
-- Jobs matching the filters (NULL: any), without payload or result: their payload's size
-- instead. Oldest first, or newest first with %(newest)s.
SELECT id, ''::bytea, priority, kind, max_retries, created_at, status, attempts,
       last_error, started_at, finished_at, due_at, seq, NULL::bytea, false,
       octet_length(payload)
FROM jobqueue_jobs
WHERE queue = %(queue)s AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(priority)s::smallint IS NULL OR priority = %(priority)s::smallint)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
ORDER BY CASE WHEN %(newest)s THEN created_at END DESC,
         CASE WHEN %(newest)s THEN id END DESC, created_at, id
LIMIT %(limit)s

-- has_live --
-- Whether any process has work in a queue: %(statuses)s, or SCHEDULED and due by %(due)s
-- (a job scheduled for a time now past stays so in the table until claimed).
SELECT EXISTS (SELECT 1 FROM jobqueue_jobs WHERE queue = %(queue)s
    AND (status = ANY(%(statuses)s::text[]) OR (status = 'scheduled' AND due_at <= %(due)s)))

-- counts --
-- Jobs by priority and status, counted by the database (no payload is read).
SELECT priority, status, count(*) FROM jobqueue_jobs WHERE queue = %(queue)s GROUP BY 1, 2

-- holders --
-- The processes holding jobs of a queue under a live lease, and how many each.
SELECT owner, count(*) FROM jobqueue_jobs
WHERE queue = %(queue)s AND owner IS NOT NULL AND lease_until >= now()
GROUP BY owner ORDER BY owner

-- lapsed --
-- Jobs whose holder stopped heartbeating: any process claims them next.
SELECT count(*) FROM jobqueue_jobs
WHERE queue = %(queue)s AND owner IS NOT NULL AND lease_until < now()

-- oldest_queued --
SELECT min(created_at) FROM jobqueue_jobs WHERE queue = %(queue)s AND status = 'queued'

-- processes --
-- The processes serving a queue, from their own heartbeats, with the jobs each holds.
SELECT p.owner, extract(epoch FROM p.started_at), extract(epoch FROM p.heartbeat_at),
       extract(epoch FROM p.lease_until), p.lease_until > now(),
       (SELECT count(*) FROM jobqueue_jobs j WHERE j.queue = p.queue AND j.owner = p.owner)
FROM jobqueue_processes p WHERE p.queue = %(queue)s ORDER BY p.started_at, p.owner

-- has_processes --
SELECT to_regclass('jobqueue_processes') IS NOT NULL

-- queues --
-- Every queue of the database with jobs, and its number of jobs.
SELECT queue, count(*) FROM jobqueue_jobs GROUP BY queue ORDER BY queue

-- queues_and_processes --
-- Every queue of the database with jobs or processes, and its number of jobs.
SELECT queue, sum(n)::bigint FROM (
    SELECT queue, count(*) AS n FROM jobqueue_jobs GROUP BY queue
    UNION ALL SELECT queue, 0 FROM jobqueue_processes) AS q
GROUP BY queue ORDER BY queue

-- table_bytes --
SELECT pg_total_relation_size('jobqueue_jobs')

-- last_seq --
SELECT last_value FROM jobqueue_seq

-- identity --
-- What says which database a connection reaches, whatever the spelling of its address:
-- the cluster's system identifier and the database's name.
SELECT (SELECT system_identifier FROM pg_control_system())::text, current_database()

-- schema_missing --
SELECT to_regclass('jobqueue_meta') IS NULL OR to_regclass('jobqueue_jobs') IS NULL

-- processes_missing --
SELECT to_regclass('jobqueue_processes') IS NULL

-- schema_version --
SELECT value FROM jobqueue_meta WHERE key = 'schema_version'

-- set_schema_version --
INSERT INTO jobqueue_meta VALUES ('schema_version', %(version)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- schema_lock --
-- Serialises the making and upgrading of the tables (the number names the lock).
SELECT pg_advisory_xact_lock(7669456929875653989)
