//! Read endpoints for trials and jobs: lists with filters, details, metric series, logs.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;
use spatiallock_protocol::api::{
    JobState, JobView, LogTail, MetricPoint, MetricSeries, Page, TrialLogs, TrialMetrics, TrialView,
};
use spatiallock_protocol::JobKind;

use super::openapi::ErrorResponses;
use super::{paging, AppState, QueryParams, UserCaller};
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
#[utoipa::path(
    get,
    path = "/v1/experiments/{id}/trials",
    tag = "trials",
    summary = "The trials of an experiment",
    params(
        ("id" = String, Path, description = "Experiment id"),
        ("state" = Option<String>, Query, description = "Trial state; also axis.<name>=<value> filters", pattern = "^(blocked|queued|running|succeeded|failed|cancelled)$")
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<TrialView>),
        ErrorResponses
    )
)]
pub async fn trials(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Json<Vec<TrialView>>, ApiError> {
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
#[utoipa::path(
    get,
    path = "/v1/trials/{id}",
    tag = "trials",
    summary = "A trial: config, axes, state, metrics, checkpoint",
    params(
        ("id" = String, Path, description = "Trial id")
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = TrialView),
        ErrorResponses
    )
)]
pub async fn trial(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
) -> Result<Json<TrialView>, ApiError> {
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

/// `GET /v1/trials/{id}/metrics?names=a,b&max_points=500`: each job of the trial apart.
#[utoipa::path(
    get,
    path = "/v1/trials/{id}/metrics",
    tag = "trials",
    summary = "Metric series of each job of a trial, kept apart",
    description = "One entry per job of the trial, dependencies first (pretrain, train, train-detector, \
                   evaluate), each naming the job and its kind with its own series: pretraining, training \
                   and the detector's training report the same names (`loss`, `lr`) over steps of their own.",
    params(
        ("id" = String, Path, description = "Trial id"),
        ("names" = Option<String>, Query, description = "Comma-separated metric names"),
        ("max_points" = Option<usize>, Query, description = "Downsample each series to this many points (2-100000, default 500)", minimum = 2, maximum = 100000)
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Each job's metric series (name to points in step order)", body = TrialMetrics),
        ErrorResponses
    )
)]
pub async fn trial_metrics(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<SeriesQuery>,
) -> Result<Json<TrialMetrics>, ApiError> {
    let (names, max) = series_args(q)?;
    Ok(Json(state.store.trial_metrics(&id, &names, max).await?))
}

/// `GET /v1/jobs/{id}/metrics?names=a,b&max_points=500`: one job's series.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/metrics",
    tag = "jobs",
    summary = "Metric series of one job",
    params(
        ("id" = String, Path, description = "Job id"),
        ("names" = Option<String>, Query, description = "Comma-separated metric names"),
        ("max_points" = Option<usize>, Query, description = "Downsample each series to this many points (2-100000, default 500)", minimum = 2, maximum = 100000)
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = BTreeMap<String, Vec<MetricPoint>>),
        ErrorResponses
    )
)]
pub async fn job_metrics(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<SeriesQuery>,
) -> Result<Json<MetricSeries>, ApiError> {
    let (names, max) = series_args(q)?;
    Ok(Json(state.store.job_metrics(&id, &names, max).await?))
}

/// Query of log tails.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// Signed, as stored: a value beyond 2^63 − 1 is refused by the query parser.
    attempt: Option<i64>,
    lines: Option<i64>,
}

fn log_attempt(q: &LogQuery) -> Result<Option<u64>, ApiError> {
    q.attempt
        .map(|a| u64::try_from(a).map_err(|_| ApiError::bad_request(format!("attempt must be 0 or more, got {a}"))))
        .transpose()
}

fn tail_lines(q: &LogQuery) -> Result<i64, ApiError> {
    let n = q.lines.unwrap_or(200);
    if !(1..=10_000).contains(&n) {
        return Err(ApiError::bad_request(format!("lines must be 1–10000, got {n}")));
    }
    Ok(n)
}

/// `GET /v1/jobs/{id}/logs?attempt=&lines=`.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/logs",
    tag = "jobs",
    summary = "Log tail of an attempt",
    params(
        ("id" = String, Path, description = "Job id"),
        ("attempt" = Option<u64>, Query, description = "Attempt (default: the latest)"),
        ("lines" = Option<i64>, Query, description = "Lines from the end (1-10000, default 200)", minimum = 1, maximum = 10000)
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = LogTail),
        ErrorResponses
    )
)]
pub async fn job_logs(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<LogQuery>,
) -> Result<Json<LogTail>, ApiError> {
    Ok(Json(
        state.store.log_tail(&id, log_attempt(&q)?, tail_lines(&q)?).await?,
    ))
}

/// Query of a trial's logs.
#[derive(Debug, Deserialize)]
pub struct TrialLogQuery {
    /// Signed, as stored: a value beyond 2^63 − 1 is refused by the query parser.
    lines: Option<i64>,
}

/// `GET /v1/trials/{id}/logs?lines=`: every job of the trial, with why its attempts failed.
#[utoipa::path(
    get,
    path = "/v1/trials/{id}/logs",
    tag = "trials",
    summary = "Logs of every job of a trial, with the failure reasons",
    description = "One entry per job of the trial, dependencies first: its kind, state, every attempt \
                   with its outcome and the error it ended with, and the tail of its latest attempt's log.",
    params(
        ("id" = String, Path, description = "Trial id"),
        ("lines" = Option<i64>, Query, description = "Lines from the end of each job's log (1-10000, default 200)", minimum = 1, maximum = 10000)
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = TrialLogs),
        ErrorResponses
    )
)]
pub async fn trial_logs(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<TrialLogQuery>,
) -> Result<Json<TrialLogs>, ApiError> {
    let lines = tail_lines(&LogQuery {
        attempt: None,
        lines: q.lines,
    })?;
    Ok(Json(state.store.trial_logs(&id, lines).await?))
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
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    summary = "List jobs",
    params(
        ("experiment" = Option<String>, Query, description = "Experiment id"),
        ("state" = Option<String>, Query, description = "Job state", pattern = "^(blocked|queued|running|succeeded|failed|cancelled)$"),
        ("kind" = Option<String>, Query, description = "Job kind", pattern = "^(pretrain|train|train-detector|evaluate|augment-detector|noop)$"),
        ("page_token" = Option<String>, Query, description = "From the previous page (an offset)", pattern = "^[0-9]{0,18}$"),
        ("page_size" = Option<i64>, Query, description = "1-1000, default 100", minimum = 1, maximum = 1000)
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<JobView>),
        ErrorResponses
    )
)]
pub async fn jobs(
    State(state): State<AppState>,
    _caller: UserCaller,
    QueryParams(q): QueryParams<JobsQuery>,
) -> Result<Json<Page<JobView>>, ApiError> {
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            serde_json::from_value::<JobKind>(Value::String(k.to_string())).map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown kind `{k}` (pretrain, train, train-detector, evaluate, augment-detector, noop)"
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
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    summary = "A job: attempts, dependencies, payload",
    params(
        ("id" = String, Path, description = "Job id")
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = JobView),
        ErrorResponses
    )
)]
pub async fn job(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.store.get_job(&id).await?))
}
