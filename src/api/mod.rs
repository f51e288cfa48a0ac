//! The admin API (axum): subscriptions, the delivery log and replay under `/v1` (bearer token
//! when one is set), plus `/metrics`, `/healthz` and `/readyz`, which stay open.

mod bulk_replay;
mod delivery_logs;
mod error;
mod health;
mod subscriptions;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Router, extract::DefaultBodyLimit};

pub use error::ApiError;
pub use subscriptions::{parse_create_body, parse_patch_body};

use crate::broker::{Publisher, Topology};
use crate::config::Secret;
use crate::metrics::Metrics;
use crate::ops::replay::Replayer;
use crate::store::Store;
use crate::subscriptions::SubscriptionIndex;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub index: Arc<SubscriptionIndex>,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub metrics: Metrics,
    pub admin_token: Option<Secret>,
    /// Off: endpoint URLs are checked by the SSRF guard on create and update.
    pub allow_private_targets: bool,
    pub secret_rotation_overlap: std::time::Duration,
}

impl ApiState {
    /// Replays through this service's store and publisher.
    pub fn replayer(&self) -> Replayer {
        Replayer {
            store: self.store.clone(),
            publisher: self.publisher.clone(),
            events_queue: self.topology.events.clone(),
        }
    }
}

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route(
            "/subscriptions",
            post(subscriptions::create).get(subscriptions::list),
        )
        .route(
            "/subscriptions/{id}",
            get(subscriptions::read)
                .patch(subscriptions::update)
                .delete(subscriptions::delete),
        )
        .route(
            "/subscriptions/{id}/rotate-secret",
            post(subscriptions::rotate_secret),
        )
        .route("/delivery-logs", get(delivery_logs::list))
        .route("/delivery-logs/replay", post(bulk_replay::replay))
        .route("/delivery-logs/{id}", get(delivery_logs::read))
        .route("/delivery-logs/{id}/replay", post(delivery_logs::replay))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest("/v1", v1)
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Checks `Authorization: Bearer <ADMIN_TOKEN>` in constant time when a token is set.
async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.admin_token {
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

/// Compares without an early exit on the first differing byte (length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `axum::Json` with our error format for bad bodies.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
