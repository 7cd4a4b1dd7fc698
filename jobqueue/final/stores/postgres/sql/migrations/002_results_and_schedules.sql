-- From version 1: results, and the SCHEDULED and CANCELLED statuses. Every process of the
-- older version must be stopped first: it cannot read the new statuses, and the index builds
-- lock the table against writers while they run.
ALTER TABLE jobqueue_jobs ADD COLUMN IF NOT EXISTS result bytea;
DROP INDEX IF EXISTS jobqueue_jobs_finished;
CREATE INDEX jobqueue_jobs_finished ON jobqueue_jobs (queue, finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS jobqueue_jobs_scheduled ON jobqueue_jobs (queue, due_at)
    WHERE owner IS NULL AND status = 'scheduled';
