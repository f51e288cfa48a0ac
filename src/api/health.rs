//! `/metrics`, `/healthz` and `/readyz`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::ApiState;
use super::openapi::{Health, Readiness};

#[utoipa::path(
    operation_id = "metrics",
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain; version=0.0.4")),
)]
pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[utoipa::path(
    operation_id = "healthz",
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process is up", body = Health)),
)]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the broker connection is up (with the consumers of this replica's roles) and the
/// store answers.
#[utoipa::path(
    operation_id = "readyz",
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: broker connected and store reachable",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Broker or store unavailable", body = Readiness),
    ),
)]
pub async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let broker = state.publisher.is_connected();
    let store = state.store.ping().await;
    let status = if broker && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        Json(json!({
            "status": word(broker && store),
            "broker": word(broker),
            "store": word(store),
            "roles": state.roles.names(),
        })),
    )
}
