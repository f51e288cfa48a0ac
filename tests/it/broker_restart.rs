//! Fault test: the broker node is stopped mid-load and started again. The real service binary
//! ([`ServiceProcess`]) runs against a [`PrivateBroker`]; nothing published with a confirm may be
//! lost, and the service must be consuming again soon after the node accepts connections.
//!
//! It prints the fault tests' report line (see `faults.rs`), where `recover_ms` runs from the
//! node accepting connections again until `/readyz` says 200 and `drain_ms` from the same moment
//! until every event arrived, followed by `delivered_at_stop` and `delivered_when_down` (distinct
//! events delivered when the node's stop began and when it was down: fewer than all, or the
//! fault hit nothing), `stop_ms` (the node's graceful stop), `restart_boot_ms` (its second boot)
//! and `deferred` (`webhook_deliveries_deferred_total`). `FAULT_EVENTS` sets the load (default
//! 2000); `FAULT_KEEP_LOG=FILE` keeps the service's log.

use std::time::{Duration, Instant};

use crate::support::PrivateBroker;
use crate::support::{
    CountingReceiver, LOAD_ACCOUNT, Producer, Report, ServiceProcess, event_ids, fault_events,
};
use crate::support::{PATIENCE, wait_until};

/// How soon after the node accepts connections the service must be consuming again.
const RECONNECT_LIMIT: Duration = Duration::from_secs(5);
/// The service's PREFETCH here: the broker has at most this many messages out to the service
/// unacked, and only those can be delivered twice when the node goes away.
const UNACKED_WINDOW: usize = 64;
/// How long the receiver takes to answer: with 64 in flight, about 640 deliveries a second, so
/// the load is still under way when the node has stopped (which takes a second or two).
const RECEIVER_LATENCY: Duration = Duration::from_millis(100);
/// How long the restarted node may take to see every event delivered.
const DRAIN: Duration = Duration::from_secs(120);

// Multi-threaded so the in-process receiver answers promptly while the test polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_load_loses_nothing() {
    let mut broker = PrivateBroker::start().await;
    let window = UNACKED_WINDOW.to_string();
    let mut svc =
        ServiceProcess::start_on(&broker.amqp_url(), &[("PREFETCH", window.as_str())]).await;
    let receiver = CountingReceiver::start(200, RECEIVER_LATENCY).await;
    svc.subscribe(LOAD_ACCOUNT, &receiver.url).await;

    // Publish everything with confirms before the fault.
    let n = fault_events();
    let ids = event_ids("restart", n);
    let producer = Producer::connect_to(&broker.amqp_url(), &svc.exchange).await;
    assert_eq!(
        producer.publish_events(&ids).await,
        n,
        "the broker confirmed every event"
    );
    drop(producer);

    // Stop the node while deliveries are in full swing.
    receiver.wait_distinct(n / 4, PATIENCE).await;
    let delivered_at_stop = receiver.distinct();
    let stop_began = Instant::now();
    broker.stop().await;
    let stop_ms = stop_began.elapsed().as_millis();
    let delivered_when_down = receiver.distinct();
    wait_until("/readyz to say 503", PATIENCE, || async {
        svc.readyz_status().await == Some(503)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    broker.start_again().await;
    let accepting = Instant::now();
    let reconnect = svc
        .ready_within(Duration::from_secs(60))
        .await
        .map(|ready| ready.saturating_duration_since(accepting))
        .expect("the service reconnects within 60 s of the node accepting connections");

    // Every event at least once: wait for the stragglers (redeliveries, retries), without
    // failing here, so that the report says what was lost.
    while receiver.distinct() < n && accepting.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = accepting.elapsed();
    // Count duplicates only once nothing more can arrive: the queues (delay queues, where
    // deferred deliveries wait, included) are empty and nothing is in flight; a clean stop
    // then leaves nothing in the events queue.
    let producer = Producer::connect_to(&broker.amqp_url(), &svc.exchange).await;
    wait_until("the service to be drained", DRAIN, || {
        svc.drained(&producer)
    })
    .await;
    let deferred = svc
        .metric_sum("webhook_deliveries_deferred_total", "")
        .await;
    if let Ok(keep) = std::env::var("FAULT_KEEP_LOG") {
        let _ = std::fs::write(keep, svc.logs());
    }
    let counts = receiver.counts();
    let report = Report::new("broker_restart", &ids, &counts, reconnect, drain)
        .with("delivered_at_stop", delivered_at_stop)
        .with("delivered_when_down", delivered_when_down)
        .with("stop_ms", stop_ms)
        .with("restart_boot_ms", broker.boot_time().as_millis())
        .with("deferred", deferred);
    println!("{report}");

    assert!(
        delivered_when_down < n,
        "the node was down before every event had been delivered (else the test shows nothing): {report}"
    );
    assert!(
        reconnect <= RECONNECT_LIMIT,
        "the service took {reconnect:?} to reconnect (limit {RECONNECT_LIMIT:?}): {report}"
    );
    // The gauge follows the broker loop, a moment after /readyz.
    wait_until("webhook_broker_connected 1", RECONNECT_LIMIT, || async {
        svc.metric_sum("webhook_broker_connected", "").await == 1.0
    })
    .await;
    let lost: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert_eq!(
        report.lost,
        0,
        "events never delivered, e.g. {:?}: {report}",
        &lost[..lost.len().min(5)]
    );
    assert!(
        report.duplicates <= UNACKED_WINDOW,
        "more duplicates than messages the broker had out unacked: {report}"
    );
    svc.stop(PATIENCE).await;
    assert_eq!(
        producer.ready(&svc.events_queue()).await,
        0,
        "after a clean stop nothing is left to be delivered again"
    );
}
