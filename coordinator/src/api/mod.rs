//! The HTTP API: routes, shared state, authentication, JSON bodies, request metrics, and the
//! cross-site request forgery guard of a coordinator without tokens ([`csrf`]).

mod csrf;
mod discovery;
mod experiments;
mod health;
mod openapi;
mod reads;
mod ui;
mod workers;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use spatiallock_protocol::api::ErrorBody;
use spatiallock_protocol::canonical::normalize_numbers;
use spatiallock_protocol::storable::check_storable;
use subtle::ConstantTimeEq;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{Config, Role};
use crate::dispatch::Dispatch;
use crate::error::ApiError;
use crate::store::{Store, StoreError};
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
    /// Grid specs parsed at once on the blocking pool (the rest wait their turn).
    pub parse_slots: Arc<tokio::sync::Semaphore>,
    /// Encoded pages of `GET /v1/experiments` by generation and query, for
    /// `Config::list_cache_ttl`.
    pub list_cache: moka::future::Cache<String, Bytes>,
    /// Bumped by this replica's writes that change the list.
    pub list_generation: Arc<std::sync::atomic::AtomicU64>,
    /// Worker keys' digests already read from the database, by worker id (keys never change).
    pub worker_keys: Arc<std::sync::Mutex<std::collections::HashMap<String, [u8; 32]>>>,
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
    /// Called after a write that changes the experiment list: later reads miss the cache.
    pub fn list_changed(&self) {
        self.list_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.list_cache.invalidate_all();
    }

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
    ///
    /// The scheme is matched case-insensitively (RFC 9110 §11.1); the secret is compared in
    /// constant time against every configured token (no early exit), through their SHA-256
    /// digests so that lengths leak nothing either.
    fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
        if self.config.tokens.is_empty() {
            return Ok(());
        }
        let header = headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing `Authorization: Bearer <token>` header (the CLI's --token)")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let role = self
            .config
            .token_role(token)
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
                "this endpoint needs {need}; the token has role {}",
                role.as_str()
            )));
        }
        Ok(())
    }

    /// The SHA-256 of the `Spatiallock-Worker-Key` header; `None` when no tokens are
    /// configured (the API is open, so identity is not checked). 401 without the header.
    fn presented_worker_key(&self, headers: &HeaderMap) -> Result<Option<[u8; 32]>, ApiError> {
        if self.config.tokens.is_empty() {
            return Ok(None);
        }
        let key = headers
            .get(WORKER_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(format!(
                    "worker calls need the `{WORKER_KEY_HEADER}` header with the key that registration returned"
                ))
            })?;
        Ok(Some(Sha256::digest(key.trim().as_bytes()).into()))
    }

    /// Whether `presented` is worker `worker`'s key (constant-time), its digest read once per
    /// replica and then cached (keys never change). 404 for an unknown worker.
    async fn is_key_of(&self, presented: &[u8; 32], worker: &str) -> Result<bool, ApiError> {
        let cached = {
            let keys = self.worker_keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.get(worker).copied()
        };
        let expected = match cached {
            Some(d) => d,
            None => {
                let Some(digest) = self.store.worker_key_digest(worker).await? else {
                    return Err(ApiError::unauthorized(format!(
                        "worker `{worker}` registered before worker keys existed: restart it so that it registers again"
                    )));
                };
                let mut keys = self.worker_keys.lock().unwrap_or_else(|p| p.into_inner());
                if keys.len() > 100_000 {
                    keys.clear(); // bounded: forgetting costs one read per worker
                }
                keys.insert(worker.to_string(), digest);
                digest
            }
        };
        Ok(bool::from(presented.ct_eq(&expected)))
    }

    /// With tokens configured, checks that the caller is worker `worker` (its registration
    /// key in the `Spatiallock-Worker-Key` header): 401 without the header, 403 with another
    /// key, 404 for an unknown worker. Without tokens the API is open and this passes.
    pub async fn verify_worker(&self, headers: &HeaderMap, worker: &str) -> Result<(), ApiError> {
        let Some(presented) = self.presented_worker_key(headers)? else {
            return Ok(());
        };
        if self.is_key_of(&presented, worker).await? {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the `{WORKER_KEY_HEADER}` header does not hold worker `{worker}`'s key"
            )))
        }
    }

    /// With tokens configured, checks that a write about `attempt` of `job` comes from the
    /// worker that leased that attempt or a member of its gang: an attempt is bound to its
    /// workers, whatever worker token the caller holds. An attempt that is no longer current,
    /// or no longer held by anyone, passes here and is refused by the store's fencing (409); an
    /// attempt that does not exist yet is refused here (409), so that no write can be waiting
    /// for the next lease when it is granted. 401/403 as [`AppState::verify_worker`].
    pub async fn verify_holder(&self, headers: &HeaderMap, job: &str, attempt: u64) -> Result<(), ApiError> {
        let Some(presented) = self.presented_worker_key(headers)? else {
            return Ok(());
        };
        let (current, leased_by, members) = self.store.attempt_holders(job).await?;
        if attempt > current {
            return Err(StoreError::stale_attempt(job, attempt).into());
        }
        if attempt < current || leased_by.is_none() {
            return Ok(());
        }
        for worker in leased_by.iter().chain(members.iter()) {
            if self.is_key_of(&presented, worker).await? {
                return Ok(());
            }
        }
        Err(ApiError::forbidden(format!(
            "attempt {attempt} of job `{job}` was leased by worker `{}`; the `{WORKER_KEY_HEADER}` \
             header holds neither its key nor a gang member's",
            leased_by.as_deref().unwrap_or_default()
        )))
    }
}

/// The header in which a worker proves which worker it is (the key returned by registration).
pub const WORKER_KEY_HEADER: &str = "spatiallock-worker-key";

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
        let mut value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
        // JSON has one number type: `3.0` is the integer 3 (as JSON Schema reads it).
        normalize_numbers(&mut value);
        // Refused here, naming the field, rather than by the database as a 5xx.
        check_storable(&value, "").map_err(ApiError::invalid_spec)?;
        serde_path_to_error::deserialize(value).map(JsonBody).map_err(|e| {
            let path = e.path().to_string();
            ApiError::invalid(if path == "." { "" } else { &path }, e.inner().to_string())
        })
    }
}

/// Query parameters whose errors are JSON, naming the parameter at fault (axum's own `Query`
/// answers in plain text).
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(QueryParams).map_err(|e| {
            let path = e.path().to_string();
            let name = if path == "." { String::new() } else { path };
            ApiError::bad_request(if name.is_empty() {
                format!("invalid query string: {}", e.inner())
            } else {
                format!("invalid query parameter `{name}`: {}", e.inner())
            })
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

/// Refuses a path or query string holding a NUL character (only possible percent-encoded):
/// no stored value may hold one, and the database would answer a 5xx.
async fn refuse_nul_in_uri(req: Request, next: Next) -> Response {
    let uri = req.uri().to_string();
    if uri.to_ascii_lowercase().contains("%00") {
        return ApiError::bad_request(format!(
            "the request path or query contains a NUL character (%00), which no value may hold: {}",
            req.uri().path()
        ))
        .into_response();
    }
    next.run(req).await
}

/// Turns every error answer that is not JSON yet (axum's own rejections of paths, query
/// strings, methods, content types) into the API's JSON error body, keeping the status and
/// headers such as `Allow`.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let error = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let body = ErrorBody {
        error,
        details: Vec::new(),
    };
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    let mut out = (status, Json(body)).into_response();
    for (name, value) in parts.headers.iter() {
        out.headers_mut().entry(name).or_insert_with(|| value.clone());
    }
    out
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
            body: ErrorBody {
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
        .routes(routes!(discovery::targets))
        .routes(routes!(openapi::document))
        .routes(routes!(openapi::grid_schema))
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
        // The web UI's page and files (no token) and a job's images: plain routes, not in the doc.
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(Arc::new(openapi::with_storable_limits(&doc))))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(refuse_nul_in_uri))
        .layer(middleware::from_fn_with_state(
            csrf::CsrfGuard {
                open_api: state.config.tokens.is_empty(),
                loopback: state.config.listen.ip().is_loopback(),
            },
            csrf::same_origin_writes,
        ))
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
