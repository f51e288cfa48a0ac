//! `/v1/delivery-logs`: the persisted dead letters, newest first, and replay.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::openapi::ErrorBody;
use super::{ApiError, ApiState};
use crate::ops::replay::detached;
use crate::ops::select::Filters;
use crate::store::{DeliveryLog, LogFilter, Page, page_limit};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    account_id: Option<String>,
    subscription_id: Option<String>,
    /// Event name, e.g. `purchase`.
    event: Option<String>,
    /// `exhausted`, `invalid_event`, …
    reason: Option<String>,
    /// Dead-lettered at or after: RFC 3339, a date, `HH:MM` (today, UTC) or an age (`2h`).
    since: Option<String>,
    /// Dead-lettered before (same forms as `since`).
    until: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

#[utoipa::path(
    operation_id = "listDeliveryLogs",
    get,
    path = "/delivery-logs",
    tag = "delivery-logs",
    summary = "List dead-lettered deliveries, newest first",
    description = "Records are kept for `DELIVERY_LOG_RETENTION` after they were dead-lettered (30 days unless the operator set otherwise; `0` keeps them all), replayed or not; older ones are deleted.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of delivery-log records", body = Page<DeliveryLog>),
        (status = 400, description = "A query parameter is malformed or unknown", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page<DeliveryLog>>, ApiError> {
    let Query(q) = query?;
    let filter = LogFilter {
        account_id: q.account_id,
        subscription_id: q.subscription_id,
        event: q.event,
        reason: q.reason,
        // A bad query value is a 400 here, like the query's other mistakes.
        ..Filters::times(q.since, q.until, chrono::Utc::now())
            .map_err(|e| ApiError::BadRequest(e.to_string()))?
    };
    let page = state
        .store
        .list_delivery_logs(
            &filter,
            q.cursor.as_deref(),
            page_limit(q.limit).map_err(ApiError::BadRequest)?,
        )
        .await?;
    // Serialised straight from the records: going through `serde_json::Value` would reorder
    // payload keys and turn 299.00 into 299.0.
    Ok(Json(page))
}

#[utoipa::path(
    operation_id = "getDeliveryLog",
    get,
    path = "/delivery-logs/{id}",
    tag = "delivery-logs",
    summary = "Read one delivery-log record with its attempts",
    params(("id" = String, Path, description = "Delivery-log record id")),
    responses(
        (status = 200, description = "The record", body = DeliveryLog),
        (status = 404, description = "No such record", body = ErrorBody),
    ),
)]
pub async fn read(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryLog>, ApiError> {
    Ok(Json(record(&state, &id).await?))
}

/// Sends the record's delivery again from attempt 1, through the normal path; once (see
/// [`Replayer`](crate::ops::replay::Replayer)).
#[utoipa::path(
    operation_id = "replayDeliveryLog",
    post,
    path = "/delivery-logs/{id}/replay",
    tag = "delivery-logs",
    summary = "Deliver a record again from attempt 1",
    description = "Publishes the delivery again through the normal path; a record is replayed once.",
    params(("id" = String, Path, description = "Delivery-log record id")),
    responses(
        (status = 202, description = "Queued; the record with its `replayed_at`", body = DeliveryLog),
        (status = 404, description = "No such record", body = ErrorBody),
        (status = 409, description = "`not_replayable` (rejected before matching), `untrusted` (its content was not verified as the service's own), `subscription_deleted`, `subscription_disabled` or `already_replayed`", body = ErrorBody),
        (status = 503, description = "The broker is not reachable; the record stays replayable", body = ErrorBody),
    ),
)]
pub async fn replay(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeliveryLog>), ApiError> {
    let log = record(&state, &id).await?;
    // Detached: a client hanging up must not cancel it after the broker took the delivery and
    // before the claim is committed (the next replay would send it again).
    let replayer = state.replayer();
    let (log, at) = detached(async move {
        let at = replayer.replay(&log).await;
        (log, at)
    })
    .await;
    let log = DeliveryLog {
        replayed_at: Some(at?),
        ..log
    };
    Ok((StatusCode::ACCEPTED, Json(log)))
}

/// The record `id`, or a 404 naming it.
async fn record(state: &ApiState, id: &str) -> Result<DeliveryLog, ApiError> {
    state
        .store
        .delivery_log(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no delivery-log record {id:?}")))
}
