//! The Prometheus registry and the small functions that count and log together, so a failure
//! is one call. Each `App` owns its registry: several apps in one test process do not collide.

mod registry;

use prometheus::{
    Encoder, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};

use crate::event::EventKind;
use crate::seal::Forgery;

/// The `outcome` labels of `webhook_delivery_attempts_total`.
pub const OUTCOMES: [&str; 4] = ["success", "http_error", "timeout", "connect_error"];
/// The `reason` labels of `webhook_events_rejected_total`.
pub const REJECT_REASONS: [&str; 4] = [
    "invalid_json",
    "unknown_event",
    "invalid_event",
    "too_large",
];

/// The `result` labels of `webhook_control_messages_total`.
pub const CONTROL_RESULTS: [&str; 4] = ["applied", "announced", "announce_failed", "invalid"];

/// The `queue` labels of `webhook_forged_messages_total`.
pub const FORGED_QUEUES: [&str; 2] = ["events", "dead"];
/// The `why` labels of `webhook_forged_messages_total` ([`Forgery::label`]).
pub const FORGED_WHY: [&str; 3] = ["unsigned", "unknown_key", "bad_signature"];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    events_consumed: IntCounterVec,
    events_rejected: IntCounterVec,
    delivery_attempts: IntCounterVec,
    delivery_duration: HistogramVec,
    retries_scheduled: IntCounterVec,
    dead_letters: IntCounterVec,
    dead_letters_persisted: IntCounter,
    delivery_logs_purged: IntCounter,
    forged_messages: IntCounterVec,
    control_messages: IntCounterVec,
    subscriptions_auto_disabled: IntCounter,
    ack_failures: IntCounter,
    consumer_moves: IntCounter,
    deliveries_deferred: IntCounter,
    endpoint_limits: IntGaugeVec,
    events_parked: IntCounter,
    intake_waiting: IntGauge,
    in_flight: IntGauge,
    broker_connected: IntGauge,
    queue_messages: IntGaugeVec,
    queue_consumers: IntGaugeVec,
}

impl Metrics {
    /// Creates the series every dashboard and alert expects at zero, so a rate over a counter
    /// that has not moved yet is 0 rather than absent. `delays` are the retry delay labels.
    pub fn init_series(&self, delays: &[String]) {
        for range in crate::delivery::limit::LIMIT_RANGES {
            self.endpoint_limits.with_label_values(&[range]);
        }
        for kind in EventKind::ALL {
            let event = kind.as_str();
            self.events_consumed.with_label_values(&[event]);
            self.delivery_duration.with_label_values(&[event]);
            self.dead_letters.with_label_values(&[event, "exhausted"]);
            for outcome in OUTCOMES {
                self.delivery_attempts.with_label_values(&[event, outcome]);
            }
        }
        for reason in REJECT_REASONS {
            self.events_rejected.with_label_values(&[reason]);
        }
        for delay in delays {
            self.retries_scheduled.with_label_values(&[delay]);
        }
        for queue in FORGED_QUEUES {
            for why in FORGED_WHY {
                self.forged_messages.with_label_values(&[queue, why]);
            }
        }
        for result in CONTROL_RESULTS {
            self.control_messages.with_label_values(&[result]);
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("Prometheus text is UTF-8")
    }

    pub fn event_consumed(&self, event: &str) {
        self.events_consumed.with_label_values(&[event]).inc();
    }

    pub fn event_rejected(&self, reason: &str, detail: &str) {
        self.events_rejected.with_label_values(&[reason]).inc();
        tracing::warn!(reason, detail, "inbound message rejected");
    }

    pub fn attempt_finished(&self, event: &str, outcome: &str, seconds: f64) {
        self.delivery_attempts
            .with_label_values(&[event, outcome])
            .inc();
        self.delivery_duration
            .with_label_values(&[event])
            .observe(seconds);
    }

    pub fn retry_scheduled(&self, delay: &str) {
        self.retries_scheduled.with_label_values(&[delay]).inc();
        tracing::debug!(delay, "retry scheduled");
    }

    pub fn event_parked(&self, account_id: &str, delay: &str) {
        self.events_parked.inc();
        tracing::debug!(
            account_id,
            delay,
            "intake window full and this account over its share and slow to turn over, or too many bytes waiting; message parked"
        );
    }

    pub fn intake_waiting(&self, n: usize) {
        self.intake_waiting.set(n as i64);
    }

    pub fn delivery_deferred(&self, subscription_id: &str, delay: &str) {
        self.deliveries_deferred.inc();
        tracing::debug!(
            subscription_id,
            delay,
            "endpoint at its in-flight limit; delivery deferred"
        );
    }

    /// A message whose seal did not verify, on `queue` (`events` or `dead`).
    pub fn forged_message(&self, queue: &str, forgery: &Forgery) {
        self.forged_messages
            .with_label_values(&[queue, forgery.label()])
            .inc();
        tracing::warn!(queue, why = forgery.label(), detail = %forgery, "message with no valid seal; nothing in it is believed");
    }

    /// A dead letter committed to the delivery log.
    pub fn dead_letter_persisted(&self, id: &str, event_id: &str, reason: &str, trusted: bool) {
        self.dead_letters_persisted.inc();
        tracing::debug!(id, event_id, reason, trusted, "dead letter persisted");
    }

    /// Delivery-log records deleted by the retention purge.
    pub fn delivery_logs_purged(&self, n: u64) {
        self.delivery_logs_purged.inc_by(n);
    }

    /// Counts a control message by `result` (one of [`CONTROL_RESULTS`]).
    pub fn control_message(&self, result: &str) {
        self.control_messages.with_label_values(&[result]).inc();
    }

    /// The gauge the per-endpoint limiter keeps its limits' distribution in.
    pub fn endpoint_limits(&self) -> IntGaugeVec {
        self.endpoint_limits.clone()
    }

    pub fn subscription_auto_disabled(&self) {
        self.subscriptions_auto_disabled.inc();
    }

    /// An ack of `messages` that failed or timed out: `what` was settled, and comes back.
    pub fn ack_failed(&self, what: &str, messages: u64) {
        self.ack_failures.inc_by(messages);
        tracing::warn!(
            what,
            messages,
            "ack failed or did not complete (channel gone); the broker will deliver the messages again"
        );
    }

    /// The events consumer moved to a fresh channel (see the dispatcher's acks).
    pub fn consumer_moved(&self) {
        self.consumer_moves.inc();
    }

    /// Counts an HTTP attempt in flight until the guard drops (also when it is cancelled).
    pub fn attempt_in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn dead_lettered(&self, event: &str, reason: &str) {
        self.dead_letters.with_label_values(&[event, reason]).inc();
        // Debug: an endpoint that is down dead-letters as fast as events arrive; each
        // endpoint's dead letters are summed into its failure warning (`endpoint_health`), and
        // rejected or forged messages have warnings of their own.
        tracing::debug!(event, reason, "dead-lettered");
    }

    /// One sample of a queue: messages ready and consumers, as a passive declare reports them.
    pub fn queue_sampled(&self, queue: &str, ready: u32, consumers: u32) {
        self.queue_messages
            .with_label_values(&[queue])
            .set(i64::from(ready));
        self.queue_consumers
            .with_label_values(&[queue])
            .set(i64::from(consumers));
    }

    pub fn broker_up(&self, up: bool) {
        self.broker_connected.set(i64::from(up));
    }
}

/// Keeps `webhook_deliveries_in_flight` right even when an attempt is cancelled.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
