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
mod portal_links;
mod replay_jobs;
mod serve;
pub(crate) mod stats;
pub(crate) mod subscription_bodies;
pub(crate) mod subscriptions;
pub(crate) mod test_event;

use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Router, extract::DefaultBodyLimit};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use serve::{BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, serve};
pub use subscription_bodies::{parse_create_body, parse_patch_body};

use crate::activity::Activity;
use crate::broker::{Publisher, Topology};
use crate::changes::Announcer;
use crate::config::{Roles, Secret};
use crate::metrics::Metrics;
use crate::operator::Notifier;
use crate::ops::replay::Replayer;
use crate::portal::Portal;
use crate::seal::Keyring;
use crate::store::Store;
use crate::subscriptions::Directory;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub directory: Arc<Directory>,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub metrics: Metrics,
    pub keys: Arc<Keyring>,
    /// What this instance's deliveries came to (the portal's last delivery and test outcomes).
    pub activity: Arc<Activity>,
    /// The customer portal's key and address.
    pub portal: Arc<Portal>,
    /// Tells the other replicas about subscription changes.
    pub announcer: Announcer,
    /// Tells the operator's webhook (when one is set) about endpoints.
    pub notifier: Option<Notifier>,
    /// What this replica runs (readiness says it).
    pub roles: Roles,
    pub admin_token: Option<Secret>,
    /// Off: endpoint URLs are checked by the SSRF guard on create and update.
    pub allow_private_targets: bool,
    pub secret_rotation_overlap: std::time::Duration,
    /// `MAX_SUBSCRIPTIONS_PER_ACCOUNT`.
    pub max_subscriptions_per_account: u32,
    /// `DELIVERY_TIMEOUT`: the longest an attempt takes (the stats' last latency bucket).
    pub delivery_timeout: std::time::Duration,
    /// Ends the replay jobs this replica runs (at shutdown: they end `interrupted`).
    pub jobs_stop: tokio_util::sync::CancellationToken,
}

impl ApiState {
    /// Replays through this service's store and publisher.
    pub fn replayer(&self) -> Replayer {
        Replayer {
            store: self.store.clone(),
            publisher: self.publisher.clone(),
            events_queue: self.topology.events.clone(),
            keys: self.keys.clone(),
            bundles: self.topology.bundles,
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
        .routes(routes!(stats::read))
        .routes(routes!(test_event::send))
        .routes(routes!(delivery_logs::list))
        .routes(routes!(bulk_replay::replay))
        .routes(routes!(replay_jobs::start, replay_jobs::list))
        .routes(routes!(replay_jobs::read))
        .routes(routes!(replay_jobs::cancel))
        .routes(routes!(delivery_logs::read))
        .routes(routes!(delivery_logs::replay))
        .routes(routes!(event_types::list))
        .routes(routes!(event_types::read))
        .routes(routes!(portal_links::create))
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

/// What LISTEN_ADDR serves: with the `api` role, the admin API, the portal and the operations
/// routes; without it, only `/metrics`, `/healthz` and `/readyz` (every replica is watched).
pub fn router(state: ApiState) -> Router {
    if !state.roles.api {
        return Router::new()
            .route("/metrics", axum::routing::get(health::metrics))
            .route("/healthz", axum::routing::get(health::healthz))
            .route("/readyz", axum::routing::get(health::readyz))
            .fallback(|| async {
                ApiError::NotFound(
                    "no such route: this replica does not run the api role (ROLES)".into(),
                )
            })
            .with_state(state);
    }
    let (routes, _doc) = api(state.admin_token.clone()).split_for_parts();
    routes
        .merge(crate::portal::routes())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(serve::body_deadline))
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
            .and_then(bearer_token)
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

/// The token of an `Authorization` value in the Bearer scheme. The scheme name is
/// case-insensitive (RFC 9110, section 11.1): `bearer` and `BEARER` are Bearer too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches(' '))
}

/// Compares without an early exit on the first differing byte (length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON object body, read with our error format: 400 for a missing JSON content type or bad
/// JSON syntax, 422 for well-formed JSON of the wrong shape (naming the field at fault).
/// Unlike serde's default, a struct is never read from a JSON array.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::BadRequest(
                "send the body as JSON with content-type: application/json".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await?;
        Ok(ApiJson(read_json_object(&bytes)?))
    }
}

/// `application/json`, or a `+json` type.
fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads a JSON object into `T` (see [`ApiJson`]).
pub(crate) fn read_json_object<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, ApiError> {
    let classify = |e: &serde_json::Error, text: String| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(text),
        _ => ApiError::BadRequest(text),
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::Unprocessable("the body must be a JSON object".into()),
                Err(e) => classify(&e, e.to_string()),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| classify(e.inner(), e.to_string()))?;
    de.end().map_err(|e| classify(&e, e.to_string()))?;
    Ok(value)
}

/// An optional JSON object body, read like [`ApiJson`]: empty (or only white space) or `null`
/// reads as `T::default()`. No content type is needed for an empty body.
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    T: serde::de::DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await?;
        Ok(OptionalJson(optional_json_object(&bytes)?))
    }
}

fn optional_json_object<T: serde::de::DeserializeOwned + Default>(
    bytes: &[u8],
) -> Result<T, ApiError> {
    if bytes.trim_ascii().is_empty() || bytes.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    read_json_object(bytes)
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, constant_time_eq};

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        for value in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER t0k",
            "Bearer  t0k ",
            " bEaReR t0k",
        ] {
            assert_eq!(bearer_token(value), Some("t0k"), "{value:?}");
        }
        assert_eq!(bearer_token("Bearer T0K"), Some("T0K"));
        for value in ["Basic t0k", "Bearert0k", "t0k", "Bearer"] {
            assert_ne!(bearer_token(value), Some("t0k"), "{value:?}");
        }
    }

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
