//! Fairness across accounts: one account's burst does not hold back another account's events,
//! even once the burst is larger than the intake window (its excess is parked in the first delay
//! queue and comes back, when its lane turns over slower than that delay), and nothing is lost or
//! delivered twice on the way.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_burst_past_the_intake_window_does_not_hold_back_a_quiet_account() {
    // A small window and few deliveries at once, against a slow endpoint: the burst of 1,500
    // takes 1,500 × 20 ms / 4 ≈ 8 s to deliver, and fills the 200-message window at once.
    let noisy = Receiver::start().await;
    noisy.always(Reply::Slow(Duration::from_millis(20), 200));
    let quiet = Receiver::start().await;
    let app = small_window("200ms,300ms,400ms").await;
    app.subscribe(LOAD_ACCOUNT, &noisy.url, &["purchase"]).await;
    app.subscribe("acct_quiet", &quiet.url, &["purchase"]).await;
    let producer = Producer::connect(&app.exchange).await;
    let burst = event_ids("noisy", 1_500);
    assert_eq!(producer.publish_events(&burst).await, burst.len());
    let burst_published = Instant::now();

    // The quiet account's events, one every 100 ms while the burst is delivered.
    let slowest = quiet_events(&app, &quiet, "quiet", 10).await;
    let noisy_so_far = noisy.count();
    assert!(
        noisy_so_far < burst.len() / 2,
        "the quiet events arrived while the burst was still being delivered ({noisy_so_far} of {} in {:?})",
        burst.len(),
        burst_published.elapsed()
    );
    // First in first out, the quiet events would wait for most of the burst (1,300 events
    // behind the window at 200/s: 6.5 s); parked at four per message started, at most ~1.5 s.
    assert!(
        slowest < Duration::from_millis(2500),
        "the slowest quiet event took {slowest:?}"
    );
    let parked = metric_sum(&app.metrics().await, "webhook_events_parked_total", "");
    assert!(parked > 0.0, "the burst's excess was parked");

    // Every event of the burst arrives, parked or not, once.
    each_once(&noisy, &burst).await;
    assert_metric(
        &app.metrics().await,
        "webhook_dead_letters_total{event=\"purchase\",reason=\"exhausted\"} 0",
    );
    app.stop().await.unwrap();
}

/// A backlog past the window is parked only when its account's lane turns over slower than the
/// first delay: here the burst's lane (~190 waiting, 4 at a time at 5 ms each) drains in about a
/// quarter of a second, far sooner than the 10 s a parked message would be away, so nothing is
/// parked and the burst is delivered once, in one pass. (Before the rule, the same window parked
/// part of it at once: a one-account backlog past the window drained at half speed.) The
/// opposite case, a lane slower than the delay, is the test above.
#[tokio::test]
async fn a_backlog_whose_lane_drains_sooner_than_the_first_delay_is_not_parked() {
    let endpoint = Receiver::start().await;
    endpoint.always(Reply::Slow(Duration::from_millis(5), 200));
    let app = small_window("10s,20s,30s").await;
    app.subscribe(LOAD_ACCOUNT, &endpoint.url, &["purchase"])
        .await;
    let producer = Producer::connect(&app.exchange).await;
    let burst = event_ids("drain", 1_500);
    assert_eq!(producer.publish_events(&burst).await, burst.len());

    each_once(&endpoint, &burst).await;
    let metrics = app.metrics().await;
    let parked = metric_sum(&metrics, "webhook_events_parked_total", "");
    assert_eq!(parked, 0.0, "nothing of a lane this quick is parked");
    app.stop().await.unwrap();
}

/// One account's deliveries take at most half of `MAX_IN_FLIGHT`, however many subscriptions
/// each of its events fans out to: with four subscriptions to an endpoint that takes 1.5 s, the
/// noisy account's events once filled every global slot (its cap counted messages, each of which
/// became four deliveries), and a quiet account's event waited for the slow attempts to end.
#[tokio::test]
async fn an_account_whose_events_fan_out_to_a_slow_endpoint_leaves_room_for_others() {
    let slow = Receiver::start().await;
    slow.always(Reply::Slow(Duration::from_millis(1500), 200));
    let quiet = Receiver::start().await;
    let app = spawn_app_with(&["--max-in-flight", "16", "--max-in-flight-per-endpoint", "4"]).await;
    for _ in 0..4 {
        app.subscribe(LOAD_ACCOUNT, &slow.url, &["purchase"]).await;
    }
    app.subscribe("acct_quiet", &quiet.url, &["purchase"]).await;
    let producer = Producer::connect(&app.exchange).await;
    let burst = event_ids("fanned", 40);
    assert_eq!(producer.publish_events(&burst).await, burst.len());
    wait_until("the slow endpoint to be busy", PATIENCE, || async {
        slow.count() >= 8
    })
    .await;

    let slowest = quiet_events(&app, &quiet, "quiet_fan", 5).await;
    assert!(
        slow.count() < burst.len() * 4,
        "the quiet events arrived while the fan-out was still under way"
    );
    // Waiting behind the noisy account's slow attempts would take at least their 1.5 s.
    assert!(
        slowest < Duration::from_millis(1000),
        "the slowest quiet event took {slowest:?}"
    );
    app.stop().await.unwrap();
}

/// The service with a small intake window (200) and few deliveries at once (8, 4 per endpoint,
/// so 4 per account): a burst of a few thousand fills the window at once.
async fn small_window(retry_delays: &str) -> TestApp {
    spawn_app_with(&[
        "--prefetch",
        "200",
        "--max-in-flight",
        "8",
        "--max-in-flight-per-endpoint",
        "4",
        "--retry-delays",
        retry_delays,
    ])
    .await
}

/// Waits until `receiver` has had as many requests as `ids`, then a little more, and checks that
/// each of `ids` arrived exactly once (by `webhook-id`).
async fn each_once(receiver: &Receiver, ids: &[String]) {
    receiver.wait_for(ids.len(), PATIENCE * 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts = std::collections::HashMap::new();
    for r in receiver.received() {
        *counts
            .entry(r.header("webhook-id").to_string())
            .or_insert(0) += 1;
    }
    for id in ids {
        assert_eq!(counts.get(id), Some(&1), "{id} delivered once");
    }
    assert_eq!(counts.len(), ids.len(), "nothing else delivered");
}

/// Publishes `n` events of `acct_quiet` (ids `evt_{label}_0`, …), one every 100 ms, waits until
/// `quiet` has each exactly once, and returns the slowest one's time from publish to receipt.
async fn quiet_events(app: &TestApp, quiet: &Receiver, label: &str, n: usize) -> Duration {
    let mut sent = Vec::new();
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let id = format!("evt_{label}_{i}");
        let body = json!({
            "id": id, "event": "purchase", "timestamp": "2026-12-01T10:00:00Z",
            "account_id": "acct_quiet", "data": {"visitor_id": "v_q"}
        });
        let at = Instant::now();
        app.publish("purchase", body.to_string().as_bytes()).await;
        sent.push((id, at));
    }
    let received = quiet.wait_for(sent.len(), PATIENCE).await;
    let mut slowest = Duration::ZERO;
    for (id, at) in &sent {
        let got: Vec<_> = received
            .iter()
            .filter(|r| r.header("webhook-id") == id)
            .collect();
        assert_eq!(got.len(), 1, "{id} delivered once");
        slowest = slowest.max(got[0].at.duration_since(*at));
    }
    slowest
}
