//! HTTP errors: a status and a JSON body whose message names the field or value at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use spatiallock_protocol::api::ErrorBody;
use spatiallock_protocol::{SpecError, SpecErrors};

use crate::store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: message.into(),
                details: Vec::new(),
            },
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no or an unknown bearer token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the token's role may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: no such resource.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no {what} `{id}`"))
    }

    /// 409: the write is stale (the attempt is no longer current) or conflicts.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 413: the body or the grid is too large.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 422: the spec is invalid; every problem with its path.
    pub fn invalid_spec(errors: SpecErrors) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, errors.to_string());
        e.body.details = errors.0;
        e
    }

    /// 422 for one field.
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        Self::invalid_spec(SpecErrors(vec![SpecError::new(path, message)]))
    }

    /// 503: a dependency (database, Redis) is unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<StoreError> for ApiError {
    /// The one mapping of store errors to HTTP: the database being down or failing is 503 on
    /// every route; a missing row 404; a stale attempt or a conflict 409; a refused value 422;
    /// data this version cannot read or write 500.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(_) | StoreError::Migrate(_) => ApiError::unavailable(e.to_string()),
            StoreError::NotFound { what, id } => ApiError::not_found(what, &id),
            StoreError::StaleAttempt { .. } | StoreError::Conflict(_) => ApiError::conflict(e.to_string()),
            StoreError::Invalid { field, message } => ApiError::invalid(&field, message),
            StoreError::Corrupt { .. } | StoreError::Encode { .. } | StoreError::UnsupportedUrl(_) => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.body.error, "request failed");
        }
        (self.status, Json(self.body)).into_response()
    }
}
