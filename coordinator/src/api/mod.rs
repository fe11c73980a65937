//! The HTTP API: routes, shared state, authentication, JSON bodies, request metrics.

mod experiments;
mod health;
mod openapi;
mod reads;
mod workers;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Extension, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{Config, Role};
use crate::dispatch::Dispatch;
use crate::error::ApiError;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Ready-job hints and wake-ups.
    pub dispatch: Dispatch,
    /// Prometheus metrics.
    pub telemetry: Arc<Telemetry>,
    /// Settings.
    pub config: Arc<Config>,
    /// When this replica last recorded each worker as alive.
    pub seen_workers: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>,
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Users and admins: submit, read, cancel.
    User,
    /// Workers and admins: lease and report.
    Worker,
}

impl AppState {
    /// Records that a worker is alive (404 for an unknown worker), writing to the database at
    /// most once a second per worker and replica: leases arrive much faster than that.
    pub async fn touch_worker(&self, worker: &str) -> Result<(), ApiError> {
        let recent = {
            let seen = self.seen_workers.lock().unwrap_or_else(|p| p.into_inner());
            seen.get(worker)
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        };
        if !recent {
            self.store.touch_worker(worker).await?;
            let mut seen = self.seen_workers.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() > 100_000 {
                seen.clear(); // bounded: forgetting only costs one write per worker
            }
            seen.insert(worker.to_string(), Instant::now());
        }
        Ok(())
    }

    /// Checks the bearer token against `access`: 401 without a known token, 403 for a role
    /// that may not do this. With no tokens configured, everyone may do everything.
    fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
        if self.config.tokens.is_empty() {
            return Ok(());
        }
        let header = headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>` header"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let role = self
            .config
            .tokens
            .iter()
            .find(|t| t.secret == token.trim())
            .map(|t| t.role)
            .ok_or_else(|| ApiError::unauthorized("unknown token"))?;
        let allowed = match access {
            Access::User => matches!(role, Role::Admin | Role::User),
            Access::Worker => matches!(role, Role::Admin | Role::Worker),
        };
        if !allowed {
            let need = match access {
                Access::User => "a user or admin token",
                Access::Worker => "a worker or admin token",
            };
            return Err(ApiError::forbidden(format!(
                "this endpoint needs {need}; the token has role {role:?}"
            )));
        }
        Ok(())
    }
}

/// A handler parameter that admits callers with a user or admin token (401/403 otherwise, as
/// JSON); put it before the body so that an unauthorised request is refused before it is read.
#[derive(Debug, Clone, Copy)]
pub struct UserCaller;

/// A handler parameter that admits callers with a worker or admin token.
#[derive(Debug, Clone, Copy)]
pub struct WorkerCaller;

impl FromRequestParts<AppState> for UserCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        state.authorize(&parts.headers, Access::User).map(|()| UserCaller)
    }
}

impl FromRequestParts<AppState> for WorkerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        state.authorize(&parts.headers, Access::Worker).map(|()| WorkerCaller)
    }
}

/// A JSON request body whose errors are JSON too, naming the field at fault.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de).map(JsonBody).map_err(|e| {
            let path = e.path().to_string();
            ApiError::invalid(if path == "." { "" } else { &path }, e.inner().to_string())
        })
    }
}

/// The raw body, with the size limit answered as JSON 413.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("request body too large: {e}"))
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })
}

async fn record_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let t = &state.telemetry;
    t.http_requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .inc();
    t.http_duration
        .with_label_values(&[&method, &route])
        .observe(start.elapsed().as_secs_f64());
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found("route", req.uri().path())
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new_method_not_allowed(req.method().as_str(), req.uri().path())
}

impl ApiError {
    fn new_method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError {
            status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
            body: spatiallock_protocol::api::ErrorBody {
                error: format!("method {method} is not allowed on {path}"),
                details: Vec::new(),
            },
        }
    }
}

/// The whole API, and its OpenAPI document built from the same registrations.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let (router, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::document))
        .routes(routes!(experiments::submit, experiments::list))
        .routes(routes!(experiments::get_one))
        .routes(routes!(experiments::cancel))
        .routes(routes!(experiments::retry_failed))
        .routes(routes!(experiments::priority))
        .routes(routes!(reads::trials))
        .routes(routes!(experiments::report))
        .routes(routes!(reads::trial))
        .routes(routes!(reads::trial_metrics))
        .routes(routes!(reads::trial_logs))
        .routes(routes!(reads::jobs))
        .routes(routes!(reads::job))
        .routes(routes!(reads::job_logs, workers::logs))
        .routes(routes!(workers::job_heartbeat))
        .routes(routes!(workers::complete))
        .routes(routes!(workers::fail))
        .routes(routes!(reads::job_metrics, workers::metrics))
        .routes(routes!(workers::checkpoint))
        .routes(routes!(workers::register))
        .routes(routes!(workers::worker_heartbeat))
        .routes(routes!(workers::lease))
        .split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(Arc::new(doc)))
        .layer(middleware::from_fn_with_state(state.clone(), record_http))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `page_token` (an offset) and `page_size` (1–1000, default 100).
pub fn paging(token: Option<&str>, size: Option<i64>) -> Result<(i64, i64), ApiError> {
    let offset = match token {
        None | Some("") => 0,
        Some(t) => t
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| ApiError::bad_request(format!("invalid page_token `{t}`")))?,
    };
    let size = size.unwrap_or(100);
    if !(1..=1000).contains(&size) {
        return Err(ApiError::bad_request(format!("page_size must be 1–1000, got {size}")));
    }
    Ok((offset, size))
}
