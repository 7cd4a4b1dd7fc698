-- The jobqueue tables at the newest schema version, made by the first process that opens an
-- empty database (schema.py, under an advisory lock). Status lists in partial indexes are
-- literal: tests/test_pg_sql.py checks them against jobqueue.final._states, and every query
-- that must use an index repeats the same literal list (a generic plan cannot prove that a
-- parameter implies an index's predicate).
CREATE TABLE IF NOT EXISTS jobqueue_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS jobqueue_seq;
CREATE SEQUENCE IF NOT EXISTS jobqueue_lease_ids;
CREATE TABLE IF NOT EXISTS jobqueue_jobs (
    queue text NOT NULL,
    id text NOT NULL,
    payload bytea NOT NULL,
    priority smallint NOT NULL,
    kind text NOT NULL,
    max_retries integer,
    created_at double precision NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    started_at double precision,
    finished_at double precision,
    due_at double precision,
    seq bigint NOT NULL,
    result bytea,
    result_json boolean NOT NULL DEFAULT false,
    owner text,
    lease_id bigint,
    lease_until timestamptz,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS jobqueue_jobs_ready ON jobqueue_jobs (queue, priority, seq)
    WHERE owner IS NULL AND status IN ('queued', 'processing', 'retrying');
CREATE INDEX IF NOT EXISTS jobqueue_jobs_leases ON jobqueue_jobs (queue, lease_until)
    WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobqueue_jobs_finished ON jobqueue_jobs (queue, finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS jobqueue_jobs_scheduled ON jobqueue_jobs (queue, due_at)
    WHERE owner IS NULL AND status = 'scheduled';
