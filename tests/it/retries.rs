//! Failed attempts are retried through the delay queues at 2, 4 and 8 s, then dead-lettered.

use std::time::Duration;

use crate::support::*;

/// How far a retry may arrive after its nominal delay. Measured on this 2-core machine with
/// RabbitMQ 3.10.8 quorum queues: +6..8 ms when the test runs alone, up to +190 ms while the
/// whole suite runs in parallel, up to +530 ms with a release build hogging both cores. A retry
/// can never come early: its TTL starts after the failed response.
const LATE_ALLOWANCE: Duration = Duration::from_millis(750);
/// How far the growth from one gap to the next may stray from the schedule's (2 s, then 4 s):
/// whatever slows one hop slows its neighbour alike, so the difference is tighter than each gap.
const STEP_TOLERANCE: Duration = Duration::from_millis(250);

#[tokio::test]
async fn an_endpoint_that_always_fails_gets_four_attempts_at_2_4_8_s_then_one_log_record() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(500));
    let sub = app
        .subscribe("acct_acme", &receiver.url, &["purchase"])
        .await;
    app.publish_fixture("purchase").await;

    let got = receiver.wait_for(4, Duration::from_secs(30)).await;
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    println!("measured retry gaps: {gaps:?}");
    for (gap, nominal) in gaps.iter().zip([2, 4, 8].map(Duration::from_secs)) {
        assert!(
            *gap >= nominal - Duration::from_millis(5),
            "retry came early: {gap:?} < {nominal:?}"
        );
        assert!(
            *gap <= nominal + LATE_ALLOWANCE,
            "retry came late: {gap:?} vs {nominal:?}"
        );
    }
    // The schedule's shape: each gap longer than the last by 2 s, then by 4 s.
    for (pair, step) in gaps.windows(2).zip([2, 4].map(Duration::from_secs)) {
        let grew = pair[1].saturating_sub(pair[0]);
        assert!(
            grew.abs_diff(step) <= STEP_TOLERANCE,
            "gap {:?} → {:?} grew by {grew:?}, not {step:?} (± {STEP_TOLERANCE:?})",
            pair[0],
            pair[1]
        );
    }
    let ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "same webhook-id on every attempt: {ids:?}"
    );
    let secret = sub["secret"].as_str().unwrap();
    for request in &got {
        verify_signature(secret, request);
    }

    let logs = app.wait_for_logs("account_id=acct_acme", 1).await;
    let record = &logs[0];
    assert_eq!(record["reason"], "exhausted");
    assert_eq!(record["subscription_id"], sub["id"]);
    assert_eq!(record["url"], receiver.url);
    assert_eq!(record["event"], "purchase");
    assert_eq!(record["event_id"], got[0].header("webhook-id"));
    assert_eq!(
        record["payload"],
        serde_json::from_str::<serde_json::Value>(got[0].text()).unwrap()
    );
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], i + 1);
        assert_eq!(attempt["status"], 500);
        assert!(attempt["error"].as_str().unwrap().contains("500"));
        assert!(attempt["started_at"].as_str().unwrap().ends_with('Z'));
        assert!(attempt["duration_ms"].is_u64());
    }

    // The log keeps the delivered body byte for byte, in the list as in the single record.
    for path in [
        "/v1/delivery-logs?account_id=acct_acme".to_string(),
        format!("/v1/delivery-logs/{}", record["id"].as_str().unwrap()),
    ] {
        let raw = app
            .http
            .get(app.url(&path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            raw.contains(&format!("\"payload\":{}", got[0].text())),
            "{path} changed the payload: {raw}"
        );
    }

    // Exactly four attempts and one record: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.count(), 4);
    let (_, body) = app.get("/v1/delivery-logs?account_id=acct_acme").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_500_then_a_200_is_two_attempts_and_no_log_record() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script(&[Reply::Status(500)]);
    app.subscribe("acct_acme", &receiver.url, &["*"]).await;
    app.publish_fixture("goal_achieved").await;

    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].body, got[1].body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.count(), 2);
    let (_, body) = app.get("/v1/delivery-logs").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 0, "{body}");
    let metrics = app.metrics().await;
    assert_metric(
        &metrics,
        r#"webhook_delivery_attempts_total{event="goal_achieved",outcome="http_error"} 1"#,
    );
    assert_metric(
        &metrics,
        r#"webhook_delivery_attempts_total{event="goal_achieved",outcome="success"} 1"#,
    );
    assert_metric(&metrics, r#"webhook_retries_scheduled_total{delay="2s"} 1"#);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_slower_than_the_timeout_is_a_failed_attempt_and_is_retried() {
    let app = spawn_app_with(&["--delivery-timeout", "500ms"]).await;
    let receiver = Receiver::start().await;
    receiver.script(&[Reply::Slow(Duration::from_secs(3), 200)]);
    app.subscribe("acct_acme", &receiver.url, &["*"]).await;
    app.publish_fixture("identify").await;

    receiver.wait_for(2, Duration::from_secs(10)).await;
    let metrics = app.metrics().await;
    assert!(
        metrics
            .contains(r#"webhook_delivery_attempts_total{event="identify",outcome="timeout"} 1"#),
        "{metrics}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn connection_errors_and_redirects_are_failed_attempts() {
    // Nothing listens on the reserved port of a closed listener; a 302 is not followed.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/hooks", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_app_with(&["--retry-delays", "100ms"]).await;
    let redirecting = Receiver::start().await;
    redirecting.always(Reply::Status(302));
    let sub_dead = app.subscribe("acct_dead", &dead_url, &["*"]).await;
    app.subscribe("acct_redirect", &redirecting.url, &["*"])
        .await;
    app.publish(
        "purchase",
        fixture("purchase")
            .replace("acct_acme", "acct_dead")
            .as_bytes(),
    )
    .await;
    app.publish(
        "purchase",
        fixture("purchase")
            .replace("acct_acme", "acct_redirect")
            .as_bytes(),
    )
    .await;

    let dead = app.wait_for_logs("account_id=acct_dead", 1).await;
    assert_eq!(dead[0]["subscription_id"], sub_dead["id"]);
    let attempts = dead[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "1 + one retry delay");
    assert!(
        attempts
            .iter()
            .all(|a| a["status"].is_null() && a["error"].as_str().is_some_and(|e| !e.is_empty()))
    );
    let redirected = app.wait_for_logs("account_id=acct_redirect", 1).await;
    assert!(
        redirected[0]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == 302)
    );
    assert_eq!(redirecting.count(), 2);
    let metrics = app.metrics().await;
    assert_metric(
        &metrics,
        r#"webhook_delivery_attempts_total{event="purchase",outcome="connect_error"} 2"#,
    );
    assert_metric(
        &metrics,
        r#"webhook_retries_scheduled_total{delay="100ms"} 2"#,
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn failed_attempts_are_summed_per_endpoint_in_the_log_not_a_line_each() {
    // An endpoint that is down fails thousands of attempts a second: the log gets one warning
    // per endpoint every two seconds, with the counts (failed attempts, dead letters) and the
    // last error.
    let service = ServiceProcess::start(&[("RETRY_DELAYS", "100ms")]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(500));
    let subscription = service.subscribe(LOAD_ACCOUNT, &receiver.url).await;
    let producer = Producer::connect(&service.exchange).await;
    let ids = event_ids("loud", 20);
    assert_eq!(producer.publish_events(&ids).await, 20);
    service
        .wait_for_logs(&format!("account_id={LOAD_ACCOUNT}"), 20)
        .await;
    let summaries = || {
        service
            .logs()
            .lines()
            .filter(|l| l.contains("\"delivery attempts failed\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line"))
            .collect::<Vec<_>>()
    };
    // Two attempts each (one retry), then the dead letter: counted in the same lines.
    let total = |field: &str| {
        summaries()
            .iter()
            .map(|l| l["fields"][field].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    wait_until("the failures to be summed", PATIENCE, || async {
        total("failed") >= 40 && total("dead_lettered") >= 20
    })
    .await;
    assert_eq!(total("failed"), 40, "each failed attempt counted once");
    assert_eq!(total("dead_lettered"), 20, "each dead letter counted once");
    let lines = summaries();
    assert!(
        lines.len() < 40,
        "summed, not one line each: {}",
        lines.len()
    );
    for line in &lines {
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["subscription_id"], subscription.as_str());
        assert_eq!(line["fields"]["last_status"], 500);
        assert_eq!(line["fields"]["last_error"], "endpoint answered HTTP 500");
    }
    assert!(
        !service.logs().contains("\"delivery attempt failed\""),
        "no line per attempt at the default level"
    );
    assert!(
        !service.logs().contains("\"dead-lettered\""),
        "no line per dead letter at the default level"
    );
}

#[tokio::test]
async fn an_endpoint_that_refused_and_came_back_gets_every_delivery_on_the_first_retry() {
    // A refusal stands for the attempts to the same URL in the next 100 ms, which fail without
    // connecting; it must not outlive that: once the endpoint is back, the retries reach it.
    let app = spawn_app().await;
    let port = free_port();
    app.subscribe(
        LOAD_ACCOUNT,
        &format!("http://127.0.0.1:{port}/hooks"),
        &["purchase"],
    )
    .await;
    let producer = Producer::connect(&app.exchange).await;
    let burst = event_ids("came-back", 50);
    assert_eq!(producer.publish_events(&burst).await, burst.len());
    let attempts = |page: &str, outcome: &str| {
        metric_sum(
            page,
            "webhook_delivery_attempts_total",
            &format!(r#"outcome="{outcome}""#),
        )
    };
    // Every first attempt refused (really, or by a refusal just before it)...
    wait_until("every first attempt refused", PATIENCE, || async {
        attempts(&app.metrics().await, "connect_error") >= burst.len() as f64
    })
    .await;
    // ...then the endpoint comes back where it was, before the first retries (2 s).
    let endpoint = CountingReceiver::start_on(port, 200, Duration::ZERO).await;
    endpoint
        .wait_distinct(burst.len(), Duration::from_secs(30))
        .await;
    assert!(
        endpoint.counts().values().all(|&n| n == 1),
        "{:?}",
        endpoint.counts()
    );
    let page = app.metrics().await;
    assert_eq!(
        attempts(&page, "connect_error"),
        burst.len() as f64,
        "{page}"
    );
    assert_eq!(attempts(&page, "success"), burst.len() as f64, "{page}");
    app.stop().await.unwrap();
}
