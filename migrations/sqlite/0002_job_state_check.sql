-- Job states are the Rust enum `spatiallock_protocol::api::JobState`; the database refuses any
-- other value (coordinator/src/store tests keep this list and the enum equal). SQLite cannot add
-- a CHECK constraint to an existing table, so triggers enforce the same rule.
CREATE TRIGGER jobs_state_check_insert BEFORE INSERT ON jobs
WHEN NEW.state NOT IN ('blocked', 'queued', 'running', 'succeeded', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'jobs_state_check: invalid job state');
END;

CREATE TRIGGER jobs_state_check_update BEFORE UPDATE OF state ON jobs
WHEN NEW.state NOT IN ('blocked', 'queued', 'running', 'succeeded', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'jobs_state_check: invalid job state');
END;
