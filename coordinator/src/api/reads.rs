//! Read endpoints for trials and jobs: lists with filters, details, metric series, logs.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;
use spatiallock_protocol::api::{JobState, JobView, LogTail, MetricSeries, Page, TrialView};
use spatiallock_protocol::JobKind;

use super::{paging, Access, AppState};
use crate::error::ApiError;
use crate::store::JobFilter;

fn parse_state(s: Option<&str>) -> Result<Option<JobState>, ApiError> {
    s.map(|s| {
        JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown state `{s}` (blocked, queued, running, succeeded, failed, cancelled)"
            ))
        })
    })
    .transpose()
}

/// `GET /v1/experiments/{id}/trials?state=…&axis.<name>=<value>`.
pub async fn trials(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<TrialView>>, ApiError> {
    state.authorize(&headers, Access::User)?;
    let wanted = parse_state(q.get("state").map(String::as_str))?;
    let mut axes = IndexMap::new();
    for (k, v) in &q {
        if let Some(axis) = k.strip_prefix("axis.") {
            // Values are JSON when they parse as JSON (`[1,1]`, `0.5`), else strings.
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
            axes.insert(axis.to_string(), value);
        } else if k != "state" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter `{k}` (state, axis.<name>)"
            )));
        }
    }
    Ok(Json(state.store.list_trials(&id, wanted, &axes).await?))
}

/// `GET /v1/trials/{id}`.
pub async fn trial(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TrialView>, ApiError> {
    state.authorize(&headers, Access::User)?;
    Ok(Json(state.store.get_trial(&id).await?))
}

/// Query of the metric series.
#[derive(Debug, Deserialize)]
pub struct SeriesQuery {
    names: Option<String>,
    max_points: Option<usize>,
}

fn series_args(q: SeriesQuery) -> Result<(Vec<String>, usize), ApiError> {
    let names: Vec<String> = q
        .names
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let max = q.max_points.unwrap_or(500);
    if !(2..=100_000).contains(&max) {
        return Err(ApiError::bad_request(format!("max_points must be 2–100000, got {max}")));
    }
    Ok((names, max))
}

/// `GET /v1/trials/{id}/metrics?names=a,b&max_points=500`: every job of the trial.
pub async fn trial_metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<MetricSeries>, ApiError> {
    state.authorize(&headers, Access::User)?;
    let (names, max) = series_args(q)?;
    Ok(Json(state.store.trial_metrics(&id, &names, max).await?))
}

/// `GET /v1/jobs/{id}/metrics?names=a,b&max_points=500`: one job's series.
pub async fn job_metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<MetricSeries>, ApiError> {
    state.authorize(&headers, Access::User)?;
    let (names, max) = series_args(q)?;
    Ok(Json(state.store.job_metrics(&id, &names, max).await?))
}

/// Query of log tails.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    attempt: Option<u64>,
    lines: Option<i64>,
}

fn tail_lines(q: &LogQuery) -> Result<i64, ApiError> {
    let n = q.lines.unwrap_or(200);
    if !(1..=10_000).contains(&n) {
        return Err(ApiError::bad_request(format!("lines must be 1–10000, got {n}")));
    }
    Ok(n)
}

/// `GET /v1/jobs/{id}/logs?attempt=&lines=`.
pub async fn job_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<LogTail>, ApiError> {
    state.authorize(&headers, Access::User)?;
    Ok(Json(state.store.log_tail(&id, q.attempt, tail_lines(&q)?).await?))
}

/// `GET /v1/trials/{id}/logs`: the log of the trial's running job, else of its last started one.
pub async fn trial_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<LogTail>, ApiError> {
    state.authorize(&headers, Access::User)?;
    let trial = state.store.get_trial(&id).await?;
    let mut chosen: Option<JobView> = None;
    for key in trial.model_job.iter().chain(trial.eval_jobs.iter()) {
        let job = state.store.get_job(&format!("{}.{key}", trial.experiment_id)).await?;
        if job.state == JobState::Running {
            chosen = Some(job);
            break;
        }
        if job.attempt > 0 {
            chosen = Some(job);
        }
    }
    match chosen {
        Some(job) => Ok(Json(state.store.log_tail(&job.id, q.attempt, tail_lines(&q)?).await?)),
        None => Ok(Json(LogTail {
            attempt: 0,
            lines: Vec::new(),
        })),
    }
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    experiment: Option<String>,
    state: Option<String>,
    kind: Option<String>,
    page_token: Option<String>,
    page_size: Option<i64>,
}

/// `GET /v1/jobs?experiment=&state=&kind=`.
pub async fn jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<JobsQuery>,
) -> Result<Json<Page<JobView>>, ApiError> {
    state.authorize(&headers, Access::User)?;
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            serde_json::from_value::<JobKind>(Value::String(k.to_string())).map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown kind `{k}` (pretrain, train, train-detector, evaluate, noop)"
                ))
            })
        })
        .transpose()?;
    let (offset, size) = paging(q.page_token.as_deref(), q.page_size)?;
    let filter = JobFilter {
        experiment: q.experiment,
        state: parse_state(q.state.as_deref())?,
        kind,
    };
    let (items, more) = state.store.list_jobs(&filter, offset, size).await?;
    Ok(Json(Page {
        items,
        next_page_token: more.then(|| (offset + size).to_string()),
    }))
}

/// `GET /v1/jobs/{id}`.
pub async fn job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    state.authorize(&headers, Access::User)?;
    Ok(Json(state.store.get_job(&id).await?))
}
