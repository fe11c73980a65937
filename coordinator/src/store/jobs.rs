//! Job state transitions: claim (lease), heartbeat, complete, fail, reap, cancel, retry.
//! Every write from a worker is fenced by its attempt number.

use std::collections::{BTreeMap, VecDeque};

use spatiallock_protocol::api::{CheckpointRef, FailureClass, JobState, MetricPoint};
use spatiallock_protocol::JobPayload;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::submit::{insert_rows, Arg};
use super::{json, now_ms, Dialect, ReadyJob, Store, StoreError};

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Job row id.
    pub id: String,
    /// Experiment.
    pub experiment_id: String,
    /// Kind, as stored.
    pub kind: String,
    /// Attempt number of this lease.
    pub attempt: u64,
    /// What to run.
    pub payload: JobPayload,
    /// Where to resume from.
    pub checkpoint: Option<CheckpointRef>,
    /// Dependency outputs (plan job id → URI).
    pub inputs: BTreeMap<String, String>,
    /// When it was queued (ms).
    pub queued_at: i64,
}

/// How a job's attempt ended, for metrics.
#[derive(Debug, Clone)]
pub struct JobEnd {
    /// Kind.
    pub kind: String,
    /// Experiment.
    pub experiment_id: String,
    /// Run time of the attempt (ms).
    pub run_ms: i64,
    /// The job's state now.
    pub state: JobState,
    /// Jobs that became ready.
    pub ready: Vec<ReadyJob>,
}

/// What a failure report did.
#[derive(Debug, Clone)]
pub struct FailOutcome {
    /// The attempt's end.
    pub end: JobEnd,
    /// Whether the job will be retried.
    pub retried: bool,
}

/// A lease the reaper expired.
#[derive(Debug, Clone)]
pub struct Reaped {
    /// Job row id.
    pub id: String,
    /// The expired attempt.
    pub attempt: u64,
    /// Its state now (queued again, failed, or cancelled).
    pub state: JobState,
}

/// Infrastructure failures never spend attempts, but a job that keeps killing its workers
/// must stop somewhere.
const MAX_INFRA_RETRIES: i64 = 20;

/// Retry delay after the n-th failure: `base · 2^(n−1)`, at most a minute.
fn backoff_ms(base_ms: u64, n: i64) -> i64 {
    let n = n.clamp(1, 16) as u32;
    (base_ms.saturating_mul(1u64 << (n - 1))).min(60_000) as i64
}

fn state_of(row: &AnyRow) -> Result<JobState, StoreError> {
    let s: String = row.try_get("state")?;
    JobState::parse(&s).ok_or(StoreError::Corrupt {
        what: "job state",
        message: s,
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

pub(super) const CLAIM_RETURNING: &str =
    "RETURNING id, experiment_id, kind, attempt, payload, ckpt_uri, ckpt_step, queued_at, num_deps";

impl Store {
    /// Leases the best ready job (highest priority, then oldest) that needs at most `devices`
    /// ranks, or the hinted job when it is still ready and fits. `None` when nothing is.
    pub async fn claim(
        &self,
        worker_id: &str,
        ttl_ms: u64,
        devices: u32,
        hint: Option<&str>,
    ) -> Result<Option<Claimed>, StoreError> {
        let now = now_ms();
        let target = match hint {
            Some(_) => "id = $5 AND state = 'queued' AND run_after <= $3 AND ranks <= $4".to_string(),
            None => format!(
                "id = (SELECT id FROM jobs WHERE state = 'queued' AND run_after <= $3 AND ranks <= $4 \
                 ORDER BY priority DESC, seq LIMIT 1{})",
                self.dialect.skip_locked()
            ),
        };
        let update = format!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_expires_at = $1, worker_id = $2, \
             started_at = $3 WHERE {target} {CLAIM_RETURNING}"
        );
        let insert_attempt = "INSERT INTO attempts (job_id, attempt, worker_id, started_at, outcome)";
        fn bind<'q>(
            sql: &'q str,
            expires: i64,
            worker: &str,
            now: i64,
            devices: u32,
            hint: Option<&str>,
        ) -> AnyQuery<'q> {
            let q = sqlx::query(sql)
                .bind(expires)
                .bind(worker.to_string())
                .bind(now)
                .bind(i64::from(devices));
            match hint {
                Some(id) => q.bind(id.to_string()),
                None => q,
            }
        }
        let expires = now + ttl_ms as i64;
        let row = match self.dialect {
            // One statement (one round trip, one commit): the claim and its attempt row.
            Dialect::Postgres => {
                let sql = format!(
                    "WITH c AS ({update}), a AS ({insert_attempt} SELECT id, attempt, $2, $3, 'running' FROM c) \
                     SELECT * FROM c"
                );
                bind(&sql, expires, worker_id, now, devices, hint)
                    .fetch_optional(&self.pool)
                    .await?
            }
            // SQLite has no data-modifying CTEs; its single connection serialises anyway.
            Dialect::Sqlite => {
                let mut tx = self.pool.begin().await?;
                let row = bind(&update, expires, worker_id, now, devices, hint)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(r) = &row {
                    sqlx::query(&format!("{insert_attempt} VALUES ($1, $2, $3, $4, 'running')"))
                        .bind(r.try_get::<String, _>("id")?)
                        .bind(r.try_get::<i64, _>("attempt")?)
                        .bind(worker_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                row
            }
        };
        let Some(row) = row else { return Ok(None) };
        self.claimed(&row).await.map(Some)
    }

    /// What a worker needs of a job row it just claimed (`CLAIM_RETURNING`'s columns): drops
    /// an older attempt's metrics past the checkpoint this attempt resumes from, and reads the
    /// outputs of its dependencies.
    pub(super) async fn claimed(&self, row: &AnyRow) -> Result<Claimed, StoreError> {
        let id: String = row.try_get("id")?;
        let attempt: i64 = row.try_get("attempt")?;
        let ckpt_uri: Option<String> = row.try_get("ckpt_uri")?;
        let ckpt_step: Option<i64> = row.try_get("ckpt_step")?;
        // Resume semantics: an older attempt's metrics past the checkpoint this attempt
        // resumes from will be reported again; drop them so no step counts twice. (Done
        // before the lease is answered, so before this attempt can report anything.)
        if attempt > 1 {
            sqlx::query("DELETE FROM metrics WHERE job_id = $1 AND attempt < $2 AND step > $3")
                .bind(&id)
                .bind(attempt)
                .bind(ckpt_step.unwrap_or(-1))
                .execute(&self.pool)
                .await?;
        }
        let mut inputs = BTreeMap::new();
        if row.try_get::<i64, _>("num_deps")? > 0 {
            let rows = sqlx::query(
                "SELECT j.job_key, j.output_uri FROM job_deps d JOIN jobs j ON j.id = d.depends_on WHERE d.job_id = $1",
            )
            .bind(&id)
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                let key: String = r.try_get("job_key")?;
                if let Some(uri) = r.try_get::<Option<String>, _>("output_uri")? {
                    inputs.insert(key, uri);
                }
            }
        }
        Ok(Claimed {
            experiment_id: row.try_get("experiment_id")?,
            kind: row.try_get("kind")?,
            attempt: attempt as u64,
            payload: json(row, "payload", "job payload")?,
            checkpoint: match (ckpt_uri, ckpt_step) {
                (Some(uri), Some(step)) => Some(CheckpointRef { step: step as u64, uri }),
                _ => None,
            },
            inputs,
            queued_at: row.try_get("queued_at")?,
            id,
        })
    }

    /// Extends the lease of a current attempt; `Some(cancel_requested)`, or `None` when the
    /// attempt is no longer current.
    /// A gang member (`worker` given) renews its own membership too.
    pub async fn heartbeat(
        &self,
        job: &str,
        attempt: u64,
        ttl_ms: u64,
        worker: Option<&str>,
    ) -> Result<Option<bool>, StoreError> {
        if let Some(w) = worker {
            self.gang_member_heartbeat(job, attempt, w, ttl_ms).await?;
        }
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND attempt = $3 AND state = 'running' \
             RETURNING cancel_requested",
        )
        .bind(now + ttl_ms as i64)
        .bind(job)
        .bind(attempt as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>("cancel_requested")? != 0),
            None => None,
        })
    }

    /// Locks a job row whose attempt `attempt` is running; 404 for an unknown job, 409 for a
    /// stale attempt.
    async fn lock_current(&self, conn: &mut AnyConnection, job: &str, attempt: u64) -> Result<AnyRow, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT kind, experiment_id, state, attempt, spent_attempts, infra_retries, max_attempts, \
             cancel_requested, started_at FROM jobs WHERE id = $1{}",
            self.dialect.for_update()
        ))
        .bind(job)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found("job", job))?;
        let current: i64 = row.try_get("attempt")?;
        if current as u64 != attempt || state_of(&row)? != JobState::Running {
            return Err(StoreError::stale_attempt(job, attempt));
        }
        Ok(row)
    }

    /// Marks a current attempt succeeded and queues the dependants that became ready.
    pub async fn complete(&self, job: &str, attempt: u64, output: Option<&str>) -> Result<JobEnd, StoreError> {
        let now = now_ms();
        let update = "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, finished_at = $1, output_uri = $2 \
                      WHERE id = $3 AND attempt = $4 AND state = 'running' \
                      RETURNING kind, experiment_id, started_at, num_dependants";
        fn bind<'q>(sql: &'q str, now: i64, output: Option<&str>, job: &str, attempt: u64) -> AnyQuery<'q> {
            sqlx::query(sql)
                .bind(now)
                .bind(output.map(str::to_string))
                .bind(job.to_string())
                .bind(attempt as i64)
        }
        let row = match self.dialect {
            // One statement: the job and its attempt row change together.
            Dialect::Postgres => {
                let sql = format!(
                    "WITH j AS ({update}), a AS (UPDATE attempts SET ended_at = $1, outcome = 'succeeded' \
                     WHERE job_id = $3 AND attempt = $4 AND EXISTS (SELECT 1 FROM j)) SELECT * FROM j"
                );
                bind(&sql, now, output, job, attempt).fetch_optional(&self.pool).await?
            }
            Dialect::Sqlite => {
                let mut tx = self.pool.begin().await?;
                let row = bind(update, now, output, job, attempt).fetch_optional(&mut *tx).await?;
                if row.is_some() {
                    end_attempt(&mut tx, job, attempt, "succeeded", None, now).await?;
                }
                tx.commit().await?;
                row
            }
        };
        let Some(row) = row else {
            self.get_job(job).await?; // 404 for an unknown job
            return Err(StoreError::stale_attempt(job, attempt));
        };
        // Dependants are released in their own transaction; should the coordinator stop in
        // between, the reconciler releases them (`release_unblocked`).
        let ready = if row.try_get::<i64, _>("num_dependants")? > 0 {
            let mut tx = self.pool.begin().await?;
            let ready = release_dependants(&mut tx, job, now).await?;
            tx.commit().await?;
            ready
        } else {
            Vec::new()
        };
        Ok(JobEnd {
            kind: row.try_get("kind")?,
            experiment_id: row.try_get("experiment_id")?,
            run_ms: now - row.try_get::<Option<i64>, _>("started_at")?.unwrap_or(now),
            state: JobState::Succeeded,
            ready,
        })
    }

    /// Queues every blocked job whose dependencies have all succeeded (repairs a release
    /// interrupted by a stop); returns the jobs queued.
    pub async fn release_unblocked(&self) -> Result<Vec<ReadyJob>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ready = queue_unblocked(&mut tx, "$2 = $2", "", now_ms()).await?;
        tx.commit().await?;
        Ok(ready)
    }

    /// Records a failed attempt: requeue with backoff, or fail (and fail the dependants), or
    /// finish the cancellation.
    pub async fn fail(
        &self,
        job: &str,
        attempt: u64,
        class: FailureClass,
        message: &str,
        backoff_base_ms: u64,
    ) -> Result<FailOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let row = self.lock_current(&mut tx, job, attempt).await?;
        let spent: i64 = row.try_get("spent_attempts")?;
        let infra: i64 = row.try_get("infra_retries")?;
        let max: i64 = row.try_get("max_attempts")?;
        let cancel = row.try_get::<i64, _>("cancel_requested")? != 0;
        let (spent, infra) = match class {
            FailureClass::App => (spent + 1, infra),
            FailureClass::Infra => (spent, infra + 1),
        };
        let error = format!("attempt {attempt} ({}): {message}", class.as_str());
        let state = if cancel {
            JobState::Cancelled
        } else if spent >= max || infra > MAX_INFRA_RETRIES {
            JobState::Failed
        } else {
            JobState::Queued
        };
        let failures = match class {
            FailureClass::App => spent,
            FailureClass::Infra => infra,
        };
        sqlx::query(
            "UPDATE jobs SET state = $1, spent_attempts = $2, infra_retries = $3, last_error = $4, \
             lease_expires_at = NULL, worker_id = NULL, run_after = $5, queued_at = $6, \
             finished_at = $7 WHERE id = $8",
        )
        .bind(state.as_str())
        .bind(spent)
        .bind(infra)
        .bind(&error)
        .bind(now + backoff_ms(backoff_base_ms, failures))
        .bind(now)
        .bind(state.is_terminal().then_some(now))
        .bind(job)
        .execute(&mut *tx)
        .await?;
        let outcome = if cancel {
            "cancelled".to_string()
        } else {
            format!("failed-{}", class.as_str())
        };
        end_attempt(&mut tx, job, attempt, &outcome, Some(message), now).await?;
        if state == JobState::Failed {
            fail_dependants(&mut tx, job, now).await?;
        }
        tx.commit().await?;
        Ok(FailOutcome {
            retried: state == JobState::Queued,
            end: JobEnd {
                kind: row.try_get("kind")?,
                experiment_id: row.try_get("experiment_id")?,
                run_ms: now - row.try_get::<Option<i64>, _>("started_at")?.unwrap_or(now),
                state,
                ready: Vec::new(),
            },
        })
    }

    /// Requeues (or fails, or cancels) every attempt whose lease has expired. Safe to run on
    /// several replicas at once: a row is updated by the first reaper only.
    pub async fn reap(&self, backoff_base_ms: u64) -> Result<Vec<Reaped>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // A gang whose member lost its own lease loses the attempt's lease too.
        Self::expire_gang_members(&mut tx, now).await?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' \
                                          WHEN infra_retries + 1 > $1 THEN 'failed' ELSE 'queued' END, \
                infra_retries = infra_retries + 1, \
                last_error = 'attempt ' || CAST(attempt AS TEXT) || ' (infra): lease expired (no heartbeat)', \
                lease_expires_at = NULL, worker_id = NULL, run_after = $2, queued_at = $3 \
             WHERE state = 'running' AND lease_expires_at < $3 RETURNING id, attempt, state",
        )
        .bind(MAX_INFRA_RETRIES)
        .bind(now + backoff_ms(backoff_base_ms, 1))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut reaped = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let attempt: i64 = row.try_get("attempt")?;
            let state = state_of(&row)?;
            end_attempt(&mut tx, &id, attempt as u64, "lost", Some("lease expired"), now).await?;
            if state == JobState::Failed {
                fail_dependants(&mut tx, &id, now).await?;
            }
            if state.is_terminal() {
                sqlx::query("UPDATE jobs SET finished_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            reaped.push(Reaped {
                id,
                attempt: attempt as u64,
                state,
            });
        }
        tx.commit().await?;
        Ok(reaped)
    }

    /// Cancels an experiment: waiting jobs at once, running ones through their heartbeat.
    pub async fn cancel_experiment(&self, experiment: &str) -> Result<u64, StoreError> {
        self.require_experiment(experiment).await?;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let waiting = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1 WHERE experiment_id = $2 \
             AND state IN ('blocked', 'queued')",
        )
        .bind(now)
        .bind(experiment)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let running =
            sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE experiment_id = $1 AND state = 'running'")
                .bind(experiment)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(waiting + running)
    }

    /// Requeues the failed jobs of an experiment (and the dependants they failed; cancelled
    /// jobs too when asked), resuming from their last committed checkpoints. Returns (jobs
    /// changed, jobs ready now).
    pub async fn retry_failed(
        &self,
        experiment: &str,
        include_cancelled: bool,
    ) -> Result<(u64, Vec<ReadyJob>), StoreError> {
        self.require_experiment(experiment).await?;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'blocked', spent_attempts = 0, infra_retries = 0, run_after = 0, \
             cancel_requested = 0, finished_at = NULL WHERE experiment_id = $1 \
             AND (state = 'failed' OR (state = 'cancelled' AND $2 = 1))",
        )
        .bind(experiment)
        .bind(i64::from(include_cancelled))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let ready = queue_unblocked(&mut tx, "experiment_id = $2", experiment, now).await?;
        tx.commit().await?;
        Ok((changed, ready))
    }

    /// Requeues every running attempt at once, as lost (infra). Only for an embedded store
    /// whose previous process is known to be gone: nobody else can hold those leases.
    pub async fn requeue_orphans(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE attempts SET ended_at = $1, outcome = 'lost', error = 'the previous process exited' \
             WHERE outcome = 'running'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(
            "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END, \
             lease_expires_at = NULL, worker_id = NULL, run_after = 0, queued_at = $1 WHERE state = 'running'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Changes the priority of an experiment and of its jobs.
    pub async fn set_priority(&self, experiment: &str, priority: i64) -> Result<u64, StoreError> {
        self.require_experiment(experiment).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE experiments SET priority = $1 WHERE id = $2")
            .bind(priority)
            .bind(experiment)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("UPDATE jobs SET priority = $1 WHERE experiment_id = $2")
            .bind(priority)
            .bind(experiment)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Upserts metric points of a current attempt by (job, name, step).
    pub async fn record_metrics(
        &self,
        job: &str,
        attempt: u64,
        metrics: &BTreeMap<String, Vec<MetricPoint>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.lock_current(&mut tx, job, attempt).await?;
        let mut rows = Vec::new();
        for (name, points) in metrics {
            if name.is_empty() || name.chars().count() > 128 {
                return Err(StoreError::invalid(
                    "metrics",
                    format!("metric name `{name}` must have 1–128 characters"),
                ));
            }
            // Last value wins within a batch.
            let mut by_step: BTreeMap<u64, f64> = BTreeMap::new();
            for p in points {
                if !p.value.is_finite() {
                    return Err(StoreError::invalid(
                        &format!("metrics.{name}"),
                        format!("value at step {} is not finite", p.step),
                    ));
                }
                by_step.insert(p.step, p.value);
            }
            for (step, value) in by_step {
                rows.push(vec![
                    Arg::Text(job.to_string()),
                    Arg::Text(name.clone()),
                    Arg::Int(step as i64),
                    Arg::Float(value),
                    Arg::Int(attempt as i64),
                ]);
            }
        }
        insert_rows(
            &mut tx,
            "metrics",
            &["job_id", "name", "step", "value", "attempt"],
            " ON CONFLICT (job_id, name, step) DO UPDATE SET value = excluded.value, attempt = excluded.attempt \
             WHERE metrics.attempt <= excluded.attempt",
            rows,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves the checkpoint pointer forward for a current attempt; false when the step is not
    /// newer than the committed one.
    pub async fn commit_checkpoint(&self, job: &str, attempt: u64, step: u64, uri: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        self.lock_current(&mut tx, job, attempt).await?;
        let n = sqlx::query(
            "UPDATE jobs SET ckpt_uri = $1, ckpt_step = $2 WHERE id = $3 AND (ckpt_step IS NULL OR ckpt_step < $2)",
        )
        .bind(uri)
        .bind(step as i64)
        .bind(job)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Appends log lines of a current attempt.
    pub async fn append_logs(&self, job: &str, attempt: u64, lines: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.lock_current(&mut tx, job, attempt).await?;
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS n FROM logs WHERE job_id = $1 AND attempt = $2")
            .bind(job)
            .bind(attempt as i64)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        let rows = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                vec![
                    Arg::Text(job.to_string()),
                    Arg::Int(attempt as i64),
                    Arg::Int(next + 1 + i as i64),
                    Arg::Text(line.chars().take(4096).collect()),
                ]
            })
            .collect();
        insert_rows(&mut tx, "logs", &["job_id", "attempt", "seq", "line"], "", rows).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Job ids that are ready to lease now (the reconciler republishes them).
    pub async fn ready_jobs(&self, limit: i64) -> Result<Vec<ReadyJob>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, priority, seq FROM jobs WHERE state = 'queued' AND run_after <= $1 \
             ORDER BY priority DESC, seq LIMIT $2",
        )
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("priority")?, r.try_get("seq")?)))
            .collect()
    }
}

async fn end_attempt(
    conn: &mut AnyConnection,
    job: &str,
    attempt: u64,
    outcome: &str,
    error: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE attempts SET ended_at = $1, outcome = $2, error = $3 WHERE job_id = $4 AND attempt = $5")
        .bind(now)
        .bind(outcome)
        .bind(error.map(str::to_string))
        .bind(job)
        .bind(attempt as i64)
        .execute(conn)
        .await?;
    Ok(())
}

/// Queues blocked jobs matching `filter` (SQL over `jobs`, with `$2` bound to `arg`) whose
/// dependencies have all succeeded.
async fn queue_unblocked(
    conn: &mut AnyConnection,
    filter: &str,
    arg: &str,
    now: i64,
) -> Result<Vec<ReadyJob>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "UPDATE jobs SET state = 'queued', queued_at = $1 WHERE state = 'blocked' AND {filter} \
         AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.depends_on \
                         WHERE d.job_id = jobs.id AND p.state <> 'succeeded') RETURNING id, priority, seq"
    ))
    .bind(now)
    .bind(arg)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("priority")?, r.try_get("seq")?)))
        .collect()
}

/// Queues the dependants of `job` whose dependencies have all succeeded.
async fn release_dependants(conn: &mut AnyConnection, job: &str, now: i64) -> Result<Vec<ReadyJob>, sqlx::Error> {
    queue_unblocked(
        conn,
        "id IN (SELECT job_id FROM job_deps WHERE depends_on = $2)",
        job,
        now,
    )
    .await
}

/// Fails everything downstream of a failed job, naming it as the reason.
async fn fail_dependants(conn: &mut AnyConnection, job: &str, now: i64) -> Result<(), sqlx::Error> {
    let mut queue = VecDeque::from([job.to_string()]);
    while let Some(failed) = queue.pop_front() {
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'failed', finished_at = $1, last_error = $2 \
             WHERE state IN ('blocked', 'queued') AND id IN (SELECT job_id FROM job_deps WHERE depends_on = $3) \
             RETURNING id",
        )
        .bind(now)
        .bind(format!("dependency `{failed}` failed"))
        .bind(&failed)
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            queue.push_back(r.try_get("id")?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;
    use spatiallock_protocol::api::JobState;

    /// Quoted words of `sql` right after `what`: `'x'` or a list `('x', 'y')`.
    fn quoted_after(sql: &str, what: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for (i, _) in sql.match_indices(what) {
            let rest = sql[i + what.len()..].trim_start();
            if let Some(list) = rest.strip_prefix('(') {
                let list = &list[..list.find(')').unwrap_or(list.len())];
                if list.trim_start().starts_with('\'') {
                    let words = list
                        .split(',')
                        .filter_map(|w| w.trim().strip_prefix('\'')?.strip_suffix('\''));
                    out.push(words.map(String::from).collect());
                }
            } else if let Some(q) = rest.strip_prefix('\'') {
                if let Some(end) = q.find('\'') {
                    out.push(vec![q[..end].to_string()]);
                }
            }
        }
        out
    }

    /// Every job state the store's SQL writes or compares is a [`JobState`], and the database's
    /// CHECK (PostgreSQL) and triggers (SQLite) allow exactly the enum's states.
    #[test]
    fn job_states_in_sql_are_the_enum() {
        let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        for (file, sql) in [
            ("jobs.rs", include_str!("jobs.rs")),
            ("queries.rs", include_str!("queries.rs")),
        ] {
            let seen: Vec<String> = ["state = ", "state <> ", "state IN ", "THEN ", "ELSE "]
                .iter()
                .flat_map(|what| quoted_after(sql, what))
                .flatten()
                .collect();
            assert!(!seen.is_empty(), "{file}: the scanner found no state literals");
            for s in &seen {
                assert!(JobState::parse(s).is_some(), "{file}: `{s}` is not a JobState");
            }
        }
        for migration in [
            include_str!("../../../migrations/postgres/0002_job_state_check.sql"),
            include_str!("../../../migrations/sqlite/0002_job_state_check.sql"),
        ] {
            let lists = quoted_after(migration, "IN ");
            assert!(!lists.is_empty(), "{migration}");
            for allowed in lists {
                assert_eq!(allowed, names, "{migration}");
            }
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1000, 1), 1000);
        assert_eq!(backoff_ms(1000, 3), 4000);
        assert_eq!(backoff_ms(1000, 40), 60_000);
        assert_eq!(backoff_ms(0, 5), 0);
    }
}
