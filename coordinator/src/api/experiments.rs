//! Experiment endpoints: submit (idempotent), list, get, cancel, retry-failed, priority, report.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use spatiallock_protocol::api::{Changed, ExperimentView, Page, PriorityChange, Report, SubmitResponse};
use spatiallock_protocol::{expand, ExperimentSpec, Plan, SpecFormat};

use super::openapi::ErrorResponses;
use super::{body_bytes, paging, AppState, JsonBody, QueryParams, UserCaller};
use crate::error::ApiError;
use crate::store::{reports, ExperimentFilter};

/// Query of `POST /v1/experiments`.
#[derive(Debug, Deserialize)]
pub struct SubmitQuery {
    #[serde(default)]
    validate_only: bool,
}

/// `POST /v1/experiments`: a grid spec as YAML or JSON.
#[utoipa::path(
    post,
    path = "/v1/experiments",
    tag = "experiments",
    summary = "Submit an experiment grid",
    params(
        ("validate_only" = Option<bool>, Query, description = "Check and expand only; store nothing"),
        ("Idempotency-Key" = Option<String>, Header, description = "Re-submitting with the same key and spec returns the same experiment (1-200 visible ASCII characters)", max_length = 200, pattern = "^[\\t -~]*[!-~][\\t -~]*$")
    ),
    request_body(content = String, content_type = "application/yaml", description = "A grid spec (YAML or JSON, see configs/)"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = SubmitResponse),
        (status = 200, description = "Already submitted with this key, or validated only", body = SubmitResponse),
        ErrorResponses
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    _caller: UserCaller,
    QueryParams(q): QueryParams<SubmitQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let raw = v
                .to_str()
                .map_err(|_| ApiError::bad_request("the Idempotency-Key header must be visible ASCII"))?;
            let k = raw.trim().to_string();
            if k.is_empty() || raw.len() > 200 {
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
    let max_trials = state.config.max_trials;
    // Parsing and expanding cost CPU in proportion to the body: done on the blocking pool, at
    // most `parse_slots` at a time, so that no request can delay another's on the async threads.
    let (spec, plan) = {
        // The permit moves into the parse: a client that goes away cannot free it early.
        let slot = state
            .parse_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("the coordinator is shutting down"))?;
        tokio::task::spawn_blocking(move || {
            let parsed = parse_and_expand(&bytes, format, max_trials);
            drop(slot);
            parsed
        })
        .await
        .map_err(|e| ApiError::internal(format!("parsing the spec stopped: {e}")))??
    };
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
    state.list_changed();
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

/// Parses a grid spec and expands it, refusing grids larger than `max_trials` before expanding.
fn parse_and_expand(bytes: &[u8], format: SpecFormat, max_trials: usize) -> Result<(ExperimentSpec, Plan), ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::bad_request("the spec is not UTF-8 text"))?;
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
    if declared > max_trials {
        return Err(ApiError::too_large(format!(
            "the grid expands to {declared} trials; this coordinator accepts at most {max_trials} per experiment"
        )));
    }
    let plan = expand(&spec).map_err(ApiError::invalid_spec)?;
    Ok((spec, plan))
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
#[utoipa::path(
    get,
    path = "/v1/experiments",
    tag = "experiments",
    summary = "List experiments",
    params(
        ("name" = Option<String>, Query, description = "Substring of the name"),
        ("state" = Option<String>, Query, description = "Experiment state", pattern = "^(queued|running|succeeded|failed|cancelled)$"),
        ("best_by" = Option<String>, Query, description = "Metric that picks each experiment's best trial"),
        ("page_token" = Option<String>, Query, description = "From the previous page (an offset)", pattern = "^[0-9]{0,18}$"),
        ("page_size" = Option<i64>, Query, description = "1-1000, default 100", minimum = 1, maximum = 1000)
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<ExperimentView>),
        ErrorResponses
    )
)]
pub async fn list(
    State(state): State<AppState>,
    _caller: UserCaller,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    if let Some(s) = &q.state {
        if !["queued", "running", "succeeded", "failed", "cancelled"].contains(&s.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown state `{s}` (queued, running, succeeded, failed, cancelled)"
            )));
        }
    }
    let (offset, size) = paging(q.page_token.as_deref(), q.page_size)?;
    // The list is what dashboards and status boards poll: one page is read from the database at
    // most once per `list_cache_ttl` per replica, concurrent misses wait for the same read, and
    // this replica's own writes (submit, cancel, retry, priority) clear it at once.
    // The generation in the key: a read that started before one of this replica's writes
    // cannot store its page under the key that later reads use.
    let generation = state.list_generation.load(std::sync::atomic::Ordering::SeqCst);
    let key = format!(
        "{generation}|{:?}|{:?}|{:?}|{offset}|{size}",
        q.name, q.state, q.best_by
    );
    let filter = ExperimentFilter {
        name: q.name,
        state: q.state,
        best_by: q.best_by,
    };
    let store = state.store.clone();
    let read = async move {
        let (items, more) = store.list_experiments(&filter, offset, size).await?;
        let page = Page {
            items,
            next_page_token: more.then(|| (offset + size).to_string()),
        };
        serde_json::to_vec(&page)
            .map(Bytes::from)
            .map_err(|e| ApiError::internal(format!("encoding the list: {e}")))
    };
    let page = if state.config.list_cache_ttl.is_zero() {
        read.await?
    } else {
        state.list_cache.try_get_with(key, read).await.map_err(|e| ApiError {
            status: e.status,
            body: e.body.clone(),
        })?
    };
    Ok(([(CONTENT_TYPE, "application/json")], page).into_response())
}

/// Query of `GET /v1/experiments/{id}`.
#[derive(Debug, Deserialize)]
pub struct GetQuery {
    best_by: Option<String>,
}

/// `GET /v1/experiments/{id}`.
#[utoipa::path(
    get,
    path = "/v1/experiments/{id}",
    tag = "experiments",
    summary = "An experiment: spec, job counts by state, best trial",
    params(
        ("id" = String, Path, description = "Experiment id"),
        ("best_by" = Option<String>, Query, description = "Metric that picks the best trial")
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ExperimentView),
        ErrorResponses
    )
)]
pub async fn get_one(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<GetQuery>,
) -> Result<Json<ExperimentView>, ApiError> {
    Ok(Json(state.store.get_experiment(&id, q.best_by.as_deref()).await?))
}

/// `POST /v1/experiments/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/v1/experiments/{id}/cancel",
    tag = "experiments",
    summary = "Cancel queued jobs now and running ones through their heartbeat",
    params(
        ("id" = String, Path, description = "Experiment id")
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Changed),
        ErrorResponses
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
) -> Result<Json<Changed>, ApiError> {
    let jobs = state.store.cancel_experiment(&id).await?;
    state.list_changed();
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
#[utoipa::path(
    post,
    path = "/v1/experiments/{id}/retry-failed",
    tag = "experiments",
    summary = "Requeue failed (and cancelled) jobs from their last checkpoints",
    params(
        ("id" = String, Path, description = "Experiment id"),
        ("include_cancelled" = Option<bool>, Query, description = "Requeue cancelled jobs too (resume after a cancel: a cancelled training job committed a checkpoint as it stopped)")
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Changed),
        ErrorResponses
    )
)]
pub async fn retry_failed(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<RetryQuery>,
) -> Result<Json<Changed>, ApiError> {
    let (jobs, ready) = state.store.retry_failed(&id, q.include_cancelled).await?;
    state.list_changed();
    state.dispatch.publish(&ready).await;
    Ok(Json(Changed { jobs }))
}

/// `POST /v1/experiments/{id}/priority`.
#[utoipa::path(
    post,
    path = "/v1/experiments/{id}/priority",
    tag = "experiments",
    summary = "Change the priority of an experiment's jobs",
    params(
        ("id" = String, Path, description = "Experiment id")
    ),
    request_body = PriorityChange,
    security(("bearer" = [])),
    responses(
        (status = 200, body = Changed),
        ErrorResponses
    )
)]
pub async fn priority(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PriorityChange>,
) -> Result<Json<Changed>, ApiError> {
    spatiallock_protocol::spec::check_priority(body.priority).map_err(|m| ApiError::invalid("priority", m))?;
    let jobs = state.store.set_priority(&id, body.priority).await?;
    state.list_changed();
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
#[utoipa::path(
    get,
    path = "/v1/experiments/{id}/report",
    tag = "experiments",
    summary = "The report: our numbers beside the paper's",
    params(
        ("id" = String, Path, description = "Experiment id"),
        ("format" = Option<String>, Query, description = "md, csv or json (default)", pattern = "^(md|markdown|csv|json)$")
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Results beside the paper's numbers (format json, md or csv)", content(
            (Report = "application/json"),
            (String = "text/markdown"),
            (String = "text/csv")
        )),
        ErrorResponses
    )
)]
pub async fn report(
    State(state): State<AppState>,
    _caller: UserCaller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<ReportQuery>,
) -> Result<Response, ApiError> {
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
