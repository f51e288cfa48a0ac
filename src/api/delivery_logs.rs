//! `/v1/delivery-logs`: the persisted dead letters, newest first, and replay.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::{ApiError, ApiState};
use crate::ops::select::Filters;
use crate::store::{DeliveryLog, LogFilter, Page, page_limit};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    account_id: Option<String>,
    subscription_id: Option<String>,
    event: Option<String>,
    reason: Option<String>,
    /// Same forms as the replay's `since`/`until`: RFC 3339, a date, `HH:MM`, an age.
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

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
        .list_delivery_logs(&filter, q.cursor.as_deref(), page_limit(q.limit))
        .await?;
    // Serialised straight from the records: going through `serde_json::Value` would reorder
    // payload keys and turn 299.00 into 299.0.
    Ok(Json(page))
}

pub async fn read(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryLog>, ApiError> {
    let log = state
        .store
        .delivery_log(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(log))
}

/// Sends the record's delivery again from attempt 1, through the normal path; once (see
/// [`Replayer`](crate::ops::replay::Replayer)).
pub async fn replay(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeliveryLog>), ApiError> {
    let log = state
        .store
        .delivery_log(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let at = state.replayer().replay(&log).await?;
    let log = DeliveryLog {
        replayed_at: Some(at),
        ..log
    };
    Ok((StatusCode::ACCEPTED, Json(log)))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no delivery-log record {id:?}"))
}
