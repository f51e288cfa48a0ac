//! The admin API (axum): subscriptions, test events, the delivery log and replay and the
//! event-type catalogue under `/v1` (bearer token when one is set), plus `/metrics`, `/healthz`,
//! `/readyz` and `/openapi.json`, which stay open.
//!
//! Every route is registered once, in `api()`, with `utoipa_axum::routes!`: the same call adds
//! the handler to the router and its `#[utoipa::path]` documentation to the OpenAPI document,
//! so both are built from one list (`tests/it/openapi.rs` checks them from both sides, and that
//! every `/v1` route refuses a request without the token).

mod bulk_replay;
mod delivery_logs;
mod error;
mod event_types;
mod health;
mod openapi;
mod subscriptions;
mod test_event;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Router, extract::DefaultBodyLimit};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// Every route with its documentation: the one place to add a route. A handler takes part
/// through `routes!(…)` with its `#[utoipa::path]` (paths under `/v1` are written without the
/// prefix). `admin_token` guards `/v1`.
fn api(admin_token: Option<Secret>) -> OpenApiRouter<ApiState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(subscriptions::create, subscriptions::list))
        .routes(routes!(
            subscriptions::read,
            subscriptions::update,
            subscriptions::delete
        ))
        .routes(routes!(subscriptions::rotate_secret))
        .routes(routes!(test_event::send))
        .routes(routes!(delivery_logs::list))
        .routes(routes!(bulk_replay::replay))
        .routes(routes!(delivery_logs::read))
        .routes(routes!(delivery_logs::replay))
        .routes(routes!(event_types::list))
        .routes(routes!(event_types::read))
        .route_layer(middleware::from_fn_with_state(admin_token, require_token));
    OpenApiRouter::with_openapi(openapi::base())
        .nest("/v1", v1)
        .routes(routes!(health::metrics))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::document))
}

/// The OpenAPI 3.1 document of [`router`]'s routes, as `/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::finish(api(None).into_openapi())
}

pub fn router(state: ApiState) -> Router {
    let (routes, _doc) = api(state.admin_token.clone()).split_for_parts();
    routes
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Checks `Authorization: Bearer <ADMIN_TOKEN>` in constant time when a token is set.
async fn require_token(
    State(admin_token): State<Option<Secret>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &admin_token {
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
