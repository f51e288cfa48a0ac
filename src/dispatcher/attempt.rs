//! One delivery: wait for its account's share, a global permit and an endpoint slot, make one signed attempt, count
//! and log it, and hand the delivery to whatever [`retry`](crate::retry) says comes next.

use tracing::{Instrument, Span, field};

use super::{Dispatcher, HandleError};
use crate::delivery::limit::WAIT_FOR_SLOT;
use crate::delivery::{AttemptRecord, Outcome};
use crate::event::EventKind;
use crate::retry;
use crate::subscriptions::Subscription;
use crate::wire::{DeadLetter, EventRef, Reason};

impl Dispatcher {
    /// One attempt of `ev` to `sub` (its earlier `attempts` and `deferrals` carried along), then
    /// the next step — or, when the endpoint already has its fill of attempts in flight, a
    /// deferral. A disabled subscription gets no attempt: the delivery is kept in the delivery
    /// log as `subscription_disabled` (replayable once it is enabled again).
    pub(super) async fn deliver(
        &self,
        ev: &EventRef<'_>,
        sub: &Subscription,
        mut attempts: Vec<AttemptRecord>,
        deferrals: u32,
    ) -> Result<(), HandleError> {
        if !sub.enabled {
            let dead = DeadLetter::given_up(
                ev,
                &sub.id,
                Some(&sub.url),
                attempts,
                Reason::SubscriptionDisabled,
            );
            return self.dead_letter(dead).await;
        }
        // Its account's share, then the global permit, then the endpoint's slot, always in that
        // order. The share first: an account at its share waits holding nothing the others
        // need. The global permit before the slot: a delivery holding its endpoint's slot must
        // never sit waiting for a global permit, or busy-but-healthy endpoints (a fan-out)
        // would look stuck.
        let share = self.shares.acquire(ev.account_id).await;
        let permit = self.limit.acquire().await.expect("semaphore never closed");
        let slot = self.endpoints.acquire(&sub.id, WAIT_FOR_SLOT).await;
        if slot.is_err()
            && let Some(next) = retry::when_endpoint_full(self.broker.topology.retries.len())
        {
            drop(permit);
            drop(share);
            return self.hand_off(next, ev, sub, attempts, deferrals).await;
        }
        let number = attempts.len() as u32 + 1;
        // At debug, like the per-attempt lines it gives context to: an enabled span is formatted
        // into the log's JSON when made and again when `outcome` is recorded, ~7 % of the
        // service's CPU per delivery at info (BENCHMARKS.md), for lines that are off there.
        let span = tracing::debug_span!(
            "delivery",
            event_id = ev.id,
            subscription_id = %sub.id,
            attempt = number,
            event = ev.event,
            outcome = field::Empty,
        );
        async {
            let (outcome, record) = {
                let _gauge = self.metrics.attempt_in_flight();
                let keys = sub.signing_keys(chrono::Utc::now());
                let attempt = self
                    .deliverer
                    .attempt(&sub.parsed_url, &keys, ev.id, ev.body, number)
                    .await;
                if let Ok(slot) = slot {
                    slot.finished(attempt.signal);
                }
                drop(permit);
                drop(share);
                (attempt.outcome, attempt.record)
            };
            Span::current().record("outcome", outcome.label());
            // A task's event name is not trusted as a label either: one of the six, or `unknown`.
            self.metrics.attempt_finished(
                EventKind::parse(ev.event).map_or("unknown", EventKind::as_str),
                outcome.label(),
                record.duration_ms as f64 / 1000.0,
            );
            log_outcome(&outcome, &record);
            let next = retry::next_step(&outcome, number, self.broker.topology.retries.len());
            let will_retry = matches!(next, retry::Next::Retry(_));
            self.activity.attempted(&sub.id, ev.id, &record, will_retry);
            self.health.attempted(&sub.id, &record);
            attempts.push(record);
            self.hand_off(next, ev, sub, attempts, 0).await
        }
        .instrument(span)
        .await
    }
}

fn log_outcome(outcome: &Outcome, record: &AttemptRecord) {
    match outcome {
        Outcome::Success(status) => {
            // Debug, not info: at thousands of deliveries a second a line per success cost ~30 %
            // of throughput (BENCHMARKS.md); successes are counted in the metrics.
            tracing::debug!(status, duration_ms = record.duration_ms, "delivered");
        }
        // Debug too: an endpoint that is down fails thousands of attempts a second, and a line
        // each cost a quarter of the retry path (BENCHMARKS.md, scenario 9). Each endpoint's
        // failures are summed into one warning every two seconds (`endpoint_health`).
        _ => tracing::debug!(
            status = record.status,
            error = record.error.as_deref().unwrap_or(""),
            duration_ms = record.duration_ms,
            "delivery attempt failed"
        ),
    }
}
