-- How many ranks (devices, one process each) a job runs on: a training job's world_size, else 1.
-- A worker leases only jobs that fit its free devices.
ALTER TABLE jobs ADD COLUMN ranks BIGINT NOT NULL DEFAULT 1;
