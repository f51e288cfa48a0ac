//! Events reach exactly the subscriptions that selected them, with the exact body and a
//! signature a stock Standard Webhooks library accepts.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn every_fixture_event_reaches_a_wildcard_subscription_signed_and_exact() {
    let app = spawn_app().await;
    let all = Receiver::start().await;
    let identify_only = Receiver::start().await;
    let other_account = Receiver::start().await;
    let disabled = Receiver::start().await;

    let sub = app.subscribe("acct_acme", &all.url, &["*"]).await;
    app.subscribe("acct_acme", &identify_only.url, &["identify"])
        .await;
    app.subscribe("acct_other", &other_account.url, &["*"])
        .await;
    let (status, _) = app
        .post(
            "/v1/subscriptions",
            serde_json::json!({"account_id": "acct_acme", "url": disabled.url, "events": ["*"], "enabled": false}),
        )
        .await;
    assert_eq!(status, 201);

    let mut sent = Vec::new();
    for name in EVENTS {
        sent.push(app.publish_fixture(name).await);
    }

    let got = all.wait_for(6, PATIENCE).await;
    assert_eq!(got.len(), 6);
    let secret = sub["secret"].as_str().unwrap();
    for fixture_text in &sent {
        let expected = expected_body(fixture_text);
        let request = got
            .iter()
            .find(|r| r.text() == expected)
            .unwrap_or_else(|| panic!("no request with body {expected}"));
        verify_signature(secret, request);
        assert_eq!(request.header("content-type"), "application/json");
        assert_eq!(
            request.header("user-agent"),
            concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION"))
        );
        assert!(
            request.header("webhook-id").starts_with("evt_"),
            "derived id: {}",
            request.header("webhook-id")
        );
    }

    let identify = identify_only.wait_for(1, PATIENCE).await;
    assert_eq!(identify[0].text(), expected_body(&fixture("identify")));

    // Give any wrong delivery time to show up before asserting that none did.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(identify_only.count(), 1, "only the selected event");
    assert_eq!(
        other_account.count(),
        0,
        "another account's subscription gets nothing"
    );
    assert_eq!(disabled.count(), 0, "a disabled subscription gets nothing");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn event_id_comes_from_the_body_then_the_amqp_message_id() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.subscribe("acct_acme", &receiver.url, &["purchase"])
        .await;

    let with_id = fixture("purchase").replacen('{', r#"{"id":"evt_from_body","#, 1);
    app.publish("purchase", with_id.as_bytes()).await;
    let props = lapin::BasicProperties::default().with_message_id("amqp-msg-7".into());
    app.publish_with("purchase", fixture("purchase").as_bytes(), props)
        .await;

    let got = receiver.wait_for(2, PATIENCE).await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    assert_eq!(ids, ["amqp-msg-7", "evt_from_body"]);
    // The id field is not part of what receivers get.
    assert!(
        got.iter()
            .all(|r| r.text() == expected_body(&fixture("purchase")))
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_up_another_subscription() {
    let app = spawn_app().await;
    let slow = Receiver::start().await;
    let fast = Receiver::start().await;
    slow.always(Reply::Slow(Duration::from_secs(3), 200));
    app.subscribe("acct_acme", &slow.url, &["*"]).await;
    app.subscribe("acct_acme", &fast.url, &["*"]).await;

    app.publish_fixture("purchase").await;
    // The fast endpoint is served while the slow one is still sleeping.
    fast.wait_for(1, Duration::from_secs(2)).await;
    slow.wait_for(1, PATIENCE).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fast.count(), 1, "no duplicate for the fast endpoint");
    assert_eq!(slow.count(), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn subscriptions_to_one_endpoint_reuse_its_connections() {
    // Eight subscriptions of one account to the same endpoint, each with at most two attempts
    // in flight: up to eight at once against one host (the account's share of sixteen). The
    // client's pool must keep that many connections to the host between attempts; it used to
    // keep only one subscription's worth (two), closing the rest after each attempt and opening
    // new ones for the next (the fan-out benchmark spent its CPU on it).
    let receiver = CountingReceiver::start(200, Duration::from_millis(2)).await;
    let app = spawn_app_with(&["--max-in-flight", "16", "--max-in-flight-per-endpoint", "2"]).await;
    for _ in 0..8 {
        app.subscribe(LOAD_ACCOUNT, &receiver.url, &["purchase"])
            .await;
    }
    let producer = Producer::connect(&app.exchange).await;
    let ids = event_ids("pooled", 200);
    assert_eq!(producer.publish_events(&ids).await, ids.len());
    wait_until("every delivery", PATIENCE * 2, || async {
        receiver.total() >= ids.len() * 8
    })
    .await;
    assert_eq!(receiver.distinct(), ids.len());
    // Each connection is opened once and kept: at most one per attempt in flight, plus a few
    // opened while a finished attempt's connection was on its way back to the pool.
    let opened = receiver.connections();
    assert!(
        opened <= 16,
        "{opened} connections opened for {} deliveries with at most 8 in flight",
        ids.len() * 8
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_at_its_in_flight_limit_waits_in_the_broker_without_losing_an_attempt() {
    // Deferrals wait in the longest delay queue: keep it short here.
    let app = spawn_app_with(&[
        "--max-in-flight-per-endpoint",
        "1",
        "--retry-delays",
        "500ms,1s",
    ])
    .await;
    let busy = Receiver::start().await;
    let other = Receiver::start().await;
    busy.script(&[Reply::Slow(Duration::from_millis(1500), 200)]);
    app.subscribe("acct_busy", &busy.url, &["*"]).await;
    app.subscribe("acct_other", &other.url, &["*"]).await;

    let first = fixture("purchase").replace("acct_acme", "acct_busy");
    let second = fixture("identify").replace("acct_acme", "acct_busy");
    app.publish("purchase", first.as_bytes()).await;
    busy.wait_for(1, PATIENCE).await;
    app.publish("identify", second.as_bytes()).await;
    // Another account is served at once while the busy endpoint is full.
    app.publish(
        "purchase",
        fixture("purchase")
            .replace("acct_acme", "acct_other")
            .as_bytes(),
    )
    .await;
    other.wait_for(1, Duration::from_secs(1)).await;

    let got = busy.wait_for(2, PATIENCE).await;
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(1500),
        "the second waited for the first"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(busy.count(), 2);
    let metrics = app.metrics().await;
    assert_metric(&metrics, "webhook_deliveries_deferred_total 1");
    assert_metric(
        &metrics,
        r#"webhook_delivery_attempts_total{event="identify",outcome="success"} 1"#,
    );
    // No attempt spent.
    assert_metric(
        &metrics,
        r#"webhook_delivery_attempts_total{event="identify",outcome="http_error"} 0"#,
    );
    let (_, logs) = app.get("/v1/delivery-logs").await;
    assert_eq!(logs["items"], serde_json::json!([]));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn what_settles_on_a_channel_moved_away_from_waits_for_the_delivery_that_hangs_instead_of_going_alone()
 {
    // A backlog in a deep window (4,096, over the 1,024 below which a lone ack is cheap): one
    // delivery takes 15 s, and the 2,000 events queued behind it all reach the first channel with
    // it. Once the consumer has moved away from that channel, what settled there is not acked one
    // message at a time (a quorum-queue command each): it waits for the slow delivery and goes in
    // one ack with it.
    let mut svc = ServiceProcess::start(&[("PREFETCH", "4096"), ("DELIVERY_TIMEOUT", "30s")]).await;
    let slow = Receiver::start().await;
    slow.always(Reply::Slow(Duration::from_secs(15), 200));
    svc.subscribe("acct_acme", &slow.url).await;
    let fast = CountingReceiver::start(200, Duration::ZERO).await;
    svc.subscribe(LOAD_ACCOUNT, &fast.url).await;
    svc.stop(PATIENCE).await;
    let producer = Producer::connect(&svc.exchange).await;
    let identify = (fixture("identify").into_bytes(), Default::default());
    publish_messages(&svc.exchange, "identify", &[identify]).await;
    let ids = event_ids("behind", 2000);
    assert_eq!(producer.publish_events(&ids).await, ids.len());

    svc.restart().await;
    let started = std::time::Instant::now();
    wait_until("every event behind it", PATIENCE, || async {
        fast.total() >= ids.len()
    })
    .await;
    let moves = svc
        .metric_sum("webhook_events_consumer_moves_total", "")
        .await;
    assert!(moves >= 1.0, "the consumer moved ({moves} moves)");
    // The broker's count is a snapshot taken every 5 s: one taken after every lone ack would
    // have been out (a second after the last delivery) and before the slow delivery ends.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let queue = svc.events_queue();
    let held = messages_unacknowledged(&queue).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the slow delivery must still be under way: {:?}",
        started.elapsed()
    );
    assert!(
        held >= 1500,
        "{held} unacked: acked alone, only the slow one would be left; held, the 2,000 behind it"
    );
    wait_until("every message acked", PATIENCE, || async {
        messages_unacknowledged(&queue).await == 0
    })
    .await;
    assert_eq!(slow.count(), 1, "the slow delivery was not repeated");
    assert_eq!(fast.total(), ids.len(), "each delivered once");
    assert_eq!(fast.distinct(), ids.len());
    svc.stop(PATIENCE).await;
}

#[tokio::test]
async fn a_delivery_that_hangs_moves_the_consumer_to_a_fresh_channel_losing_and_repeating_nothing()
{
    // One delivery takes 4 s while a thousand events pass it. No `multiple` ack may pass it, so
    // the events after it are acked one by one, each a command through the quorum queue, until
    // the consumer moves to a fresh channel (where acks are gathered again). The slow delivery
    // and the messages the old channel was sent are still handled and acked there.
    let app = spawn_app_with(&["--prefetch", "128"]).await;
    let slow = Receiver::start().await;
    slow.always(Reply::Slow(Duration::from_secs(4), 200));
    app.subscribe("acct_acme", &slow.url, &["identify"]).await;
    let fast = CountingReceiver::start(200, Duration::ZERO).await;
    app.subscribe(LOAD_ACCOUNT, &fast.url, &["purchase"]).await;

    app.publish_fixture("identify").await;
    slow.wait_for(1, PATIENCE).await;
    let producer = Producer::connect(&app.exchange).await;
    let ids = event_ids("passing", 1000);
    assert_eq!(producer.publish_events(&ids).await, ids.len());
    wait_until("every passing event", PATIENCE, || async {
        fast.total() >= ids.len()
    })
    .await;
    let moves = metric_sum(
        &app.metrics().await,
        "webhook_events_consumer_moves_total",
        "",
    );
    assert!(moves >= 1.0, "the consumer moved ({moves} moves)");

    let queue = format!("{}.events", app.prefix);
    wait_until("every message acked", PATIENCE, || async {
        messages_unacknowledged(&queue).await == 0
    })
    .await;
    // (`list_queues` shows no consumers of a quorum queue on RabbitMQ 3.10: ask for them.)
    let consumers = tokio::task::spawn_blocking(move || {
        rabbitmqctl_list("list_consumers", "/", &["queue_name"])
            .into_iter()
            .filter(|row| row["queue_name"] == queue.as_str())
            .count()
    })
    .await
    .unwrap();
    assert_eq!(consumers, 1, "the consumer moved from was cancelled");
    // A duplicate would arrive after the counts were reached.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fast.total(), ids.len(), "each passing event delivered once");
    assert_eq!(fast.distinct(), ids.len());
    assert_eq!(slow.count(), 1);
    app.stop().await.unwrap();
}
