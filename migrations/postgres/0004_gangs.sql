-- Gangs: a training job with more ranks than any one worker has devices runs on several workers,
-- all or none. A member row per worker: `forming` while the gang gathers (until `expires_at`, the
-- reservation deadline), `started` once complete (the worker has not picked it up yet), `running`
-- (its lease: `expires_at`, renewed by the member's heartbeat), `released` when its reservation
-- timed out (the worker may not join this job again before `expires_at`).
CREATE TABLE gang_members (
    job_id     TEXT NOT NULL REFERENCES jobs (id),
    worker_id  TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('forming', 'started', 'running', 'released')),
    ranks      BIGINT NOT NULL,
    address    TEXT NOT NULL,
    port       BIGINT NOT NULL,
    joined_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempt    BIGINT,
    first_rank BIGINT,
    PRIMARY KEY (job_id, worker_id)
);
CREATE INDEX gang_members_worker ON gang_members (worker_id);
