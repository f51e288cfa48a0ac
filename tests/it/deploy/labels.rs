//! What the alerts read from the service is bounded and really there: the `event` label of
//! `webhook_dead_letters_total` (which `WebhookDeadLetters` groups by) is one of the six events
//! or `unknown`, never a name a producer made up; and every histogram bucket the alerts and their
//! unit tests use is one the service has.

use std::collections::BTreeSet;

use webhook_dispatcher::metrics::Metrics;

use super::read;
use crate::support::{fixture, metric_sum, spawn_app};

#[tokio::test]
async fn a_dead_letter_naming_an_unknown_event_is_counted_as_unknown() {
    let app = spawn_app().await;
    let purchase = fixture("purchase");
    let made_up = format!("x{}", "y".repeat(4096));
    let unknown = purchase.replacen(
        r#""event":"purchase""#,
        &format!(r#""event":"{made_up}""#),
        1,
    );
    assert_ne!(unknown, purchase);
    // A known event with a field missing keeps its name.
    let invalid = purchase.replacen(r#""account_id":"acct_acme","#, "", 1);
    assert_ne!(invalid, purchase);
    app.publish("purchase", unknown.as_bytes()).await;
    app.publish("purchase", invalid.as_bytes()).await;

    let logs = app.wait_for_logs("limit=10", 2).await;
    let logged = logs
        .iter()
        .find(|l| l["reason"] == "unknown_event")
        .unwrap();
    assert_eq!(
        logged["event"],
        format!("x{}…", "y".repeat(63)),
        "the record's event is the name's first 64 bytes (an indexed column)"
    );
    assert_eq!(
        logged["payload"]["event"], made_up,
        "the raw message keeps the name as sent"
    );

    let metrics = app.metrics().await;
    assert!(
        !metrics.contains("xyyy"),
        "the made-up event name is a label value:\n{}",
        &metrics[..metrics.len().min(4000)]
    );
    let dead = |labels: &str| metric_sum(&metrics, "webhook_dead_letters_total", labels);
    assert_eq!(
        dead(r#"event="unknown",reason="unknown_event""#),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        dead(r#"event="purchase",reason="invalid_event""#),
        1.0,
        "{metrics}"
    );
    assert_eq!(dead(""), 2.0, "{metrics}");
    app.stop().await.unwrap();
}

/// The `le` values of `metric` in `text`: every `le="…"` on a line that names it.
fn le_values(text: &str, metric: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| line.contains(metric))
        .flat_map(|line| line.split("le=\"").skip(1))
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

#[test]
fn the_alerts_read_buckets_the_service_has() {
    const BUCKET: &str = "webhook_delivery_duration_seconds_bucket";
    let metrics = Metrics::new();
    metrics.attempt_finished("purchase", "success", 0.2);
    let service = le_values(&metrics.render(), BUCKET);
    assert!(service.contains("+Inf"), "{service:?}");
    // The latency alert counts the attempts over 8 s from the 8 s bucket.
    let alerts = le_values(&read("deploy/prometheus/alerts.yml"), BUCKET);
    assert!(alerts.contains("8"), "{alerts:?}");
    // The unit tests feed promtool buckets the service has, not interpolation-friendly ones.
    let unit_tests = le_values(&read("deploy/prometheus/alerts_test.yml"), BUCKET);
    assert!(unit_tests.contains("8"), "{unit_tests:?}");
    for (file, les) in [("alerts.yml", alerts), ("alerts_test.yml", unit_tests)] {
        let missing: Vec<_> = les.difference(&service).collect();
        assert!(
            missing.is_empty(),
            "{file} reads buckets {missing:?} the service does not have ({service:?})"
        );
    }
}
