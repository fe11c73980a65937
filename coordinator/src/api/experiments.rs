//! Experiment endpoints: submit (idempotent), list, get, cancel, retry-failed, priority, report.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use spatiallock_protocol::api::{Changed, ExperimentView, Page, PriorityChange, SubmitResponse};
use spatiallock_protocol::{expand, ExperimentSpec, SpecFormat};

use super::{body_bytes, paging, Access, AppState, JsonBody};
use crate::error::ApiError;
use crate::store::{reports, ExperimentFilter};

/// Query of `POST /v1/experiments`.
#[derive(Debug, Deserialize)]
pub struct SubmitQuery {
    #[serde(default)]
    validate_only: bool,
}

/// `POST /v1/experiments`: a grid spec as YAML or JSON.
pub async fn submit(
    State(state): State<AppState>,
    Query(q): Query<SubmitQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    state.authorize(&headers, Access::User)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("the Idempotency-Key header must be visible ASCII"))?
                .trim()
                .to_string();
            if k.is_empty() || k.len() > 200 {
                return Err(ApiError::bad_request(
                    "the Idempotency-Key header must have 1–200 characters",
                ));
            }
            Some(k)
        }
        None => None,
    };
    let format = match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) if ct.contains("json") => SpecFormat::Json,
        _ => SpecFormat::Yaml,
    };
    let bytes = body_bytes(req, &state).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the spec is not UTF-8 text"))?;
    let spec = ExperimentSpec::parse(text, format).map_err(ApiError::invalid_spec)?;
    // A cheap size check before expanding: the product of the axis lengths.
    let declared: usize = spec
        .grid
        .values()
        .map(Vec::len)
        .chain(spec.cases.values().map(Vec::len))
        .chain(spec.seeds.iter().map(|s| s.values().len()))
        .try_fold(1usize, |a, n| a.checked_mul(n))
        .unwrap_or(usize::MAX);
    if declared > state.config.max_trials {
        return Err(ApiError::too_large(format!(
            "the grid expands to {declared} trials; this coordinator accepts at most {} per experiment",
            state.config.max_trials
        )));
    }
    let plan = expand(&spec).map_err(ApiError::invalid_spec)?;
    let mut jobs_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for j in &plan.jobs {
        *jobs_by_kind.entry(j.kind.as_str().to_string()).or_default() += 1;
    }
    let mut response = SubmitResponse {
        id: String::new(),
        created: false,
        num_trials: plan.trials.len() as u64,
        num_jobs: plan.jobs.len() as u64,
        jobs_by_kind,
        warnings: plan.warnings.clone(),
    };
    if q.validate_only {
        return Ok((StatusCode::OK, Json(response)).into_response());
    }
    let submitted = state.store.submit(&spec, &plan, key.as_deref()).await?;
    state.dispatch.publish(&submitted.ready).await;
    tracing::info!(experiment = %submitted.id, created = submitted.created, trials = plan.trials.len(), "submitted");
    response.id = submitted.id;
    response.created = submitted.created;
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(response)).into_response())
}

/// Query of `GET /v1/experiments`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    name: Option<String>,
    state: Option<String>,
    best_by: Option<String>,
    page_token: Option<String>,
    page_size: Option<i64>,
}

/// `GET /v1/experiments`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<ExperimentView>>, ApiError> {
    state.authorize(&headers, Access::User)?;
    if let Some(s) = &q.state {
        if !["queued", "running", "succeeded", "failed", "cancelled"].contains(&s.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown state `{s}` (queued, running, succeeded, failed, cancelled)"
            )));
        }
    }
    let (offset, size) = paging(q.page_token.as_deref(), q.page_size)?;
    let filter = ExperimentFilter {
        name: q.name,
        state: q.state,
        best_by: q.best_by,
    };
    let (items, more) = state.store.list_experiments(&filter, offset, size).await?;
    Ok(Json(Page {
        items,
        next_page_token: more.then(|| (offset + size).to_string()),
    }))
}

/// Query of `GET /v1/experiments/{id}`.
#[derive(Debug, Deserialize)]
pub struct GetQuery {
    best_by: Option<String>,
}

/// `GET /v1/experiments/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<GetQuery>,
) -> Result<Json<ExperimentView>, ApiError> {
    state.authorize(&headers, Access::User)?;
    Ok(Json(state.store.get_experiment(&id, q.best_by.as_deref()).await?))
}

/// `POST /v1/experiments/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Changed>, ApiError> {
    state.authorize(&headers, Access::User)?;
    let jobs = state.store.cancel_experiment(&id).await?;
    tracing::info!(experiment = %id, jobs, "cancel requested");
    Ok(Json(Changed { jobs }))
}

/// Query of retry-failed.
#[derive(Debug, Deserialize)]
pub struct RetryQuery {
    #[serde(default)]
    include_cancelled: bool,
}

/// `POST /v1/experiments/{id}/retry-failed[?include_cancelled=true]`.
pub async fn retry_failed(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RetryQuery>,
) -> Result<Json<Changed>, ApiError> {
    state.authorize(&headers, Access::User)?;
    let (jobs, ready) = state.store.retry_failed(&id, q.include_cancelled).await?;
    state.dispatch.publish(&ready).await;
    Ok(Json(Changed { jobs }))
}

/// `POST /v1/experiments/{id}/priority`.
pub async fn priority(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PriorityChange>,
) -> Result<Json<Changed>, ApiError> {
    state.authorize(&headers, Access::User)?;
    if !(-1000..=1000).contains(&body.priority) {
        return Err(ApiError::invalid(
            "priority",
            format!("must be in -1000..=1000, got {}", body.priority),
        ));
    }
    let jobs = state.store.set_priority(&id, body.priority).await?;
    // Hints carry the old order; the reconciler's view is rebuilt from the database.
    state.dispatch.reconcile(&state.store).await;
    Ok(Json(Changed { jobs }))
}

/// Query of the report.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    format: Option<String>,
}

/// `GET /v1/experiments/{id}/report?format=md|csv|json`.
pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Access::User)?;
    let format = q.format.unwrap_or_else(|| "json".into());
    if !["md", "markdown", "csv", "json"].contains(&format.as_str()) {
        return Err(ApiError::bad_request(format!(
            "unknown report format `{format}` (md, csv, json)"
        )));
    }
    let report = state.store.report(&id).await?;
    Ok(match format.as_str() {
        "md" | "markdown" => (
            [(CONTENT_TYPE, "text/markdown; charset=utf-8")],
            reports::to_markdown(&report),
        )
            .into_response(),
        "csv" => ([(CONTENT_TYPE, "text/csv; charset=utf-8")], reports::to_csv(&report)).into_response(),
        _ => Json(report).into_response(),
    })
}
