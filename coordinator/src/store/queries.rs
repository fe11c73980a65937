//! Read models: experiments, trials, jobs, attempts, metric series, logs, workers.

use std::collections::{BTreeMap, HashMap};

use indexmap::IndexMap;
use serde_json::Value;
use spatiallock_protocol::api::{
    AttemptView, BestTrial, CheckpointRef, ExperimentView, JobLog, JobMetrics, JobState, JobView, LogTail, MetricPoint,
    MetricSeries, TrialLogs, TrialMetrics, TrialView, AUGMENT_METRICS,
};
use spatiallock_protocol::JobKind;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{json, now_ms, to_json, Store, StoreError};

/// Filters of `GET /v1/experiments`.
#[derive(Debug, Clone, Default)]
pub struct ExperimentFilter {
    /// Only names containing this.
    pub name: Option<String>,
    /// Only experiments in this derived state.
    pub state: Option<String>,
    /// Rank `best` by this metric.
    pub best_by: Option<String>,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this experiment's jobs.
    pub experiment: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this kind.
    pub kind: Option<JobKind>,
}

/// Whether a larger value of `metric` is better.
pub fn higher_is_better(metric: &str) -> bool {
    matches!(metric, "map" | "ap50" | "ap75") || metric.starts_with("ap")
}

/// The state an experiment or trial shows, from its jobs' states.
pub fn aggregate_state<'a>(states: impl IntoIterator<Item = &'a JobState>) -> JobState {
    let mut seen = [false; 6];
    for s in states {
        seen[*s as usize] = true;
    }
    let has = |s: JobState| seen[s as usize];
    if has(JobState::Running) {
        JobState::Running
    } else if has(JobState::Queued) {
        JobState::Queued
    } else if has(JobState::Blocked) {
        JobState::Blocked
    } else if has(JobState::Failed) {
        JobState::Failed
    } else if has(JobState::Cancelled) {
        JobState::Cancelled
    } else {
        JobState::Succeeded
    }
}

fn job_view(row: &AnyRow) -> Result<JobView, StoreError> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let ckpt_uri: Option<String> = row.try_get("ckpt_uri")?;
    let ckpt_step: Option<i64> = row.try_get("ckpt_step")?;
    Ok(JobView {
        id: row.try_get("id")?,
        experiment_id: row.try_get("experiment_id")?,
        kind: serde_json::from_value(Value::String(kind.clone())).map_err(|_| StoreError::Corrupt {
            what: "job kind",
            message: kind,
        })?,
        label: row.try_get("label")?,
        state: JobState::parse(&state).ok_or(StoreError::Corrupt {
            what: "job state",
            message: state,
        })?,
        priority: row.try_get("priority")?,
        attempt: row.try_get::<i64, _>("attempt")? as u64,
        spent_attempts: row.try_get::<i64, _>("spent_attempts")? as u64,
        max_attempts: row.try_get::<i64, _>("max_attempts")? as u64,
        depends_on: Vec::new(),
        trials: json(row, "trials", "job trials")?,
        last_error: row.try_get("last_error")?,
        checkpoint: match (ckpt_uri, ckpt_step) {
            (Some(uri), Some(step)) => Some(CheckpointRef { step: step as u64, uri }),
            _ => None,
        },
        output: row.try_get("output_uri")?,
        latest: BTreeMap::new(),
        attempts: Vec::new(),
        payload: None,
        waiting: None,
    })
}

const JOB_COLUMNS: &str = "id, experiment_id, kind, label, state, priority, attempt, spent_attempts, max_attempts, \
                           trials, last_error, ckpt_uri, ckpt_step, output_uri, ranks";

impl Store {
    /// Why a queued job with several ranks has not started (see [`Store::gang_waiting`]).
    async fn waiting(&self, view: &JobView, row: &AnyRow) -> Result<Option<String>, StoreError> {
        let ranks = row.try_get::<i64, _>("ranks")?.max(1) as u32;
        if view.state != JobState::Queued || ranks <= 1 {
            return Ok(None);
        }
        self.gang_waiting(&view.id, ranks).await
    }

    /// 404 unless the experiment exists.
    pub async fn require_experiment(&self, id: &str) -> Result<(), StoreError> {
        let found = sqlx::query("SELECT id FROM experiments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        found.map(|_| ()).ok_or_else(|| StoreError::not_found("experiment", id))
    }

    async fn experiment_view(&self, row: &AnyRow, best_by: Option<&str>) -> Result<ExperimentView, StoreError> {
        let id: String = row.try_get("id")?;
        let counts = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs WHERE experiment_id = $1 GROUP BY state")
            .bind(&id)
            .fetch_all(&self.pool)
            .await?;
        let mut jobs = BTreeMap::new();
        for r in &counts {
            jobs.insert(r.try_get::<String, _>("state")?, r.try_get::<i64, _>("n")? as u64);
        }
        self.view_with_counts(row, jobs, best_by).await
    }

    /// An experiment's view from its row and its job counts by state.
    async fn view_with_counts(
        &self,
        row: &AnyRow,
        jobs: BTreeMap<String, u64>,
        best_by: Option<&str>,
    ) -> Result<ExperimentView, StoreError> {
        let id: String = row.try_get("id")?;
        let states: Vec<JobState> = jobs.keys().filter_map(|s| JobState::parse(s)).collect();
        let state = aggregate_state(&states);
        let state = if state == JobState::Blocked || state == JobState::Queued {
            "queued"
        } else {
            state.as_str()
        };
        let best = match best_by {
            Some(metric) => self.best_trial(&id, metric).await?,
            None => None,
        };
        Ok(ExperimentView {
            name: row.try_get("name")?,
            state: state.to_string(),
            priority: row.try_get("priority")?,
            created_at_ms: row.try_get("created_at")?,
            num_trials: row.try_get::<i64, _>("num_trials")? as u64,
            jobs,
            best,
            spec: None,
            id,
        })
    }

    /// Lists experiments, newest first.
    pub async fn list_experiments(
        &self,
        filter: &ExperimentFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ExperimentView>, bool), StoreError> {
        // One round trip: the page of experiments joined with its job counts by state (read
        // newest first off the `experiments_by_time` index).
        const SQL: &str =
            "SELECT e.id, e.name, e.priority, e.created_at, e.num_trials, j.state, COUNT(j.id) AS n FROM \
             (SELECT id, name, priority, created_at, num_trials FROM experiments \
              WHERE ($1 = '%%' OR name LIKE $1) ORDER BY created_at DESC, id LIMIT $2 OFFSET $3) AS e \
             LEFT JOIN jobs j ON j.experiment_id = e.id \
             GROUP BY e.id, e.name, e.priority, e.created_at, e.num_trials, j.state \
             ORDER BY e.created_at DESC, e.id";
        let pattern = format!("%{}%", filter.name.clone().unwrap_or_default());
        let query = sqlx::query(SQL).bind(pattern).bind(limit + 1).bind(offset);
        let joined = query.fetch_all(&self.pool).await?;
        // Rows arrive grouped by experiment, in page order: one row per (experiment, state).
        let mut rows: Vec<AnyRow> = Vec::new();
        let mut by_experiment: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
        for r in joined {
            let id: String = r.try_get("id")?;
            if let Some(state) = r.try_get::<Option<String>, _>("state")? {
                by_experiment
                    .entry(id.clone())
                    .or_default()
                    .insert(state, r.try_get::<i64, _>("n")? as u64);
            }
            if rows
                .last()
                .map(|l| l.try_get::<String, _>("id"))
                .transpose()?
                .as_deref()
                != Some(id.as_str())
            {
                rows.push(r);
            }
        }
        let more = rows.len() as i64 > limit;
        let mut out = Vec::new();
        for row in rows.iter().take(limit as usize) {
            let id: String = row.try_get("id")?;
            let jobs = by_experiment.remove(&id).unwrap_or_default();
            let view = self.view_with_counts(row, jobs, filter.best_by.as_deref()).await?;
            if filter.state.as_deref().is_none_or(|s| s == view.state) {
                out.push(view);
            }
        }
        Ok((out, more))
    }

    /// One experiment with its spec.
    pub async fn get_experiment(&self, id: &str, best_by: Option<&str>) -> Result<ExperimentView, StoreError> {
        let row = sqlx::query("SELECT id, name, priority, created_at, num_trials, spec FROM experiments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("experiment", id))?;
        let mut view = self.experiment_view(&row, best_by).await?;
        view.spec = Some(json(&row, "spec", "experiment spec")?);
        Ok(view)
    }

    /// Axis names of an experiment, in order.
    pub async fn experiment_axes(&self, id: &str) -> Result<(String, Vec<String>), StoreError> {
        let row = sqlx::query("SELECT name, axes FROM experiments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("experiment", id))?;
        Ok((row.try_get("name")?, json(&row, "axes", "experiment axes")?))
    }

    /// Jobs, oldest first.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<JobView>, bool), StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 = '' OR experiment_id = $1) AND ($2 = '' OR state = $2) \
             AND ($3 = '' OR kind = $3) ORDER BY seq LIMIT $4 OFFSET $5"
        ))
        .bind(filter.experiment.clone().unwrap_or_default())
        .bind(filter.state.map(|s| s.as_str()).unwrap_or_default())
        .bind(filter.kind.map(|k| k.as_str()).unwrap_or_default())
        .bind(limit + 1)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as i64 > limit;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows.iter().take(limit as usize) {
            let mut view = job_view(row)?;
            view.waiting = self.waiting(&view, row).await?;
            jobs.push(view);
        }
        if let Some(experiment) = &filter.experiment {
            let mut latest = self.latest_metrics(experiment).await?;
            for job in &mut jobs {
                let key = job.id.split_once('.').map_or(job.id.as_str(), |(_, k)| k);
                job.latest = latest.remove(key).unwrap_or_default();
            }
        }
        Ok((jobs, more))
    }

    /// One job with its attempts, dependencies and payload.
    pub async fn get_job(&self, id: &str) -> Result<JobView, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS}, payload FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("job", id))?;
        let mut view = job_view(&row)?;
        view.waiting = self.waiting(&view, &row).await?;
        view.payload = Some(json(&row, "payload", "job payload")?);
        view.depends_on = sqlx::query("SELECT depends_on FROM job_deps WHERE job_id = $1 ORDER BY depends_on")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("depends_on"))
            .collect::<Result<_, _>>()?;
        view.attempts = sqlx::query(
            "SELECT attempt, worker_id, started_at, ended_at, outcome, error FROM attempts WHERE job_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(AttemptView {
                attempt: r.try_get::<i64, _>("attempt")? as u64,
                worker: r.try_get("worker_id")?,
                started_at_ms: r.try_get("started_at")?,
                ended_at_ms: r.try_get("ended_at")?,
                outcome: r.try_get("outcome")?,
                error: r.try_get("error")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        Ok(view)
    }

    /// State of every job of an experiment (plan job id → state).
    async fn job_states(&self, experiment: &str) -> Result<HashMap<String, JobState>, StoreError> {
        let rows = sqlx::query("SELECT job_key, state FROM jobs WHERE experiment_id = $1")
            .bind(experiment)
            .fetch_all(&self.pool)
            .await?;
        let mut out = HashMap::new();
        for r in rows {
            let key: String = r.try_get("job_key")?;
            let s: String = r.try_get("state")?;
            if let Some(st) = JobState::parse(&s) {
                out.insert(key, st);
            }
        }
        Ok(out)
    }

    /// Latest value of every metric of each job of an experiment (plan job id → name → value).
    pub(crate) async fn latest_metrics(
        &self,
        experiment: &str,
    ) -> Result<HashMap<String, BTreeMap<String, f64>>, StoreError> {
        let rows = sqlx::query(
            "SELECT j.job_key, m.name, m.step, m.value FROM metrics m JOIN jobs j ON j.id = m.job_id \
             WHERE j.experiment_id = $1 ORDER BY m.step",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<String, BTreeMap<String, f64>> = HashMap::new();
        for r in rows {
            let key: String = r.try_get("job_key")?;
            let name: String = r.try_get("name")?;
            out.entry(key).or_default().insert(name, r.try_get("value")?);
        }
        Ok(out)
    }

    fn trial_view(
        row: &AnyRow,
        states: &HashMap<String, JobState>,
        metrics: &HashMap<String, BTreeMap<String, f64>>,
    ) -> Result<TrialView, StoreError> {
        let jobs: Vec<String> = json(row, "jobs", "trial jobs")?;
        let job_states: Vec<JobState> = jobs.iter().filter_map(|j| states.get(j).copied()).collect();
        let model_job: Option<String> = row.try_get("model_job")?;
        let eval_jobs: Vec<String> = json(row, "eval_jobs", "trial eval jobs")?;
        // The trial's own numbers: its model's training metrics, then its evaluations' scores,
        // then its detector augmentation's. Pretraining and the evaluation detector report the
        // same names (`loss`, `lr`) over steps of their own: they are not the trial's.
        let augment_jobs = jobs
            .iter()
            .filter(|j| JobKind::of_job_id(j) == Some(JobKind::AugmentDetector));
        let mut merged = BTreeMap::new();
        for j in model_job.iter().chain(eval_jobs.iter()) {
            if let Some(m) = metrics.get(j) {
                merged.extend(m.iter().map(|(k, v)| (k.clone(), *v)));
            }
        }
        for j in augment_jobs {
            if let Some(m) = metrics.get(j) {
                merged.extend(
                    m.iter()
                        .filter(|(k, _)| AUGMENT_METRICS.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), *v)),
                );
            }
        }
        let reference: Option<String> = row.try_get("reference")?;
        Ok(TrialView {
            id: row.try_get("id")?,
            experiment_id: row.try_get("experiment_id")?,
            index: row.try_get::<i64, _>("idx")? as u64,
            axes: json(row, "axes", "trial axes")?,
            state: aggregate_state(&job_states),
            model_job,
            eval_jobs,
            metrics: merged,
            reference: reference.and_then(|r| serde_json::from_str(&r).ok()),
            config: None,
            checkpoint: None,
        })
    }

    /// Trials of an experiment, filtered by state and axis values.
    pub async fn list_trials(
        &self,
        experiment: &str,
        state: Option<JobState>,
        axes: &IndexMap<String, Value>,
    ) -> Result<Vec<TrialView>, StoreError> {
        self.require_experiment(experiment).await?;
        let states = self.job_states(experiment).await?;
        let metrics = self.latest_metrics(experiment).await?;
        let rows = sqlx::query(
            "SELECT id, experiment_id, idx, axes, reference, model_job, eval_jobs, jobs FROM trials \
             WHERE experiment_id = $1 ORDER BY idx",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            let view = Self::trial_view(row, &states, &metrics)?;
            let axes_match = axes.iter().all(|(k, want)| {
                view.axes
                    .get(k)
                    .is_some_and(|v| v == want || want.as_str().is_some_and(|w| v.to_string().trim_matches('"') == w))
            });
            if axes_match && state.is_none_or(|s| s == view.state) {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// One trial with its configuration and model checkpoint.
    pub async fn get_trial(&self, id: &str) -> Result<TrialView, StoreError> {
        let row = sqlx::query(
            "SELECT id, experiment_id, idx, axes, config, reference, model_job, eval_jobs, jobs FROM trials WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("trial", id))?;
        let experiment: String = row.try_get("experiment_id")?;
        let states = self.job_states(&experiment).await?;
        let metrics = self.latest_metrics(&experiment).await?;
        let mut view = Self::trial_view(&row, &states, &metrics)?;
        view.config = Some(json(&row, "config", "trial config")?);
        if let Some(model_job) = &view.model_job {
            let job = self.get_job(&format!("{experiment}.{model_job}")).await?;
            view.checkpoint = job.checkpoint;
        }
        Ok(view)
    }

    /// Ids (`<experiment>.<job>`) of every job of trial `id`, dependencies first (the plan's
    /// order).
    ///
    /// Errors: [`StoreError::NotFound`] for an unknown trial.
    pub async fn trial_job_ids(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let row = sqlx::query("SELECT experiment_id, jobs FROM trials WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("trial", id))?;
        let experiment: String = row.try_get("experiment_id")?;
        let keys: Vec<String> = json(&row, "jobs", "trial jobs")?;
        Ok(keys.into_iter().map(|k| format!("{experiment}.{k}")).collect())
    }

    /// A job as listed (no attempts, dependencies or payload).
    async fn listed_job(&self, id: &str) -> Result<JobView, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("job", id))?;
        job_view(&row)
    }

    /// Metric series of each job of a trial, kept apart (pretraining, training, the evaluation
    /// detector's training and evaluation report some of the same names), dependencies first;
    /// each series downsampled to at most `max_points` (first and last kept, evenly strided
    /// between). `names` empty means every metric.
    ///
    /// Errors: [`StoreError::NotFound`] for an unknown trial.
    pub async fn trial_metrics(
        &self,
        id: &str,
        names: &[String],
        max_points: usize,
    ) -> Result<TrialMetrics, StoreError> {
        let mut jobs = Vec::new();
        for job_id in self.trial_job_ids(id).await? {
            let job = self.listed_job(&job_id).await?;
            let mut series = self.series_of(&job.id, names).await?;
            for points in series.values_mut() {
                *points = downsample(points, max_points.max(2));
            }
            jobs.push(JobMetrics {
                job: job.id,
                kind: job.kind,
                label: job.label,
                series,
            });
        }
        Ok(TrialMetrics {
            trial: id.to_string(),
            jobs,
        })
    }

    /// Metric series of one job, downsampled like [`Store::trial_metrics`].
    pub async fn job_metrics(
        &self,
        job: &str,
        names: &[String],
        max_points: usize,
    ) -> Result<MetricSeries, StoreError> {
        self.get_job(job).await?;
        let mut series = self.series_of(job, names).await?;
        for points in series.values_mut() {
            *points = downsample(points, max_points.max(2));
        }
        Ok(series)
    }

    async fn series_of(&self, job: &str, names: &[String]) -> Result<MetricSeries, StoreError> {
        let rows = sqlx::query("SELECT name, step, value FROM metrics WHERE job_id = $1 ORDER BY name, step")
            .bind(job)
            .fetch_all(&self.pool)
            .await?;
        let mut series: MetricSeries = BTreeMap::new();
        for r in rows {
            let name: String = r.try_get("name")?;
            if !names.is_empty() && !names.contains(&name) {
                continue;
            }
            series.entry(name).or_default().push(MetricPoint {
                step: r.try_get::<i64, _>("step")? as u64,
                value: r.try_get("value")?,
            });
        }
        Ok(series)
    }

    /// The last `n` log lines of an attempt (default: the latest attempt).
    pub async fn log_tail(&self, job: &str, attempt: Option<u64>, n: i64) -> Result<LogTail, StoreError> {
        let view = self.get_job(job).await?;
        let attempt = attempt.unwrap_or(view.attempt);
        let lines = self.log_lines(job, attempt, n).await?;
        Ok(LogTail { attempt, lines })
    }

    /// The last `n` log lines of attempt `attempt` of `job`, oldest first.
    async fn log_lines(&self, job: &str, attempt: u64, n: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT line FROM logs WHERE job_id = $1 AND attempt = $2 ORDER BY seq DESC LIMIT $3")
            .bind(job)
            .bind(attempt as i64)
            .bind(n)
            .fetch_all(&self.pool)
            .await?;
        let mut lines: Vec<String> = rows.iter().map(|r| r.try_get("line")).collect::<Result<_, _>>()?;
        lines.reverse();
        Ok(lines)
    }

    /// Every job of trial `id`, dependencies first, each with its attempts (and the errors
    /// they ended with) and the last `n` lines of its latest attempt's log.
    ///
    /// Errors: [`StoreError::NotFound`] for an unknown trial.
    pub async fn trial_logs(&self, id: &str, n: i64) -> Result<TrialLogs, StoreError> {
        let mut jobs = Vec::new();
        for job_id in self.trial_job_ids(id).await? {
            let job = self.get_job(&job_id).await?;
            let lines = self.log_lines(&job.id, job.attempt, n).await?;
            jobs.push(JobLog {
                job: job.id,
                kind: job.kind,
                label: job.label,
                state: job.state,
                attempt: job.attempt,
                last_error: job.last_error,
                attempts: job.attempts,
                lines,
            });
        }
        Ok(TrialLogs {
            trial: id.to_string(),
            jobs,
        })
    }

    /// The best trial of an experiment by a metric of its evaluation jobs.
    async fn best_trial(&self, experiment: &str, metric: &str) -> Result<Option<BestTrial>, StoreError> {
        let trials = self.list_trials(experiment, None, &IndexMap::new()).await?;
        let better = |a: f64, b: f64| if higher_is_better(metric) { a > b } else { a < b };
        let mut best: Option<BestTrial> = None;
        for t in trials {
            if let Some(v) = t.metrics.get(metric).copied() {
                if best.as_ref().is_none_or(|b| better(v, b.value)) {
                    best = Some(BestTrial {
                        trial: t.index,
                        metric: metric.to_string(),
                        value: v,
                    });
                }
            }
        }
        Ok(best)
    }

    /// Registers a worker; `metrics_address` is where Prometheus reaches its own metrics
    /// (`HOST:PORT`), if it serves any.
    pub async fn register_worker(
        &self,
        id: &str,
        name: &str,
        devices: &[String],
        labels: &BTreeMap<String, String>,
        key_sha256: &[u8; 32],
        metrics_address: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO workers (id, name, devices, labels, registered_at, heartbeat_at, key_sha256, metrics_address) \
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7)",
        )
        .bind(id)
        .bind(name)
        .bind(to_json(&devices))
        .bind(to_json(labels))
        .bind(now)
        .bind(hex(key_sha256))
        .bind(metrics_address.map(str::to_string))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The workers seen within `window_ms` that advertised a metrics address: (name, devices,
    /// `HOST:PORT`), by name then id.
    ///
    /// Errors: [`StoreError::Database`]; [`StoreError::Corrupt`] for a device list that does
    /// not parse.
    pub async fn live_metrics_targets(&self, window_ms: i64) -> Result<Vec<(String, Vec<String>, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, devices, metrics_address FROM workers \
             WHERE heartbeat_at > $1 AND metrics_address IS NOT NULL ORDER BY name, id",
        )
        .bind(now_ms() - window_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("name")?,
                    json::<Vec<String>>(r, "devices", "worker devices")?,
                    r.try_get::<String, _>("metrics_address")?,
                ))
            })
            .collect()
    }

    /// Records that a worker is alive; 404 for an unknown worker. Writes at most once a
    /// second per worker (a write costs a commit flush; leases come much faster than that).
    pub async fn touch_worker(&self, id: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let n = sqlx::query("UPDATE workers SET heartbeat_at = $1 WHERE id = $2 AND heartbeat_at < $3")
            .bind(now)
            .bind(id)
            .bind(now - 1000)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            let known = sqlx::query("SELECT id FROM workers WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            if known.is_none() {
                return Err(StoreError::not_found("worker", id));
            }
        }
        Ok(())
    }

    /// The SHA-256 of worker `id`'s key; `None` for a worker registered before keys existed.
    ///
    /// Errors: [`StoreError::NotFound`] for an unknown worker; [`StoreError::Corrupt`] for a
    /// stored digest that is not 64 hex digits.
    pub async fn worker_key_digest(&self, id: &str) -> Result<Option<[u8; 32]>, StoreError> {
        let row = sqlx::query("SELECT key_sha256 FROM workers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("worker", id))?;
        let stored: Option<String> = row.try_get("key_sha256")?;
        stored
            .map(|h| {
                unhex(&h).ok_or(StoreError::Corrupt {
                    what: "worker key digest",
                    message: format!("`{h}` is not 64 hex digits"),
                })
            })
            .transpose()
    }

    /// Who holds `job` now: its current attempt, the worker that leased it (none unless the job
    /// is running) and the workers of its gang, if any.
    ///
    /// Errors: [`StoreError::NotFound`] for an unknown job.
    pub async fn attempt_holders(&self, job: &str) -> Result<(u64, Option<String>, Vec<String>), StoreError> {
        let row = sqlx::query(
            "SELECT attempt, CASE WHEN state = 'running' THEN worker_id END AS worker_id FROM jobs WHERE id = $1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("job", job))?;
        let attempt: i64 = row.try_get("attempt")?;
        let worker: Option<String> = row.try_get("worker_id")?;
        let members = sqlx::query("SELECT worker_id FROM gang_members WHERE job_id = $1 AND attempt = $2")
            .bind(job)
            .bind(attempt)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("worker_id"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((attempt.max(0) as u64, worker, members))
    }

    /// Records that the worker running `job` is alive.
    pub async fn touch_worker_of(&self, job: &str) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE workers SET heartbeat_at = $1 WHERE id = (SELECT worker_id FROM jobs WHERE id = $2) AND heartbeat_at < $3",
        )
        .bind(now)
        .bind(job)
        .bind(now - 1000)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Workers seen within `window_ms`.
    pub async fn workers_alive(&self, window_ms: i64) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM workers WHERE heartbeat_at > $1")
            .bind(now_ms() - window_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Jobs by (state, kind).
    pub async fn job_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, kind, COUNT(*) AS n FROM jobs GROUP BY state, kind")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("kind")?, r.try_get("n")?)))
            .collect()
    }

    /// Whether every job of an experiment has finished.
    pub async fn experiment_finished(&self, experiment: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM jobs WHERE experiment_id = $1 AND state IN ('blocked', 'queued', 'running') LIMIT 1",
        )
        .bind(experiment)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_none())
    }

    /// Trial indices a job serves.
    pub async fn job_trials(&self, job: &str) -> Result<Vec<u64>, StoreError> {
        let row = sqlx::query("SELECT trials FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => json(&r, "trials", "job trials"),
            None => Ok(Vec::new()),
        }
    }
}

/// Keeps at most `max` points: the first, the last, and evenly strided points between.
pub fn downsample(points: &[MetricPoint], max: usize) -> Vec<MetricPoint> {
    if points.len() <= max {
        return points.to_vec();
    }
    let last = points.len() - 1;
    (0..max).map(|i| points[i * last / (max - 1)]).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_ends_and_count() {
        let pts: Vec<MetricPoint> = (0..1000)
            .map(|s| MetricPoint {
                step: s,
                value: s as f64,
            })
            .collect();
        let d = downsample(&pts, 10);
        assert_eq!(d.len(), 10);
        assert_eq!(d[0].step, 0);
        assert_eq!(d[9].step, 999);
        assert!(d.windows(2).all(|w| w[0].step < w[1].step));
        assert_eq!(downsample(&pts[..5], 10).len(), 5);
    }

    #[test]
    fn aggregate_state_prefers_activity_then_failure() {
        use JobState::*;
        assert_eq!(aggregate_state(&[Succeeded, Running, Failed]), Running);
        assert_eq!(aggregate_state(&[Succeeded, Failed, Cancelled]), Failed);
        assert_eq!(aggregate_state(&[Succeeded, Succeeded]), Succeeded);
        assert_eq!(aggregate_state(&[Blocked, Succeeded]), Blocked);
    }
}
