//! `/v1/replay-jobs`: a bulk replay of any size, run in the background by the replica that took
//! the request (see [`crate::ops::replay::jobs`]). 202 with the job at once; its progress by
//! `GET` on any replica; `POST …/cancel` stops it after the chunk under way.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openapi::ErrorBody;
use super::{ApiError, ApiJson, ApiState};
use crate::ops::replay::{RATES, jobs};
use crate::ops::select::Filters;
use crate::store::ReplayJob;

/// Jobs the list shows, newest first.
const LISTED: i64 = 50;

/// Which records to replay — at least one filter, or `all`; only records not replayed yet and
/// dead-lettered before the job started, oldest first — and how fast.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayJobRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// RFC 3339, a date, `HH:MM` (today, UTC) or an age (`2h`); inclusive.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    /// Same forms as `since`; exclusive.
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ids: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
    /// Replays a second, 1 to 1000000, so a recovering endpoint is not flooded; default: as
    /// fast as the broker takes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    rate: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayJobList {
    /// The newest 50 jobs, newest first.
    items: Vec<ReplayJob>,
}

#[utoipa::path(
    operation_id = "startReplayJob",
    post,
    path = "/replay-jobs",
    tag = "delivery-logs",
    summary = "Replay the records a filter selects, in the background",
    description = "Starts a job on this replica that replays each selected record once, from attempt 1 through the normal path, oldest first, in batches (optionally at `rate` a second); records that cannot be replayed are counted as skipped. Answers at once; follow it with `GET /v1/replay-jobs/{id}` (on any replica). For a small selection and the ids in the answer, use `POST /v1/delivery-logs/replay`.",
    request_body = ReplayJobRequest,
    responses(
        (status = 202, description = "The job, started; `Location` is its address", body = ReplayJob),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "No filter (and not `all`), an unknown field, a bad time or rate, a `since` in the future", body = ErrorBody),
    ),
)]
pub async fn start(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<ReplayJobRequest>,
) -> Result<(StatusCode, HeaderMap, Json<ReplayJob>), ApiError> {
    if let Some(rate) = req.rate
        && !RATES.contains(&rate)
    {
        return Err(ApiError::Unprocessable(format!(
            "rate must be between {} and {} replays a second, got {rate}",
            RATES.start(),
            RATES.end()
        )));
    }
    // The selection as given, shown with the job (the rate is a field of its own).
    let mut described = serde_json::to_value(&req).expect("a request serialises");
    if let Some(fields) = described.as_object_mut() {
        fields.remove("rate");
    }
    let rate = req.rate;
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
    let selection = filters.selection(chrono::Utc::now())?;
    let job = jobs::start(
        state.replayer(),
        selection,
        described,
        rate,
        state.jobs_stop.clone(),
    )
    .await?;
    let mut headers = HeaderMap::new();
    let location = format!("/v1/replay-jobs/{}", job.id);
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a job id is ASCII"),
    );
    Ok((StatusCode::ACCEPTED, headers, Json(job)))
}

#[utoipa::path(
    operation_id = "listReplayJobs",
    get,
    path = "/replay-jobs",
    tag = "delivery-logs",
    summary = "The newest replay jobs",
    responses((status = 200, description = "The newest 50 jobs, newest first", body = ReplayJobList)),
)]
pub async fn list(State(state): State<ApiState>) -> Result<Json<ReplayJobList>, ApiError> {
    let items = state.store.replay_jobs(LISTED).await?;
    Ok(Json(ReplayJobList { items }))
}

#[utoipa::path(
    operation_id = "getReplayJob",
    get,
    path = "/replay-jobs/{id}",
    tag = "delivery-logs",
    summary = "A replay job's state and progress",
    params(("id" = String, Path, description = "Replay job id")),
    responses(
        (status = 200, description = "The job", body = ReplayJob),
        (status = 404, description = "No such job", body = ErrorBody),
    ),
)]
pub async fn read(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ReplayJob>, ApiError> {
    state
        .store
        .replay_job(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no replay job {id}")))
}

#[utoipa::path(
    operation_id = "cancelReplayJob",
    post,
    path = "/replay-jobs/{id}/cancel",
    tag = "delivery-logs",
    summary = "Stop a replay job",
    description = "The job stops after the batch under way (within seconds) and ends `cancelled`; what it replayed stays replayed, the rest stays replayable.",
    params(("id" = String, Path, description = "Replay job id")),
    responses(
        (status = 202, description = "Asked to stop; the job as it reads now", body = ReplayJob),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has already ended", body = ErrorBody),
    ),
)]
pub async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ReplayJob>), ApiError> {
    let job = state
        .store
        .replay_job(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no replay job {id}")))?;
    if job.state != "running" {
        return Err(ApiError::Conflict {
            code: "job_ended",
            message: format!("replay job {id} has already ended ({})", job.state),
        });
    }
    let job = state
        .store
        .cancel_replay_job(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no replay job {id}")))?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}
