//! `GET /v1/prometheus/targets`: Prometheus HTTP service discovery of the workers' own metrics
//! endpoints (`spatiallock worker --metrics-listen … --metrics-address HOST:PORT`). Like
//! `/metrics`, it needs no token: it tells where metrics are, nothing about experiments.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use spatiallock_protocol::api::ErrorBody;

use super::AppState;
use crate::error::ApiError;

/// One target group of Prometheus HTTP service discovery
/// (`[{"targets": ["host:port"], "labels": {…}}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TargetGroup {
    /// One worker's metrics endpoint, `HOST:PORT` (scraped at `http://HOST:PORT/metrics`).
    pub targets: Vec<String>,
    /// Labels Prometheus adds to every series scraped from it: `worker` (the worker's name) and
    /// `devices` (its devices, comma-separated, e.g. `cuda:0,cuda:1`).
    pub labels: BTreeMap<String, String>,
}

/// `GET /v1/prometheus/targets`: one target group per live worker (heard from within the lease
/// TTL, as `spatiallock_workers_alive` counts them) that advertised a metrics address, ordered
/// by worker name. Point a Prometheus `http_sd_configs` entry at it.
///
/// Errors: 503 when the database is unreachable.
#[utoipa::path(
    get,
    path = "/v1/prometheus/targets",
    tag = "service",
    summary = "Prometheus HTTP service discovery of the workers' metrics endpoints",
    description = "One target group per live worker (heard from within the lease TTL) that registered \
                   with a `metrics_address`, labelled with the worker's name and devices: the format of \
                   Prometheus `http_sd_configs`. Needs no token.",
    responses(
        (
            status = 200,
            description = "Target groups, one per live worker with a metrics address",
            body = Vec<TargetGroup>,
            content_type = "application/json"
        ),
        (status = 503, description = "The database is unreachable", body = ErrorBody)
    )
)]
pub async fn targets(State(state): State<AppState>) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    let window_ms = i64::try_from(state.config.lease_ttl.as_millis()).unwrap_or(i64::MAX);
    let groups = state
        .store
        .live_metrics_targets(window_ms)
        .await?
        .into_iter()
        .map(|(name, devices, address)| TargetGroup {
            targets: vec![address],
            labels: BTreeMap::from([("devices".to_string(), devices.join(",")), ("worker".to_string(), name)]),
        })
        .collect();
    Ok(Json(groups))
}
