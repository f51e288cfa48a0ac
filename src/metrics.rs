//! The Prometheus registry and the small functions that count and log together, so a failure
//! is one call. Each `App` owns its registry: several apps in one test process do not collide.

use crate::event::EventKind;
use crate::seal::Forgery;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The `outcome` labels of `webhook_delivery_attempts_total`.
pub const OUTCOMES: [&str; 4] = ["success", "http_error", "timeout", "connect_error"];
/// The `reason` labels of `webhook_events_rejected_total`.
pub const REJECT_REASONS: [&str; 4] = [
    "invalid_json",
    "unknown_event",
    "invalid_event",
    "too_large",
];

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
    forged_messages: IntCounterVec,
    ack_failures: IntCounter,
    deliveries_deferred: IntCounter,
    in_flight: IntGauge,
    broker_connected: IntGauge,
    queue_messages: IntGaugeVec,
    queue_consumers: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let events_consumed = counter_vec(
            "webhook_events_consumed_total",
            "Valid events consumed from the events queue.",
            &["event"],
        );
        let events_rejected = counter_vec(
            "webhook_events_rejected_total",
            "Inbound messages rejected as invalid and dead-lettered.",
            &["reason"],
        );
        let delivery_attempts = counter_vec(
            "webhook_delivery_attempts_total",
            "HTTP delivery attempts by outcome.",
            &["event", "outcome"],
        );
        let retries_scheduled = counter_vec(
            "webhook_retries_scheduled_total",
            "Failed deliveries published to a delay queue.",
            &["delay"],
        );
        let dead_letters = counter_vec(
            "webhook_dead_letters_total",
            "Deliveries and messages published to the dead-letter queue.",
            &["event", "reason"],
        );
        let forged_messages = counter_vec(
            "webhook_forged_messages_total",
            "Messages that claimed to be the service's own (a delivery task on the events queue, a dead letter on the dead-letter queue) but whose seal did not verify; none was believed.",
            &["queue", "why"],
        );
        let delivery_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "webhook_delivery_duration_seconds",
                    "Duration of one HTTP delivery attempt.",
                )
                // 8 s: the latency alert counts the attempts over 8 s (of the 10 s timeout)
                // from this bucket exactly; without it the share between 5 and 10 s is a guess.
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 8.0,
                    10.0, 30.0,
                ]),
                &["event"],
            ),
        );
        let dead_letters_persisted = register(
            &registry,
            IntCounter::new(
                "webhook_dead_letters_persisted_total",
                "Dead letters committed to the delivery log.",
            ),
        );
        let ack_failures = register(
            &registry,
            IntCounter::new(
                "webhook_ack_failures_total",
                "Acks that failed or did not complete in time; the broker delivers those messages again (a duplicate, never a loss).",
            ),
        );
        let deliveries_deferred = register(
            &registry,
            IntCounter::new(
                "webhook_deliveries_deferred_total",
                "Deliveries put back in a delay queue, no attempt spent, because their endpoint was at MAX_IN_FLIGHT_PER_ENDPOINT.",
            ),
        );
        let in_flight = register(
            &registry,
            IntGauge::new(
                "webhook_deliveries_in_flight",
                "HTTP delivery attempts under way.",
            ),
        );
        let broker_connected = register(
            &registry,
            IntGauge::new(
                "webhook_broker_connected",
                "1 while the broker connection is up, else 0.",
            ),
        );
        let queue_messages = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "webhook_queue_messages",
                    "Messages ready in each queue, sampled.",
                ),
                &["queue"],
            ),
        );
        let queue_consumers = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "webhook_queue_consumers",
                    "Consumers on each queue as the broker reports them (every instance's), sampled.",
                ),
                &["queue"],
            ),
        );

        Metrics {
            registry,
            events_consumed,
            events_rejected,
            delivery_attempts,
            delivery_duration,
            retries_scheduled,
            dead_letters,
            dead_letters_persisted,
            forged_messages,
            ack_failures,
            deliveries_deferred,
            in_flight,
            broker_connected,
            queue_messages,
            queue_consumers,
        }
    }

    /// Creates the series every dashboard and alert expects at zero, so a rate over a counter
    /// that has not moved yet is 0 rather than absent. `delays` are the retry delay labels.
    pub fn init_series(&self, delays: &[String]) {
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
        tracing::info!(delay, "retry scheduled");
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
        tracing::info!(id, event_id, reason, trusted, "dead letter persisted");
    }

    /// An ack that failed or timed out: `what` was settled, and its message comes back.
    pub fn ack_failed(&self, what: &str) {
        self.ack_failures.inc();
        tracing::warn!(
            what,
            "ack failed or did not complete (channel gone); the broker will deliver the message again"
        );
    }

    /// Counts an HTTP attempt in flight until the guard drops (also when it is cancelled).
    pub fn attempt_in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn dead_lettered(&self, event: &str, reason: &str) {
        self.dead_letters.with_label_values(&[event, reason]).inc();
        tracing::warn!(event, reason, "dead-lettered");
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

/// Registers a metric built from constant names and labels (so neither step can fail at run time).
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
