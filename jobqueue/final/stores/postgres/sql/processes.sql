-- Every process serving a queue: for people (jobqueue stats), nothing decides anything by
-- it. It came after schema version 3 without a new version: the first process that knows
-- it makes it, and processes that do not know it run on.
CREATE TABLE IF NOT EXISTS jobqueue_processes (
    owner text PRIMARY KEY,
    queue text NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    lease_until timestamptz NOT NULL
);
