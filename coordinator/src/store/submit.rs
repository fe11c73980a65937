//! Submission: one transaction writes the experiment, its trials, its jobs and the DAG edges;
//! an `Idempotency-Key` seen before returns the experiment it created.

use sha2::{Digest, Sha256};
use spatiallock_protocol::api::JobState;
use spatiallock_protocol::{ExperimentSpec, Plan};
use sqlx::{Any, Row};

use super::{now_ms, to_json, Store, StoreError};

/// A value bound into a multi-row insert.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Float(f64),
}

/// Inserts `rows` into `table` in chunks of multi-row `VALUES` (one round trip per chunk).
pub(crate) async fn insert_rows(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    columns: &[&str],
    suffix: &str,
    rows: Vec<Vec<Arg>>,
) -> Result<(), sqlx::Error> {
    // Both backends accept at least 32766 bound parameters; stay far below.
    let per_chunk = (2000 / columns.len().max(1)).max(1);
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Arg>> = rows.by_ref().take(per_chunk).collect();
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
        let mut n = 0;
        for (r, row) in chunk.iter().enumerate() {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..row.len() {
                n += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${n}"));
            }
            sql.push(')');
        }
        sql.push_str(suffix);
        let mut query = sqlx::query::<Any>(&sql);
        for row in chunk {
            for arg in row {
                query = match arg {
                    Arg::Text(s) => query.bind(s),
                    Arg::OptText(s) => query.bind(s),
                    Arg::Int(i) => query.bind(i),
                    Arg::Float(f) => query.bind(f),
                };
            }
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// What a submission did.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The experiment's id.
    pub id: String,
    /// False when the idempotency key named an existing experiment.
    pub created: bool,
    /// Jobs that are ready to run now (to publish to the dispatcher).
    pub ready: Vec<super::ReadyJob>,
}

fn hex16(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Stores an expanded experiment in one transaction.
    pub async fn submit(
        &self,
        spec: &ExperimentSpec,
        plan: &Plan,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, StoreError> {
        let spec_json = serde_json::to_value(spec).map_err(|e| StoreError::Encode {
            what: "the spec",
            message: e.to_string(),
        })?;
        let spec_hash = spatiallock_protocol::canonical::hash_of(&spec_json);
        let now = now_ms();
        let id = match idempotency_key {
            Some(key) => format!("exp-{}", hex16(key.as_bytes())),
            None => {
                let nonce = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!(
                    "exp-{}",
                    hex16(format!("{spec_hash}/{now}/{nonce}/{}", std::process::id()).as_bytes())
                )
            }
        };
        if let Some(key) = idempotency_key {
            if let Some(existing) = self.by_idempotency_key(key, &spec_hash).await? {
                return Ok(existing);
            }
        }

        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO experiments (id, name, idempotency_key, spec_hash, spec, axes, priority, num_trials, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(&plan.name)
        .bind(idempotency_key.map(str::to_string))
        .bind(&spec_hash)
        .bind(to_json(&spec_json))
        .bind(to_json(&plan.axes.iter().map(|a| a.name.clone()).collect::<Vec<_>>()))
        .bind(i64::from(plan.priority))
        .bind(plan.trials.len() as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // A concurrent submission with the same key won the race.
            tx.rollback().await?;
            let key = idempotency_key.unwrap_or_default();
            return self
                .by_idempotency_key(key, &spec_hash)
                .await?
                .ok_or_else(|| StoreError::Conflict(format!("experiment `{id}` already exists")));
        }

        let trial_rows = plan
            .trials
            .iter()
            .map(|t| {
                let jobs: Vec<String> = plan
                    .jobs
                    .iter()
                    .filter(|j| j.trials.contains(&t.index))
                    .map(|j| j.id.clone())
                    .collect();
                vec![
                    Arg::Text(format!("{id}.{}", t.index)),
                    Arg::Text(id.clone()),
                    Arg::Int(t.index as i64),
                    Arg::Text(t.hash.clone()),
                    Arg::Text(to_json(&t.axes)),
                    Arg::Text(to_json(&t.config)),
                    Arg::OptText(t.reference.as_ref().map(to_json)),
                    Arg::OptText(t.model_job.clone()),
                    Arg::Text(to_json(&t.eval_jobs)),
                    Arg::Text(to_json(&jobs)),
                ]
            })
            .collect();
        insert_rows(
            &mut tx,
            "trials",
            &[
                "id",
                "experiment_id",
                "idx",
                "hash",
                "axes",
                "config",
                "reference",
                "model_job",
                "eval_jobs",
                "jobs",
            ],
            "",
            trial_rows,
        )
        .await?;

        let mut ready = Vec::new();
        let mut job_rows = Vec::with_capacity(plan.jobs.len());
        let mut dependants: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        for job in &plan.jobs {
            for dep in &job.depends_on {
                *dependants.entry(dep.as_str()).or_default() += 1;
            }
        }
        let mut edges = Vec::new();
        for (i, job) in plan.jobs.iter().enumerate() {
            let row_id = format!("{id}.{}", job.id);
            let state = if job.depends_on.is_empty() {
                ready.push((row_id.clone(), i64::from(plan.priority), now * 100_000 + i as i64));
                JobState::Queued
            } else {
                JobState::Blocked
            };
            for dep in &job.depends_on {
                edges.push(vec![Arg::Text(row_id.clone()), Arg::Text(format!("{id}.{dep}"))]);
            }
            job_rows.push(vec![
                Arg::Text(row_id),
                Arg::Text(id.clone()),
                Arg::Text(job.id.clone()),
                Arg::Text(job.kind.as_str().to_string()),
                Arg::Text(job.label.clone()),
                Arg::Text(to_json(&job.payload)),
                Arg::Text(to_json(&job.trials)),
                Arg::Text(state.as_str().to_string()),
                Arg::Int(i64::from(plan.priority)),
                Arg::Int(now * 100_000 + i as i64),
                Arg::Int(i64::from(plan.max_attempts)),
                Arg::Int(job.depends_on.len() as i64),
                Arg::Int(dependants.get(job.id.as_str()).copied().unwrap_or(0)),
                Arg::Int(now),
                Arg::Int(i64::from(job.payload.ranks())),
            ]);
        }
        insert_rows(
            &mut tx,
            "jobs",
            &[
                "id",
                "experiment_id",
                "job_key",
                "kind",
                "label",
                "payload",
                "trials",
                "state",
                "priority",
                "seq",
                "max_attempts",
                "num_deps",
                "num_dependants",
                "queued_at",
                "ranks",
            ],
            "",
            job_rows,
        )
        .await?;
        insert_rows(&mut tx, "job_deps", &["job_id", "depends_on"], "", edges).await?;
        tx.commit().await?;
        Ok(Submitted {
            id,
            created: true,
            ready,
        })
    }

    async fn by_idempotency_key(&self, key: &str, spec_hash: &str) -> Result<Option<Submitted>, StoreError> {
        let row = sqlx::query("SELECT id, spec_hash FROM experiments WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        let stored: String = row.try_get("spec_hash")?;
        if stored != spec_hash {
            return Err(StoreError::Conflict(format!(
                "Idempotency-Key `{key}` was used for experiment `{id}` with a different spec; use a new key"
            )));
        }
        Ok(Some(Submitted {
            id,
            created: false,
            ready: Vec::new(),
        }))
    }
}

static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
