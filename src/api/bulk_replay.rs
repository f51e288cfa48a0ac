//! `POST /v1/delivery-logs/replay`: replays the records a filter selects, through the same
//! [`Replayer`](crate::ops::replay::Replayer) as the single-record endpoint and the CLI. 200
//! for a dry run (nothing changes), 202 when replays were queued.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use utoipa::ToSchema;

use super::openapi::ErrorBody;
use super::{ApiError, ApiJson, ApiState};
use crate::ops::replay::{Failed, Limit, Pace, Skipped, detached};
use crate::ops::select::{Filters, ReplayCursor};

/// Records replayed per request unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 1000;
/// Most records one request may replay.
pub const MAX_LIMIT: u32 = 10_000;

/// Which records to replay: at least one filter, or `all`. Only records not replayed yet are
/// selected, oldest first.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkReplayRequest {
    account_id: Option<String>,
    subscription_id: Option<String>,
    event: Option<String>,
    reason: Option<String>,
    /// RFC 3339, a date, `HH:MM` (today, UTC) or an age (`2h`); inclusive.
    since: Option<String>,
    /// Same forms as `since`; exclusive.
    until: Option<String>,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    /// Only changes the answer's status and that nothing is sent: see what would be replayed.
    #[serde(default)]
    dry_run: bool,
    /// Records looked at in this request, 1 to 10000 (default 1000).
    limit: Option<u32>,
    /// `next_cursor` of the previous answer: go on after the records it looked at, among the
    /// records the first request could see (opaque; pass it as it came).
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkReplayResponse {
    dry_run: bool,
    /// Records looked at in this request: replayed + skipped + failed (at most `limit`).
    matched: usize,
    /// Ids replayed (a dry run: that would be), oldest first.
    replayed: Vec<String>,
    skipped: Vec<Skipped>,
    failed: Vec<Failed>,
    /// More records matched than `limit` let through: send the request again with `cursor` set
    /// to `next_cursor` for the next ones (records skipped here would otherwise come back).
    more: bool,
    /// With `more`: where the next request goes on (opaque). It keeps the first request's time
    /// bound, so later pages do not replay the dead letters of this run's own replays.
    next_cursor: Option<String>,
}

#[utoipa::path(
    operation_id = "bulkReplayDeliveryLogs",
    post,
    path = "/delivery-logs/replay",
    tag = "delivery-logs",
    summary = "Replay the records a filter selects",
    description = "Replays each selected record once, from attempt 1 through the normal path, oldest first; records that cannot be replayed are listed under `skipped` with the reason; records whose replay failed (the broker did not take it, or the record no longer reads back from the store) under `failed`, and stay replayable.",
    request_body = BulkReplayRequest,
    responses(
        (status = 200, description = "Dry run: what would be replayed and skipped; nothing changed", body = BulkReplayResponse),
        (status = 202, description = "Replays queued", body = BulkReplayResponse),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "No filter (and not `all`), an unknown field, a bad time, limit or cursor, a `since` in the future", body = ErrorBody),
        (status = 503, description = "The broker took none of the replays; every record stays replayable", body = ErrorBody),
    ),
)]
pub async fn replay(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<BulkReplayRequest>,
) -> Result<(StatusCode, Json<BulkReplayResponse>), ApiError> {
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Unprocessable(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let filters = Filters {
        account_id: req.account_id,
        subscription_id: req.subscription_id,
        event: req.event,
        reason: req.reason,
        since: req.since,
        until: req.until,
        ids: req.ids,
        all: req.all,
    };
    let mut selection = filters.selection(chrono::Utc::now())?;
    let after = match req.cursor.as_deref() {
        Some(raw) => Some(ReplayCursor::decode(raw)?.resume(&mut selection)),
        None => None,
    };
    // Detached: a client or proxy hanging up must not cancel the run midway (a record whose
    // publish was confirmed but whose claim was not yet committed would be sent again by the
    // next run). The run finishes its page.
    let replayer = state.replayer();
    let dry_run = req.dry_run;
    let until = selection.bound().to_string();
    let report = detached(async move {
        let limit = Limit::Looked(limit as usize);
        replayer
            .run(
                &selection,
                after,
                limit,
                dry_run,
                &mut Pace::new(None),
                &mut |_| {},
            )
            .await
    })
    .await?;
    // Nothing queued because the broker took nothing: as for one record, a 503 to try again.
    if report.broker_failed && report.replayed.is_empty() {
        let why = report.last_error();
        return Err(ApiError::ReplaysRefused(why.to_string()));
    }
    let next_cursor = report
        .next_cursor
        .clone()
        .map(|after| ReplayCursor { after, until }.encode());
    let status = if req.dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let response = BulkReplayResponse {
        dry_run: req.dry_run,
        matched: report.matched(),
        replayed: report.replayed,
        skipped: report.skipped,
        failed: report.failed,
        more: report.more,
        next_cursor,
    };
    Ok((status, Json(response)))
}
