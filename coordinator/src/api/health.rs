//! Liveness, readiness and the Prometheus scrape endpoint.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    summary = "Liveness",
    responses(
        (status = 200, description = "The process serves requests")
    )
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database and Redis answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    summary = "Readiness",
    responses(
        (status = 200, description = "Database and Redis answer"), (status = 503, description = "A dependency is unreachable")
    )
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = state.store.ping().await;
    let redis = state.dispatch.ping().await;
    let status = if database && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "database": if database { "ok" } else { "unreachable" },
        "redis": if !state.dispatch.uses_redis() { "not used" } else if redis { "ok" } else { "unreachable" },
    });
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text format; job counts are read from the database here, so
/// every replica reports the same totals.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain")
    )
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let t = &state.telemetry;
    if let Ok(counts) = state.store.job_counts().await {
        t.jobs.reset();
        for (st, kind, n) in counts {
            t.jobs.with_label_values(&[&st, &kind]).set(n);
        }
    }
    if let Ok(n) = state
        .store
        .workers_alive(state.config.lease_ttl.as_millis() as i64)
        .await
    {
        t.workers_alive.set(n);
    }
    if let Ok((forming, reserved)) = state.store.gang_summary().await {
        t.gangs_forming.set(forming);
        t.gang_ranks_reserved.set(reserved);
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], t.render())
}
