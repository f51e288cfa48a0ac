//! A dead-lettered delivery can be replayed once from attempt 1; the metrics follow along.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn replaying_a_log_record_delivers_it_again_once() {
    let app = spawn_app_with(&["--retry-delays", "100ms,200ms"]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(503));
    let sub = app.subscribe("acct_acme", &receiver.url, &["*"]).await;
    app.publish_fixture("visitor_enriched").await;

    let logs = app.wait_for_logs("reason=exhausted", 1).await;
    assert_eq!(receiver.count(), 3);
    let record = &logs[0];
    let id = record["id"].as_str().unwrap();
    assert!(record["replayed_at"].is_null());
    let (status, one) = app.get(&format!("/v1/delivery-logs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(&one, record);

    // The endpoint is fixed; the operator replays.
    receiver.always(Reply::Status(200));
    let (status, replayed) = app
        .post(
            &format!("/v1/delivery-logs/{id}/replay"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 202, "{replayed}");
    assert!(replayed["replayed_at"].is_string());

    let got = receiver.wait_for(4, PATIENCE).await;
    let last = got.last().unwrap();
    assert_eq!(last.text(), expected_body(&fixture("visitor_enriched")));
    assert_eq!(
        last.header("webhook-id"),
        record["event_id"].as_str().unwrap()
    );
    verify_signature(sub["secret"].as_str().unwrap(), last);

    // Replayed once only; the record says so.
    let (status, again) = app
        .post(
            &format!("/v1/delivery-logs/{id}/replay"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(again["error"]["code"], "already_replayed");
    let (_, one) = app.get(&format!("/v1/delivery-logs/{id}")).await;
    assert_eq!(one["replayed_at"], replayed["replayed_at"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 4);

    let (status, missing) = app
        .post("/v1/delivery-logs/dl_nope/replay", serde_json::json!({}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "not_found");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_expose_every_contract_series_and_move() {
    let app = spawn_app_with(&["--retry-delays", "100ms"]).await;
    // Before anything happens the series exist at zero, so rates and alerts have data.
    let fresh = app.metrics().await;
    for line in [
        r#"webhook_events_consumed_total{event="high_intent_visitor"} 0"#,
        r#"webhook_delivery_attempts_total{event="purchase",outcome="timeout"} 0"#,
        r#"webhook_events_rejected_total{reason="too_large"} 0"#,
        r#"webhook_retries_scheduled_total{delay="100ms"} 0"#,
        r#"webhook_dead_letters_total{event="identify",reason="exhausted"} 0"#,
        r#"webhook_delivery_duration_seconds_count{event="goal_achieved"} 0"#,
        "webhook_dead_letters_persisted_total 0",
    ] {
        assert!(fresh.contains(line), "missing {line}\n{fresh}");
    }

    let receiver = Receiver::start().await;
    receiver.script(&[Reply::Status(500), Reply::Status(500)]);
    app.subscribe("acct_acme", &receiver.url, &["*"]).await;
    // purchase: 500, retry, 500 → exhausted. Then identify: 200. Then an invalid message.
    app.publish_fixture("purchase").await;
    app.wait_for_logs("reason=exhausted", 1).await;
    app.publish_fixture("identify").await;
    receiver.wait_for(3, PATIENCE).await;
    app.publish("purchase", br#"{"event":"refund"}"#).await;
    app.wait_for_logs("", 2).await;

    let metrics = app.metrics().await;
    for line in [
        r#"webhook_events_consumed_total{event="purchase"} 1"#,
        r#"webhook_events_consumed_total{event="identify"} 1"#,
        r#"webhook_events_rejected_total{reason="unknown_event"} 1"#,
        r#"webhook_retries_scheduled_total{delay="100ms"} 1"#,
        r#"webhook_delivery_attempts_total{event="purchase",outcome="http_error"} 2"#,
        r#"webhook_delivery_attempts_total{event="identify",outcome="success"} 1"#,
        r#"webhook_dead_letters_total{event="purchase",reason="exhausted"} 1"#,
        // Not `event="refund"`: a name no event has is `unknown` (bounded label values).
        r#"webhook_dead_letters_total{event="unknown",reason="unknown_event"} 1"#,
        "webhook_dead_letters_persisted_total 2",
        "webhook_deliveries_in_flight 0",
        "webhook_broker_connected 1",
    ] {
        assert_metric(&metrics, line);
    }
    assert!(
        metrics.contains("webhook_delivery_duration_seconds_bucket{event=\"purchase\""),
        "{metrics}"
    );
    let attempts = metric_sum(&metrics, "webhook_delivery_attempts_total", "");
    assert_eq!(attempts, 3.0, "{metrics}");
    // Queue depths are sampled every few seconds.
    wait_until("queue depth samples", PATIENCE, || async {
        app.metrics().await.contains(&format!(
            "webhook_queue_messages{{queue=\"{}.events\"}}",
            app.prefix
        ))
    })
    .await;
    app.stop().await.unwrap();
}
