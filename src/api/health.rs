//! `/metrics`, `/healthz` and `/readyz`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::ApiState;

pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the broker connection is up and the store answers.
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
        Json(
            json!({ "status": word(broker && store), "broker": word(broker), "store": word(store) }),
        ),
    )
}
