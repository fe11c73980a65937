-- How many ranks (devices, one process each) a job runs on: a training job's world_size, else 1.
-- A worker leases only jobs that fit its free devices.
ALTER TABLE jobs ADD COLUMN ranks BIGINT NOT NULL DEFAULT 1;
-- Training jobs submitted before this migration: their world size is in the payload.
UPDATE jobs SET ranks = GREATEST(1, COALESCE(CAST(CAST(payload AS json) ->> 'world_size' AS BIGINT), 1))
    WHERE kind = 'train';
