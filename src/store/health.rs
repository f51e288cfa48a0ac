//! Endpoint health in the store, shared by every replica: attempts per subscription and minute
//! (each replica adds its counts every few seconds), the latest attempt and success, and what the
//! automatic-disable rule reads.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::{Store, StoreError};
use crate::time::rfc3339;

/// Upper bounds (ms) of the latency buckets `lat_0 ..` count; the last bucket is everything
/// longer.
pub const LATENCY_BOUNDS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
/// Latency buckets: one per bound, and one for longer.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// One replica's counts for one subscription and minute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    pub attempts: i64,
    pub successes: i64,
    pub latency: [i64; LATENCY_BUCKETS],
}

impl MinuteCounts {
    pub fn add(&mut self, other: &MinuteCounts) {
        self.attempts += other.attempts;
        self.successes += other.successes;
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a += b;
        }
    }
}

/// The bucket of an attempt that took `ms`.
pub fn latency_bucket(ms: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&bound| ms <= bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The minute an attempt falls in, as stored: `2026-12-01T10:42Z`.
pub fn minute_of(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%MZ").to_string()
}

/// What one replica saw of one subscription since its last write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateChange {
    /// Its latest attempt: when, the status (if it answered), the error (if it failed).
    pub last_attempt: Option<(String, Option<u16>, Option<String>)>,
    /// Its latest successful attempt.
    pub last_success_at: Option<String>,
    /// Deliveries that failed every attempt after the latest success seen here (all of them if
    /// there was none).
    pub exhausted: i64,
    /// The first failed attempt after the latest success seen here.
    pub failing_since: Option<String>,
}

/// A subscription's figures, summed over every replica (`GET /v1/subscriptions/{id}/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointFigures {
    pub last_hour: (i64, i64),
    pub last_day: (i64, i64),
    /// Attempts of the last hour by latency bucket.
    pub latency: [i64; LATENCY_BUCKETS],
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_success_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub exhausted: i64,
    pub failing_since: Option<String>,
}

/// Adds one replica's minute counts to the stored ones (built once: the columns are fixed).
static UPSERT_MINUTE: LazyLock<String> = LazyLock::new(|| {
    let columns = (0..LATENCY_BUCKETS)
        .map(|i| format!("lat_{i}"))
        .collect::<Vec<_>>();
    let placeholders = (0..LATENCY_BUCKETS)
        .map(|i| format!("${}", i + 5))
        .collect::<Vec<_>>();
    let sums = columns
        .iter()
        .map(|c| format!("{c} = endpoint_minutes.{c} + excluded.{c}"))
        .collect::<Vec<_>>();
    format!(
        "INSERT INTO endpoint_minutes (subscription_id, minute, attempts, successes, {}) \
         VALUES ($1, $2, $3, $4, {}) \
         ON CONFLICT (subscription_id, minute) DO UPDATE SET \
         attempts = endpoint_minutes.attempts + excluded.attempts, \
         successes = endpoint_minutes.successes + excluded.successes, {}",
        columns.join(", "),
        placeholders.join(", "),
        sums.join(", ")
    )
});

/// One subscription's minute counts summed over the last day (`minute > $3`), and over the last
/// hour (`minute > $2`) with the latency buckets: one pass over its rows.
static SUM_MINUTES: LazyLock<String> = LazyLock::new(|| {
    let hour = |column: &str| {
        format!("CAST(COALESCE(SUM(CASE WHEN minute > $2 THEN {column} ELSE 0 END), 0) AS BIGINT)")
    };
    let latency = (0..LATENCY_BUCKETS)
        .map(|i| format!("{} AS lat_{i}", hour(&format!("lat_{i}"))))
        .collect::<Vec<_>>();
    format!(
        "SELECT {} AS hour_attempts, {} AS hour_successes, \
         CAST(COALESCE(SUM(attempts), 0) AS BIGINT) AS day_attempts, \
         CAST(COALESCE(SUM(successes), 0) AS BIGINT) AS day_successes, {} \
         FROM endpoint_minutes WHERE subscription_id = $1 AND minute > $3",
        hour("attempts"),
        hour("successes"),
        latency.join(", ")
    )
});

impl Store {
    /// Adds one replica's counts and state changes, in one transaction.
    pub async fn record_health(
        &self,
        minutes: &[(String, String, MinuteCounts)],
        states: &[(String, StateChange)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, minute, counts) in minutes {
            let mut query = sqlx::query(AssertSqlSafe(UPSERT_MINUTE.as_str()))
                .bind(id)
                .bind(minute)
                .bind(counts.attempts)
                .bind(counts.successes);
            for n in counts.latency {
                query = query.bind(n);
            }
            query.execute(&mut *tx).await?;
        }
        for (id, change) in states {
            let (at, status, error) = change.last_attempt.clone().unwrap_or_default();
            let at = change.last_attempt.as_ref().map(|_| at);
            // A newer attempt (from any replica) wins; a success seen here starts the failure
            // count over, else this replica's failures add to the others'.
            sqlx::query(
                "INSERT INTO endpoint_state (subscription_id, last_attempt_at, last_status, last_error, \
                     last_success_at, exhausted, failing_since) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (subscription_id) DO UPDATE SET \
                 last_status = CASE WHEN excluded.last_attempt_at IS NOT NULL AND (endpoint_state.last_attempt_at IS NULL \
                     OR excluded.last_attempt_at >= endpoint_state.last_attempt_at) \
                     THEN excluded.last_status ELSE endpoint_state.last_status END, \
                 last_error = CASE WHEN excluded.last_attempt_at IS NOT NULL AND (endpoint_state.last_attempt_at IS NULL \
                     OR excluded.last_attempt_at >= endpoint_state.last_attempt_at) \
                     THEN excluded.last_error ELSE endpoint_state.last_error END, \
                 last_attempt_at = CASE WHEN excluded.last_attempt_at IS NOT NULL AND (endpoint_state.last_attempt_at IS NULL \
                     OR excluded.last_attempt_at >= endpoint_state.last_attempt_at) \
                     THEN excluded.last_attempt_at ELSE endpoint_state.last_attempt_at END, \
                 last_success_at = CASE WHEN excluded.last_success_at IS NOT NULL AND (endpoint_state.last_success_at IS NULL \
                     OR excluded.last_success_at > endpoint_state.last_success_at) \
                     THEN excluded.last_success_at ELSE endpoint_state.last_success_at END, \
                 exhausted = CASE WHEN $8 = 1 THEN excluded.exhausted \
                     ELSE endpoint_state.exhausted + excluded.exhausted END, \
                 failing_since = CASE WHEN $8 = 1 THEN excluded.failing_since \
                     ELSE COALESCE(endpoint_state.failing_since, excluded.failing_since) END",
            )
            .bind(id)
            .bind(at)
            .bind(status.map(i64::from))
            .bind(error)
            .bind(&change.last_success_at)
            .bind(change.exhausted)
            .bind(&change.failing_since)
            .bind(i64::from(change.last_success_at.is_some()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Subscription `id`'s figures at `now`.
    pub async fn endpoint_figures(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<EndpointFigures, StoreError> {
        let since = |minutes: i64| minute_of(now - chrono::Duration::minutes(minutes));
        let sums = sqlx::query(AssertSqlSafe(SUM_MINUTES.as_str()))
            .bind(id)
            .bind(since(60))
            .bind(since(24 * 60))
            .fetch_one(&self.pool)
            .await?;
        let mut figures = EndpointFigures {
            last_hour: (
                sums.try_get("hour_attempts")?,
                sums.try_get("hour_successes")?,
            ),
            last_day: (
                sums.try_get("day_attempts")?,
                sums.try_get("day_successes")?,
            ),
            ..EndpointFigures::default()
        };
        for (i, slot) in figures.latency.iter_mut().enumerate() {
            *slot = sums.try_get(format!("lat_{i}").as_str())?;
        }
        let state = sqlx::query(
            "SELECT last_attempt_at, last_status, last_error, last_success_at, exhausted, failing_since \
             FROM endpoint_state WHERE subscription_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = state {
            let status: Option<i64> = row.try_get("last_status")?;
            figures.last_status = status.and_then(|s| u16::try_from(s).ok());
            figures.last_error = row.try_get("last_error")?;
            figures.last_success_at = row.try_get("last_success_at")?;
            figures.last_attempt_at = row.try_get("last_attempt_at")?;
            figures.exhausted = row.try_get("exhausted")?;
            figures.failing_since = row.try_get("failing_since")?;
        }
        Ok(figures)
    }

    /// Disables subscription `id` by the automatic rule if it holds at `now`: at least
    /// `min_failures` deliveries failed every attempt since its last success, it has been
    /// failing for `after`, and nothing succeeded in that time. `true` when this call disabled it
    /// (one replica does, however many check at once).
    pub async fn auto_disable(
        &self,
        id: &str,
        now: DateTime<Utc>,
        min_failures: u32,
        after: std::time::Duration,
    ) -> Result<bool, StoreError> {
        // A period longer than time goes back never ends.
        let Some(cutoff) = chrono::Duration::from_std(after)
            .ok()
            .and_then(|after| now.checked_sub_signed(after))
        else {
            return Ok(false);
        };
        let cutoff = rfc3339(cutoff);
        let stamp = rfc3339(now);
        let done = sqlx::query(
            "UPDATE subscriptions SET enabled = 0, disabled_reason = 'auto', disabled_at = $1, updated_at = $1 \
             WHERE id = $2 AND enabled = 1 AND EXISTS (SELECT 1 FROM endpoint_state s \
                 WHERE s.subscription_id = $2 AND s.exhausted >= $3 AND s.failing_since IS NOT NULL \
                 AND s.failing_since <= $4 AND (s.last_success_at IS NULL OR s.last_success_at <= $4))",
        )
        .bind(&stamp)
        .bind(id)
        .bind(i64::from(min_failures))
        .bind(&cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes minute counts older than a day (and a little), and the health of subscriptions
    /// that no longer exist.
    pub async fn prune_health(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM endpoint_minutes WHERE minute < $1")
            .bind(minute_of(now - chrono::Duration::hours(25)))
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "DELETE FROM endpoint_state WHERE subscription_id NOT IN (SELECT id FROM subscriptions)",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_fall_in_the_first_bucket_that_holds_them() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(5), 0);
        assert_eq!(latency_bucket(6), 1);
        assert_eq!(latency_bucket(10_000), 10);
        assert_eq!(latency_bucket(10_001), 11);
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:42:59.900Z")
            .unwrap()
            .to_utc();
        assert_eq!(minute_of(at), "2026-12-01T10:42Z");
    }
}
