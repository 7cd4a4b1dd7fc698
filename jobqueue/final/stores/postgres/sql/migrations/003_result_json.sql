-- From version 2: a task's result is marked JSON, so that every process decodes it. Adding
-- a column with a constant default rewrites nothing: processes of version 2 may run on.
ALTER TABLE jobqueue_jobs ADD COLUMN IF NOT EXISTS result_json boolean NOT NULL DEFAULT false;
