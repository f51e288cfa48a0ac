//! How each endpoint is doing, across replicas, and the automatic-disable rule.
//!
//! The hot path only counts in memory ([`EndpointHealth::attempted`], [`EndpointHealth::exhausted`]:
//! a lock and a few additions); every [`FLUSH_EVERY`] the counts go to the store in one
//! transaction, added to every other replica's (attempts per minute with a latency histogram, the
//! latest attempt and success, failures since the last success). After each write the replica
//! checks the rule for the subscriptions whose deliveries it saw fail: at least
//! `AUTO_DISABLE_MIN_FAILURES` deliveries that failed every attempt, and no success for
//! `AUTO_DISABLE_AFTER`. The disable is one conditional UPDATE, so exactly one replica makes it;
//! that one counts it, tells the other replicas ([`crate::changes`]) and the operator
//! ([`crate::operator`]). A write that fails keeps its counts for the next one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::changes::Announcer;
use crate::config::HealthSettings;
use crate::delivery::AttemptRecord;
use crate::metrics::Metrics;
use crate::operator::Notifier;
use crate::store::Store;
use crate::store::health::{MinuteCounts, StateChange, latency_bucket, minute_of};
use crate::wire::control::Change;

/// How often a replica writes its counts.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// How often old minute counts are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The automatic-disable rule's settings.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub min_failures: u32,
    /// Zero turns the rule off.
    pub after: Duration,
}

/// What one replica saw of one subscription since its last write.
#[derive(Default, Debug)]
struct Tally {
    /// By minute (unix seconds / 60).
    minutes: BTreeMap<i64, MinuteCounts>,
    state: StateChange,
    /// When a delivery last failed every attempt: the rule is worth checking, as of then.
    last_exhausted: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct EndpointHealth {
    tallies: Mutex<HashMap<String, Tally>>,
}

impl EndpointHealth {
    /// Counts an attempt to `subscription_id`.
    pub fn attempted(&self, subscription_id: &str, record: &AttemptRecord) {
        // The minute it finished in (it just did): cheaper than reading `started_at` back.
        self.attempted_at(
            subscription_id,
            record,
            Utc::now().timestamp().div_euclid(60),
        );
    }

    fn attempted_at(&self, subscription_id: &str, record: &AttemptRecord, minute: i64) {
        let succeeded = record.error.is_none();
        let mut tallies = self.tallies.lock().expect("health lock");
        if !tallies.contains_key(subscription_id) {
            tallies.insert(subscription_id.to_string(), Tally::default());
        }
        let tally = tallies.get_mut(subscription_id).expect("just inserted");
        let minute = tally.minutes.entry(minute).or_default();
        minute.attempts += 1;
        minute.successes += i64::from(succeeded);
        minute.latency[latency_bucket(record.duration_ms)] += 1;
        let state = &mut tally.state;
        state.last_attempt = Some((
            record.started_at.clone(),
            record.status,
            record.error.clone(),
        ));
        if succeeded {
            state.last_success_at = Some(record.started_at.clone());
            state.exhausted = 0;
            state.failing_since = None;
        } else {
            state
                .failing_since
                .get_or_insert_with(|| record.started_at.clone());
        }
    }

    /// Counts a delivery to `subscription_id` that failed every attempt.
    pub fn exhausted(&self, subscription_id: &str) {
        let mut tallies = self.tallies.lock().expect("health lock");
        let tally = tallies.entry(subscription_id.to_string()).or_default();
        tally.state.exhausted += 1;
        tally.last_exhausted = Some(Utc::now());
    }

    fn take(&self) -> HashMap<String, Tally> {
        std::mem::take(&mut *self.tallies.lock().expect("health lock"))
    }

    /// Puts back counts a write could not store, under what came since (which is newer).
    fn put_back(&self, older: HashMap<String, Tally>) {
        let mut tallies = self.tallies.lock().expect("health lock");
        for (id, old) in older {
            let newer = tallies.entry(id).or_default();
            for (minute, counts) in old.minutes {
                newer.minutes.entry(minute).or_default().add(&counts);
            }
            let state = &mut newer.state;
            if state.last_attempt.is_none() {
                state.last_attempt = old.state.last_attempt;
            }
            if state.last_success_at.is_none() {
                // No success since: the older failures still count.
                state.last_success_at = old.state.last_success_at;
                state.exhausted += old.state.exhausted;
                state.failing_since = old.state.failing_since.or(state.failing_since.take());
            }
            newer.last_exhausted = newer.last_exhausted.max(old.last_exhausted);
        }
    }
}

impl From<&HealthSettings> for Rule {
    fn from(settings: &HealthSettings) -> Rule {
        Rule {
            min_failures: settings.auto_disable_min_failures,
            after: settings.auto_disable_after,
        }
    }
}

/// What the flush loop works with.
pub struct Flusher {
    pub health: Arc<EndpointHealth>,
    pub store: Store,
    pub rule: Rule,
    pub announcer: Announcer,
    pub notifier: Option<Notifier>,
    pub metrics: Metrics,
}

impl Flusher {
    /// Writes every [`FLUSH_EVERY`] until `stop`, and once more then.
    pub async fn run(self, stop: CancellationToken) {
        let mut pruned = tokio::time::Instant::now();
        loop {
            let stopping = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
            };
            self.flush().await;
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
                if let Err(e) = self.store.prune_health(Utc::now()).await {
                    tracing::warn!(error = %e, "pruning endpoint health failed");
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes what was counted since the last write, then applies the rule.
    pub async fn flush(&self) {
        let tallies = self.health.take();
        if tallies.is_empty() {
            return;
        }
        // In one order on every replica: two flushes of the same rows in different orders would
        // deadlock on PostgreSQL.
        let mut minutes: Vec<(String, String, MinuteCounts)> = tallies
            .iter()
            .flat_map(|(id, t)| {
                t.minutes.iter().map(move |(m, c)| {
                    let at = DateTime::from_timestamp(m * 60, 0).unwrap_or_default();
                    (id.clone(), minute_of(at), c.clone())
                })
            })
            .collect();
        minutes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut states: Vec<(String, StateChange)> = tallies
            .iter()
            .map(|(id, t)| (id.clone(), t.state.clone()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        if let Err(e) = self.store.record_health(&minutes, &states).await {
            tracing::warn!(error = %e, "writing endpoint health failed; keeping the counts for the next write");
            self.health.put_back(tallies);
            return;
        }
        // After the write: counts put back after a failed one are warned about once, with the
        // next write.
        warn_failures(&tallies);
        if self.rule.after.is_zero() {
            return;
        }
        // As of the delivery that failed its last attempt, not of this write (up to
        // FLUSH_EVERY later): whether the endpoint had been failing for AUTO_DISABLE_AFTER then
        // must not depend on when the counts happened to be written.
        for (id, tally) in &tallies {
            if let Some(at) = tally.last_exhausted {
                self.apply_rule(id, at).await;
            }
        }
    }

    async fn apply_rule(&self, id: &str, now: DateTime<Utc>) {
        let disabled = self
            .store
            .auto_disable(id, now, self.rule.min_failures, self.rule.after)
            .await;
        match disabled {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, subscription_id = %id, "checking the automatic-disable rule failed; it is checked again after the next failure");
                return;
            }
        }
        self.metrics.subscription_auto_disabled();
        self.announcer
            .announce(Change::Subscription(id.to_string()))
            .await;
        let sub = match self.store.subscription(id).await {
            Ok(Some(sub)) => sub,
            _ => return,
        };
        let figures = self
            .store
            .endpoint_figures(id, now)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, subscription_id = %id, "reading the endpoint's figures failed; the notice goes without them"))
            .ok();
        tracing::warn!(
            subscription_id = %id,
            account_id = %sub.account_id,
            failures = figures.as_ref().map_or(0, |f| f.exhausted),
            "subscription disabled automatically: its deliveries have failed for AUTO_DISABLE_AFTER; its events are dead-lettered as subscription_disabled until it is enabled again"
        );
        if let Some(notifier) = &self.notifier {
            notifier.endpoint_disabled(&sub, figures.as_ref()).await;
        }
    }
}

/// One warning per subscription whose attempts failed since the last write (about two
/// seconds), instead of a line per failed attempt: an endpoint that is down fails thousands a
/// second.
fn warn_failures(tallies: &HashMap<String, Tally>) {
    for (id, tally) in tallies {
        let (attempts, successes) = tally
            .minutes
            .values()
            .fold((0, 0), |(a, s), c| (a + c.attempts, s + c.successes));
        let dead_lettered = tally.state.exhausted;
        if attempts == successes && dead_lettered == 0 {
            continue;
        }
        let (status, error) = tally
            .state
            .last_attempt
            .as_ref()
            .map_or((None, None), |(_, status, error)| (*status, error.clone()));
        tracing::warn!(
            subscription_id = %id,
            failed = attempts - successes,
            attempts,
            dead_lettered,
            last_status = status,
            last_error = error.as_deref().unwrap_or(""),
            "delivery attempts failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unix minute of `at`.
    fn minute(at: &str) -> i64 {
        DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp()
            .div_euclid(60)
    }

    fn attempted(health: &EndpointHealth, id: &str, at: &str, ok: bool) {
        health.attempted_at(id, &record(at, ok), minute(at));
    }

    fn record(at: &str, ok: bool) -> AttemptRecord {
        AttemptRecord {
            attempt: 1,
            started_at: at.into(),
            duration_ms: 7,
            status: Some(if ok { 200 } else { 500 }),
            error: (!ok).then(|| "endpoint answered HTTP 500".into()),
        }
    }

    #[test]
    fn a_success_starts_the_failures_over_and_put_back_keeps_older_failures() {
        let health = EndpointHealth::default();
        attempted(&health, "s", "2026-12-01T10:00:00.000Z", false);
        health.exhausted("s");
        attempted(&health, "s", "2026-12-01T10:00:01.000Z", true);
        attempted(&health, "s", "2026-12-01T10:01:02.000Z", false);
        health.exhausted("s");
        let taken = health.take();
        let t = &taken["s"];
        assert_eq!(t.state.exhausted, 1, "only the failure after the success");
        assert_eq!(
            t.state.failing_since.as_deref(),
            Some("2026-12-01T10:01:02.000Z")
        );
        assert_eq!(
            t.state.last_success_at.as_deref(),
            Some("2026-12-01T10:00:01.000Z")
        );
        let per_minute: Vec<(i64, i64, i64)> = t
            .minutes
            .iter()
            .map(|(m, c)| (*m, c.attempts, c.successes))
            .collect();
        assert_eq!(
            per_minute,
            [
                (minute("2026-12-01T10:00:00Z"), 2, 1),
                (minute("2026-12-01T10:01:00Z"), 1, 0)
            ]
        );

        // A failed write: the counts come back under newer failures, which add to them.
        let health = EndpointHealth::default();
        attempted(&health, "s", "2026-12-01T10:00:00.000Z", false);
        health.exhausted("s");
        let older = health.take();
        attempted(&health, "s", "2026-12-01T10:00:05.000Z", false);
        health.exhausted("s");
        health.put_back(older);
        let t = &health.take()["s"];
        assert_eq!(t.state.exhausted, 2);
        assert_eq!(
            t.state.failing_since.as_deref(),
            Some("2026-12-01T10:00:00.000Z")
        );
        assert_eq!(t.minutes[&minute("2026-12-01T10:00:00Z")].attempts, 2);
        assert!(t.last_exhausted.is_some());
    }
}
