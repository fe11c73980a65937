//! Worker endpoints: register, heartbeat, lease (long-poll), and the fenced job reports
//! (heartbeat, complete, fail, metrics, checkpoints, logs).

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use spatiallock_protocol::api::{
    check_host_port, AttemptRef, CheckpointCommit, CheckpointCommitted, CompleteRequest, FailRequest, FailureClass,
    GangAssignment, HeartbeatAnswer, JobState, Lease, LeaseRequest, LogBatch, MetricsBatch, RegisterWorker,
    WorkerRegistered,
};

use super::openapi::ErrorResponses;
use super::{AppState, JsonBody, WorkerCaller};
use crate::error::ApiError;
use crate::store::{now_ms, Claimed, GangStep, JobEnd, StoreError};

fn ttl_ms(state: &AppState) -> u64 {
    state.config.lease_ttl.as_millis() as u64
}

/// `POST /v1/workers/register`.
#[utoipa::path(
    post,
    path = "/v1/workers/register",
    tag = "workers",
    summary = "Register a worker and its devices",
    request_body = RegisterWorker,
    security(("bearer" = [])),
    responses(
        (status = 201, body = WorkerRegistered),
        ErrorResponses
    )
)]
pub async fn register(
    State(state): State<AppState>,
    _caller: WorkerCaller,
    JsonBody(body): JsonBody<RegisterWorker>,
) -> Result<(StatusCode, Json<WorkerRegistered>), ApiError> {
    if body.name.is_empty() || body.name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must have 1–200 characters"));
    }
    if body.devices.is_empty() {
        return Err(ApiError::invalid(
            "devices",
            "must list at least one device (`cpu`, `cuda:0`, …)",
        ));
    }
    if let Some(address) = &body.metrics_address {
        check_host_port(address).map_err(|e| ApiError::invalid("metrics_address", e))?;
    }
    let seed = format!(
        "{}/{}/{}",
        body.name,
        now_ms(),
        NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let digest = Sha256::digest(seed.as_bytes());
    let id = format!(
        "w-{}",
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| ApiError::unavailable(format!("no randomness for a worker key: {e}")))?;
    let key: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let key_digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    state
        .store
        .register_worker(
            &id,
            &body.name,
            &body.devices,
            &body.labels,
            &key_digest,
            body.metrics_address.as_deref(),
        )
        .await?;
    tracing::info!(
        worker = %id,
        name = %body.name,
        devices = ?body.devices,
        metrics = ?body.metrics_address,
        "worker registered"
    );
    Ok((
        StatusCode::CREATED,
        Json(WorkerRegistered {
            worker_id: id,
            lease_ttl_ms: ttl_ms(&state),
            worker_key: key,
        }),
    ))
}

static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `POST /v1/workers/{id}/heartbeat`.
#[utoipa::path(
    post,
    path = "/v1/workers/{id}/heartbeat",
    tag = "workers",
    summary = "Worker liveness",
    params(
        ("id" = String, Path, description = "Worker id")
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Alive"),
        ErrorResponses
    )
)]
pub async fn worker_heartbeat(
    State(state): State<AppState>,
    _caller: WorkerCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.verify_worker(&headers, &id).await?;
    state.store.touch_worker(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn try_claim(state: &AppState, worker: &str, devices: u32) -> Result<Option<Claimed>, ApiError> {
    let ttl = ttl_ms(state);
    while let Some(hint) = state.dispatch.next_hint().await {
        // A hint for a job too large for this worker is dropped: the reconciler publishes
        // whatever is still queued again.
        if let Some(c) = state.store.claim(worker, ttl, devices, Some(&hint)).await? {
            return Ok(Some(c));
        }
    }
    Ok(state.store.claim(worker, ttl, devices, None).await?)
}

fn lease_of(state: &AppState, worker: &str, c: Claimed, gang: Option<GangAssignment>) -> Lease {
    let wait_s = (now_ms() - c.queued_at).max(0) as f64 / 1000.0;
    state.telemetry.queue_wait.with_label_values(&[&c.kind]).observe(wait_s);
    tracing::info!(job = %c.id, attempt = c.attempt, worker = %worker, ?gang, "leased");
    Lease {
        job_id: c.id,
        experiment_id: c.experiment_id,
        attempt: c.attempt,
        payload: c.payload,
        checkpoint: c.checkpoint,
        inputs: c.inputs,
        lease_ttl_ms: ttl_ms(state),
        gang,
    }
}

/// One look for work: a started gang this worker is a member of; else (unless it holds a
/// reservation in a forming gang) a job that fits its free devices; else, for a worker that
/// offers to, a reservation in a gang.
async fn next_lease(state: &AppState, worker: &str, body: &LeaseRequest) -> Result<Option<Lease>, ApiError> {
    let ttl = ttl_ms(state);
    let c = &state.config;
    let started = |step: GangStep| match step {
        GangStep::Started {
            claimed,
            assignment,
            rendezvous_s,
        } => {
            if let Some(s) = rendezvous_s {
                state.telemetry.gang_rendezvous.observe(s);
            }
            Some(lease_of(state, worker, *claimed, Some(assignment)))
        }
        _ => None,
    };
    if body.gang.is_some() {
        match state
            .store
            .gang_poll(worker, ttl, c.gang_backoff.as_millis() as u64)
            .await?
        {
            GangStep::Idle => {}
            GangStep::Forming { .. } => return Ok(None), // its devices are reserved
            step => return Ok(started(step)),
        }
    }
    if let Some(claimed) = try_claim(state, worker, body.devices).await? {
        return Ok(Some(lease_of(state, worker, claimed, None)));
    }
    if let Some(offer) = &body.gang {
        let step = state
            .store
            .gang_join(worker, body.devices, offer, c.gang_reservation.as_millis() as u64, ttl)
            .await?;
        return Ok(started(step));
    }
    Ok(None)
}

/// `POST /v1/workers/{id}/lease`: a job (200) or nothing within `wait_ms` (204).
#[utoipa::path(
    post,
    path = "/v1/workers/{id}/lease",
    tag = "workers",
    summary = "Long-poll for a job",
    params(
        ("id" = String, Path, description = "Worker id")
    ),
    request_body = LeaseRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = Lease),
        (status = 204, description = "No job within wait_ms"),
        ErrorResponses
    )
)]
pub async fn lease(
    State(state): State<AppState>,
    _caller: WorkerCaller,
    headers: HeaderMap,
    Path(worker): Path<String>,
    JsonBody(body): JsonBody<spatiallock_protocol::api::LeaseRequest>,
) -> Result<Response, ApiError> {
    state.verify_worker(&headers, &worker).await?;
    if body.devices == 0 {
        return Err(ApiError::invalid("devices", "must be at least 1"));
    }
    if let Some(offer) = &body.gang {
        if offer.address.is_empty() || offer.address.chars().count() > 255 {
            return Err(ApiError::invalid(
                "gang.address",
                "must be a host name or address (1–255 characters)",
            ));
        }
        if offer.port == 0 {
            return Err(ApiError::invalid("gang.port", "must be a TCP port (1–65535)"));
        }
    }
    state.touch_worker(&worker).await?;
    let wait = Duration::from_millis(body.wait_ms).min(state.config.max_lease_wait);
    let deadline = Instant::now() + wait;
    loop {
        // Register for wake-ups before looking, so a publish in between is not missed.
        let notified = state.dispatch.wake().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(lease) = next_lease(&state, &worker, &body).await? {
            return Ok(Json(lease).into_response());
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        // Wake-ups are hints: poll the database at least every half second regardless.
        let nap = (deadline - now).min(Duration::from_millis(500));
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(nap) => {}
        }
    }
}

/// `POST /v1/jobs/{id}/heartbeat`: extends the lease; answers whether to cancel.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/heartbeat",
    tag = "workers",
    summary = "Extend the lease; answers whether to cancel",
    params(
        ("id" = String, Path, description = "Job id")
    ),
    request_body = AttemptRef,
    security(("bearer" = [])),
    responses(
        (status = 200, body = HeartbeatAnswer),
        ErrorResponses
    )
)]
pub async fn job_heartbeat(
    State(state): State<AppState>,
    _caller: WorkerCaller,
    headers: HeaderMap,
    Path(job): Path<String>,
    JsonBody(body): JsonBody<AttemptRef>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    state.verify_holder(&headers, &job, body.attempt).await?;
    if let Some(member) = &body.worker {
        state.verify_worker(&headers, member).await?;
    }
    match state
        .store
        .heartbeat(&job, body.attempt, ttl_ms(&state), body.worker.as_deref())
        .await?
    {
        Some(cancel) => {
            match &body.worker {
                Some(w) => state.touch_worker(w).await?,
                None => state.store.touch_worker_of(&job).await?,
            }
            Ok(Json(HeartbeatAnswer {
                cancel,
                lease_ttl_ms: ttl_ms(&state),
            }))
        }
        None => {
            state.store.get_job(&job).await?; // 404 for an unknown job
            Err(StoreError::stale_attempt(&job, body.attempt).into())
        }
    }
}

async fn after_end(state: &AppState, job: &str, end: &JobEnd, outcome: &str) {
    state
        .telemetry
        .run_duration
        .with_label_values(&[&end.kind, outcome])
        .observe(end.run_ms as f64 / 1000.0);
    state.telemetry.job_ended(job);
    if !end.ready.is_empty() {
        state.dispatch.publish(&end.ready).await;
    }
    if end.state == JobState::Queued {
        // A retry: announce it (the backoff delay is enforced by the claim).
        state.dispatch.wake().notify_waiters();
    }
    if state.telemetry.has_experiment(&end.experiment_id)
        && matches!(state.store.experiment_finished(&end.experiment_id).await, Ok(true))
    {
        state.telemetry.experiment_ended(&end.experiment_id);
    }
}

/// `POST /v1/jobs/{id}/complete`.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/complete",
    tag = "workers",
    summary = "An attempt succeeded (fenced)",
    params(
        ("id" = String, Path, description = "Job id")
    ),
    request_body = CompleteRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Recorded"),
        ErrorResponses
    )
)]
pub async fn complete(
    State(state): State<AppState>,
    _caller: WorkerCaller,
    headers: HeaderMap,
    Path(job): Path<String>,
    JsonBody(body): JsonBody<CompleteRequest>,
) -> Result<StatusCode, ApiError> {
    state.verify_holder(&headers, &job, body.attempt).await?;
    let end = state.store.complete(&job, body.attempt, body.output.as_deref()).await?;
    tracing::info!(job = %job, attempt = body.attempt, "succeeded");
    after_end(&state, &job, &end, "succeeded").await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/jobs/{id}/fail`.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/fail",
    tag = "workers",
    summary = "An attempt failed, class infra or app (fenced)",
    params(
        ("id" = String, Path, description = "Job id")
    ),
    request_body = FailRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Recorded"),
        ErrorResponses
    )
)]
pub async fn fail(
    State(state): State<AppState>,
    _caller: WorkerCaller,
    headers: HeaderMap,
    Path(job): Path<String>,
    JsonBody(body): JsonBody<FailRequest>,
) -> Result<StatusCode, ApiError> {
    state.verify_holder(&headers, &job, body.attempt).await?;
    let backoff = state.config.retry_backoff.as_millis() as u64;
    let out = state
        .store
        .fail(&job, body.attempt, body.class, &body.message, backoff)
        .await?;
    tracing::warn!(job = %job, attempt = body.attempt, class = body.class.as_str(), retried = out.retried,
                   message = %body.message, "attempt failed");
    if out.retried {
        state.telemetry.retries.with_label_values(&[body.class.as_str()]).inc();
    }
    let outcome = match body.class {
        FailureClass::App => "failed-app",
        FailureClass::Infra => "failed-infra",
    };
    after_end(&state, &job, &out.end, outcome).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/jobs/{id}/metrics`: upserts by (job, name, step).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/metrics",
    tag = "workers",
    summary = "Report metric points (fenced)",
    params(
        ("id" = String, Path, description = "Job id")
    ),
    request_body = MetricsBatch,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Upserted by (job, name, step)"),
        ErrorResponses
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
    _caller: WorkerCaller,
    headers: HeaderMap,
    Path(job): Path<String>,
    JsonBody(body): JsonBody<MetricsBatch>,
) -> Result<StatusCode, ApiError> {
    state.verify_holder(&headers, &job, body.attempt).await?;
    state.store.record_metrics(&job, body.attempt, &body.metrics).await?;
    let experiment = job.split('.').next().unwrap_or_default();
    let trials = state.store.job_trials(&job).await.unwrap_or_default();
    state
        .telemetry
        .observe_job_metrics(experiment, &job, &trials, &body.metrics);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/jobs/{id}/checkpoints`: moves the fenced checkpoint pointer.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/checkpoints",
    tag = "workers",
    summary = "Commit a checkpoint pointer (fenced)",
    params(
        ("id" = String, Path, description = "Job id")
    ),
    request_body = CheckpointCommit,
    security(("bearer" = [])),
    responses(
        (status = 200, body = CheckpointCommitted),
        ErrorResponses
    )
)]
pub async fn checkpoint(
    State(state): State<AppState>,
    _caller: WorkerCaller,
    headers: HeaderMap,
    Path(job): Path<String>,
    JsonBody(body): JsonBody<CheckpointCommit>,
) -> Result<Response, ApiError> {
    state.verify_holder(&headers, &job, body.attempt).await?;
    if body.uri.is_empty() {
        return Err(ApiError::invalid("uri", "must not be empty"));
    }
    let moved = state
        .store
        .commit_checkpoint(&job, body.attempt, body.step, &body.uri)
        .await?;
    Ok(Json(CheckpointCommitted { committed: moved }).into_response())
}

/// `POST /v1/jobs/{id}/logs`.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/logs",
    tag = "workers",
    summary = "Append log lines (fenced)",
    params(
        ("id" = String, Path, description = "Job id")
    ),
    request_body = LogBatch,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Appended"),
        ErrorResponses
    )
)]
pub async fn logs(
    State(state): State<AppState>,
    _caller: WorkerCaller,
    headers: HeaderMap,
    Path(job): Path<String>,
    JsonBody(body): JsonBody<LogBatch>,
) -> Result<StatusCode, ApiError> {
    state.verify_holder(&headers, &job, body.attempt).await?;
    if body.lines.len() > 10_000 {
        return Err(ApiError::invalid("lines", "at most 10000 lines per batch"));
    }
    state.store.append_logs(&job, body.attempt, &body.lines).await?;
    Ok(StatusCode::NO_CONTENT)
}
