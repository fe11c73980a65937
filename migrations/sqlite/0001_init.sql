-- The coordinator's store. Written in the SQL that PostgreSQL and SQLite share, so one set of
-- migrations serves both backends: ids are text, times are milliseconds since the Unix epoch
-- (BIGINT), JSON is stored as text, flags are 0/1 integers.

CREATE TABLE experiments (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    spec_hash       TEXT NOT NULL,
    spec            TEXT NOT NULL,
    axes            TEXT NOT NULL,
    priority        BIGINT NOT NULL,
    num_trials      BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);

CREATE TABLE trials (
    id            TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL REFERENCES experiments (id),
    idx           BIGINT NOT NULL,
    hash          TEXT NOT NULL,
    axes          TEXT NOT NULL,
    config        TEXT NOT NULL,
    reference     TEXT,
    model_job     TEXT,
    eval_jobs     TEXT NOT NULL,
    jobs          TEXT NOT NULL
);
CREATE INDEX trials_by_experiment ON trials (experiment_id, idx);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    experiment_id    TEXT NOT NULL REFERENCES experiments (id),
    job_key          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    label            TEXT NOT NULL,
    payload          TEXT NOT NULL,
    trials           TEXT NOT NULL,
    state            TEXT NOT NULL,
    priority         BIGINT NOT NULL,
    seq              BIGINT NOT NULL,
    attempt          BIGINT NOT NULL DEFAULT 0,
    spent_attempts   BIGINT NOT NULL DEFAULT 0,
    infra_retries    BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    num_deps         BIGINT NOT NULL DEFAULT 0,
    num_dependants   BIGINT NOT NULL DEFAULT 0,
    run_after        BIGINT NOT NULL DEFAULT 0,
    lease_expires_at BIGINT,
    worker_id        TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    ckpt_uri         TEXT,
    ckpt_step        BIGINT,
    output_uri       TEXT,
    last_error       TEXT,
    queued_at        BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX jobs_ready ON jobs (priority DESC, seq) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_by_experiment ON jobs (experiment_id, seq);
CREATE INDEX jobs_unfinished ON jobs (experiment_id) WHERE state IN ('blocked', 'queued', 'running');

CREATE TABLE job_deps (
    job_id     TEXT NOT NULL REFERENCES jobs (id),
    depends_on TEXT NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX job_deps_reverse ON job_deps (depends_on);

CREATE TABLE attempts (
    job_id     TEXT NOT NULL REFERENCES jobs (id),
    attempt    BIGINT NOT NULL,
    worker_id  TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at   BIGINT,
    outcome    TEXT NOT NULL,
    error      TEXT,
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE metrics (
    job_id  TEXT NOT NULL REFERENCES jobs (id),
    name    TEXT NOT NULL,
    step    BIGINT NOT NULL,
    value   DOUBLE PRECISION NOT NULL,
    attempt BIGINT NOT NULL,
    PRIMARY KEY (job_id, name, step)
);

CREATE TABLE logs (
    job_id  TEXT NOT NULL REFERENCES jobs (id),
    attempt BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    line    TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);

CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    devices       TEXT NOT NULL,
    labels        TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);
