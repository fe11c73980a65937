-- Job states are the Rust enum `spatiallock_protocol::api::JobState`; the database refuses any
-- other value (coordinator/src/store tests keep this list and the enum equal).
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('blocked', 'queued', 'running', 'succeeded', 'failed', 'cancelled'));
