//! Invalid inbound messages end in the delivery log with their reason, are counted, never loop,
//! and do not stop the valid event behind them.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn each_invalid_input_is_logged_with_its_reason_and_the_next_valid_event_is_delivered() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.subscribe("acct_acme", &receiver.url, &["*"]).await;

    let purchase = fixture("purchase");
    let oversized = purchase.replacen(
        r#""plan":"growth""#,
        &format!(r#""plan":"{}""#, "x".repeat(300 * 1024)),
        1,
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"this is not json {".to_vec(), "invalid_json"),
        (
            "unknown event",
            purchase
                .replacen(r#""event":"purchase""#, r#""event":"refund""#, 1)
                .into_bytes(),
            "unknown_event",
        ),
        (
            "no account_id",
            purchase
                .replacen(r#""account_id":"acct_acme","#, "", 1)
                .into_bytes(),
            "invalid_event",
        ),
        (
            "no timestamp",
            purchase
                .replacen(r#""timestamp":"2026-02-12T14:30:00Z","#, "", 1)
                .into_bytes(),
            "invalid_event",
        ),
        (
            "no visitor_id",
            purchase
                .replacen(r#""visitor_id":"v_abc123","#, "", 1)
                .into_bytes(),
            "invalid_event",
        ),
        ("over 256 KiB", oversized.into_bytes(), "too_large"),
    ];
    for (what, body, _) in &cases {
        assert_ne!(
            body.as_slice(),
            purchase.as_bytes(),
            "{what} differs from the fixture"
        );
        app.publish("purchase", body).await;
    }
    app.publish("purchase", purchase.as_bytes()).await;

    let delivered = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(delivered[0].text(), expected_body(&purchase));

    let logs = app.wait_for_logs("limit=50", cases.len()).await;
    assert_eq!(logs.len(), cases.len(), "one record per invalid message");
    let mut reasons: Vec<&str> = logs.iter().map(|l| l["reason"].as_str().unwrap()).collect();
    reasons.sort();
    let mut expected: Vec<&str> = cases.iter().map(|c| c.2).collect();
    expected.sort();
    assert_eq!(reasons, expected);
    for log in &logs {
        assert!(
            log["subscription_id"].is_null() && log["url"].is_null(),
            "{log}"
        );
        assert_eq!(log["attempts"], serde_json::json!([]));
        assert!(
            log["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{log}"
        );
    }
    let not_json = logs.iter().find(|l| l["reason"] == "invalid_json").unwrap();
    assert_eq!(
        not_json["payload"], "this is not json {",
        "non-JSON payload kept as a string"
    );
    let unknown = logs
        .iter()
        .find(|l| l["reason"] == "unknown_event")
        .unwrap();
    assert_eq!(
        unknown["payload"]["event"], "refund",
        "JSON payload kept as JSON"
    );
    assert_eq!(unknown["event"], "refund");
    assert_eq!(unknown["account_id"], "acct_acme");

    let too_large = logs.iter().find(|l| l["reason"] == "too_large").unwrap();
    let kept = too_large["payload"]
        .as_str()
        .expect("cut payload is kept as text");
    assert_eq!(kept.len(), 64 * 1024, "the first 64 KiB are kept");
    assert!(
        too_large["detail"].as_str().unwrap().contains("sha256"),
        "{}",
        too_large["detail"]
    );

    let metrics = app.metrics().await;
    for (reason, count) in [
        ("invalid_json", 1),
        ("unknown_event", 1),
        ("invalid_event", 3),
        ("too_large", 1),
    ] {
        let line = format!(r#"webhook_events_rejected_total{{reason="{reason}"}} {count}"#);
        assert_metric(&metrics, &line);
    }
    assert_metric(&metrics, "webhook_dead_letters_persisted_total 6");

    // Rejected messages do not come back: the log stays at six and the receiver at one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, body) = app.get("/v1/delivery-logs?limit=50").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 6);
    assert_eq!(receiver.count(), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_replay_of_a_message_rejected_before_matching_is_refused_clearly() {
    let app = spawn_app().await;
    app.publish("purchase", b"garbage").await;
    let logs = app.wait_for_logs("", 1).await;
    let id = logs[0]["id"].as_str().unwrap();
    let (status, body) = app
        .post(
            &format!("/v1/delivery-logs/{id}/replay"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_replayable");
    app.stop().await.unwrap();
}
