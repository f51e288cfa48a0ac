//! The metric families and their registration: names, help texts, labels and buckets.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::Metrics;

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
        let control_messages = counter_vec(
            "webhook_control_messages_total",
            "Subscription-change messages heard on the control exchange: `applied` (the subscription read again from the store), `announced` (sent by this replica), `announce_failed` (other replicas catch up at their periodic refresh), `invalid` (not a control message; ignored).",
            &["result"],
        );
        let subscriptions_auto_disabled = register(
            &registry,
            IntCounter::new(
                "webhook_subscriptions_auto_disabled_total",
                "Subscriptions the automatic-disable rule disabled (counted by the replica that disabled each).",
            ),
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
        let delivery_logs_purged = register(
            &registry,
            IntCounter::new(
                "webhook_delivery_logs_purged_total",
                "Delivery-log records deleted because they were older than DELIVERY_LOG_RETENTION.",
            ),
        );
        let ack_failures = register(
            &registry,
            IntCounter::new(
                "webhook_ack_failures_total",
                "Messages whose ack failed or did not complete in time; the broker delivers them again (a duplicate, never a loss).",
            ),
        );
        let consumer_moves = register(
            &registry,
            IntCounter::new(
                "webhook_events_consumer_moves_total",
                "Times the events consumer moved to a fresh channel because a delivery under way (an endpoint that hangs) held up the acks of at least 256 later messages for 250 ms; they are acked with it on the old channel.",
            ),
        );
        let deliveries_deferred = register(
            &registry,
            IntCounter::new(
                "webhook_deliveries_deferred_total",
                "Deliveries put back in a delay queue, no attempt spent, because their endpoint was at MAX_IN_FLIGHT_PER_ENDPOINT.",
            ),
        );
        let endpoint_limits = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "webhook_endpoint_concurrency_limit",
                    "Endpoints by their adaptive in-flight limit (`limit` is a range: 1, 2-3, 4-7, … 64-127, 128+), on this replica.",
                ),
                &["limit"],
            ),
        );
        let events_parked = register(
            &registry,
            IntCounter::new(
                "webhook_events_parked_total",
                "Messages put back in the first delay queue, unattempted, because the intake window was full, their account held more than its share of it and its lane took longer than that delay to turn over (fairness across accounts), or because too many bytes waited.",
            ),
        );
        let intake_waiting = register(
            &registry,
            IntGauge::new(
                "webhook_intake_waiting",
                "Messages this replica holds from the events queue waiting for their account's turn to start.",
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
            delivery_logs_purged,
            forged_messages,
            control_messages,
            subscriptions_auto_disabled,
            ack_failures,
            consumer_moves,
            deliveries_deferred,
            endpoint_limits,
            events_parked,
            intake_waiting,
            in_flight,
            broker_connected,
            queue_messages,
            queue_consumers,
        }
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
