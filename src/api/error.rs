//! API errors: one enum, mapped to a status and `{"error":{"code","message"}}` in one place.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::broker::BrokerError;
use crate::ops::OpsError;
use crate::ops::replay::ReplayError;
use crate::store::StoreError;
use crate::subscriptions::LookupError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is over the {0}-byte limit")]
    TooLarge(usize),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the broker is not reachable right now: {0}")]
    Broker(#[from] BrokerError),
    /// A bulk replay the broker took none of (the records stay replayable).
    #[error("the broker did not take the replays, so none was replayed: {0}")]
    ReplaysRefused(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the store failed: {0}")]
    Lookup(#[from] LookupError),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Broker(_) | ApiError::ReplaysRefused(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable")
            }
            ApiError::Store(_) | ApiError::Lookup(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "store_error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "admin API request failed");
        }
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", "Bearer".parse().expect("static header"));
        }
        response
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(super::MAX_BODY_BYTES)
        } else if let Some(timeout) = cause::<super::serve::BodyTimeout>(&rejection) {
            ApiError::RequestTimeout(timeout.to_string())
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

/// The first error of type `E` in `error`'s chain of sources.
fn cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<ReplayError> for ApiError {
    fn from(error: ReplayError) -> Self {
        match error {
            ReplayError::Skipped(skip) => ApiError::Conflict {
                code: skip.code(),
                message: skip.to_string(),
            },
            ReplayError::Gone => ApiError::NotFound(error.to_string()),
            ReplayError::Store(e) => ApiError::Store(e),
            ReplayError::Broker(e) => ApiError::Broker(e),
            ReplayError::NotMarked(e) => {
                tracing::error!(error = %e, "replay sent but not marked replayed");
                ApiError::Store(e)
            }
        }
    }
}

impl From<OpsError> for ApiError {
    fn from(error: OpsError) -> Self {
        match error {
            OpsError::BadInput(message) => ApiError::Unprocessable(message),
            OpsError::Broker(e) => ApiError::Broker(e),
            OpsError::Store(e) | OpsError::StoreUnreachable { error: e, .. } => ApiError::Store(e),
            other @ (OpsError::BrokerUnreachable { .. } | OpsError::Failed(_)) => {
                ApiError::Broker(BrokerError::Pool(other.to_string()))
            }
        }
    }
}
