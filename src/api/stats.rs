//! `GET /v1/subscriptions/{id}/stats`: how one endpoint is doing, summed over every replica
//! (each writes its counts every few seconds, so the figures may lag by that much).

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::ErrorBody;
use super::subscriptions::not_found;
use super::{ApiError, ApiState};
use crate::store::health::{EndpointFigures, LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

#[derive(Serialize, ToSchema)]
pub struct Window {
    /// Delivery attempts made.
    attempts: i64,
    /// Attempts the endpoint answered with 2xx.
    successes: i64,
}

/// Attempt durations over the last hour: the upper bound (ms) of the histogram bucket each
/// percentile falls in (buckets end at 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000 and
/// 10000 ms; past that, `DELIVERY_TIMEOUT`). Null without attempts in the last hour.
#[derive(Serialize, ToSchema)]
pub struct Latency {
    p50: Option<u64>,
    p95: Option<u64>,
    p99: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct SubscriptionStats {
    last_hour: Window,
    last_day: Window,
    latency_ms: Latency,
    /// The HTTP status of the latest attempt; null if it got none (timeout, connection error)
    /// or there was none.
    last_status: Option<u16>,
    /// What went wrong in the latest attempt; null if it succeeded or there was none.
    last_error: Option<String>,
    #[schema(format = DateTime)]
    last_success_at: Option<String>,
}

impl SubscriptionStats {
    pub fn from_figures(figures: &EndpointFigures, timeout_ms: u64) -> SubscriptionStats {
        let percentile = |p: f64| percentile(&figures.latency, p, timeout_ms);
        SubscriptionStats {
            last_hour: Window {
                attempts: figures.last_hour.0,
                successes: figures.last_hour.1,
            },
            last_day: Window {
                attempts: figures.last_day.0,
                successes: figures.last_day.1,
            },
            latency_ms: Latency {
                p50: percentile(0.50),
                p95: percentile(0.95),
                p99: percentile(0.99),
            },
            last_status: figures.last_status,
            last_error: figures.last_error.clone(),
            last_success_at: figures.last_success_at.clone(),
        }
    }
}

/// The upper bound (ms) of the bucket holding the `p` quantile of `buckets`.
pub fn percentile(buckets: &[i64; LATENCY_BUCKETS], p: f64, timeout_ms: u64) -> Option<u64> {
    let total: i64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * p).ceil().max(1.0) as i64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(timeout_ms));
        }
    }
    Some(timeout_ms)
}

#[utoipa::path(
    operation_id = "getSubscriptionStats",
    get,
    path = "/subscriptions/{id}/stats",
    tag = "subscriptions",
    summary = "How an endpoint is doing",
    description = "Attempts and successes over the last hour and day, attempt durations over the last hour, and the latest attempt's status or error and the latest success, summed over every replica (figures may lag by a few seconds).",
    params(("id" = String, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "The figures", body = SubscriptionStats),
        (status = 404, description = "No such subscription", body = ErrorBody),
    ),
)]
pub async fn read(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionStats>, ApiError> {
    if state.store.subscription(&id).await?.is_none() {
        return Err(not_found(&id));
    }
    let figures = state
        .store
        .endpoint_figures(&id, chrono::Utc::now())
        .await?;
    Ok(Json(SubscriptionStats::from_figures(
        &figures,
        state.delivery_timeout.as_millis() as u64,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_the_bounds_of_the_buckets_they_fall_in() {
        let mut buckets = [0i64; LATENCY_BUCKETS];
        assert_eq!(percentile(&buckets, 0.5, 10_000), None);
        buckets[0] = 90; // ≤ 5 ms
        buckets[4] = 9; // ≤ 100 ms
        buckets[11] = 1; // past 10 s
        assert_eq!(percentile(&buckets, 0.50, 10_000), Some(5));
        assert_eq!(percentile(&buckets, 0.95, 10_000), Some(100));
        assert_eq!(percentile(&buckets, 0.99, 10_000), Some(100));
        assert_eq!(percentile(&buckets, 1.0, 12_000), Some(12_000));
    }
}
