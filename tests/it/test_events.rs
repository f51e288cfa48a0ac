//! The event-type catalogue over HTTP, and `POST /v1/subscriptions/{id}/test`: a sample event
//! that goes through the normal path (signed, retried, dead-lettered, counted).

use serde_json::{Value, json};

use crate::support::*;

/// A validator for the schema the API serves for `event`, formats asserted.
async fn schema_of(app: &TestApp, event: &str) -> jsonschema::Validator {
    let (status, one) = app.get(&format!("/v1/event-types/{event}")).await;
    assert_eq!(status, 200, "{one}");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&one["schema"])
        .expect("the served schema compiles")
}

async fn set_enabled(app: &TestApp, id: &str, enabled: bool) {
    let path = format!("/v1/subscriptions/{id}");
    let body = json!({ "enabled": enabled });
    let (status, sub) = app.request(reqwest::Method::PATCH, &path, Some(body)).await;
    assert_eq!(status, 200, "{sub}");
}

fn assert_valid(validator: &jsonschema::Validator, body: &Value) {
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{body} fails its schema: {errors:?}");
}

#[tokio::test]
async fn event_types_are_listed_with_schemas_that_their_examples_and_fixtures_meet() {
    let app = spawn_app_with(&["--admin-token", "test-token-0123456789"]).await;
    let (status, _) = app.get("/v1/event-types").await;
    assert_eq!(status, 401, "the catalogue is under /v1 like the rest");
    let authed = |path: &str| {
        app.http
            .get(app.url(path))
            .bearer_auth("test-token-0123456789")
            .send()
    };
    let list: Value = authed("/v1/event-types")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().expect("items");
    assert!(list["next_cursor"].is_null(), "one page: {list}");
    let names: Vec<&str> = items.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, EVENTS);
    for item in items {
        let name = item["name"].as_str().unwrap();
        assert!(item["description"].as_str().is_some_and(|d| !d.is_empty()));
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&item["schema"])
            .expect("schema compiles");
        assert_valid(&validator, &item["example"]);
        let delivered: Value = serde_json::from_str(&expected_body(&fixture(name))).unwrap();
        assert_valid(&validator, &delivered);
        let one = authed(&format!("/v1/event-types/{name}")).await.unwrap();
        assert_eq!(one.status(), 200);
        assert_eq!(&one.json::<Value>().await.unwrap(), item);
    }
    let missing = authed("/v1/event-types/refund").await.unwrap();
    assert_eq!(missing.status(), 404);
    let err: Value = missing.json().await.unwrap();
    assert_eq!(err["error"]["code"], "not_found");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("purchase")
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_test_event_reaches_the_endpoint_signed_and_matching_its_schema() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let sub = app
        .subscribe("acct_test", &receiver.url, &["goal_achieved", "identify"])
        .await;
    let id = sub["id"].as_str().unwrap();
    let secret = sub["secret"].as_str().unwrap();

    // No body: the subscription's first event in the contract's order.
    let resp = app
        .http
        .post(app.url(&format!("/v1/subscriptions/{id}/test")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let sent: Value = resp.json().await.unwrap();
    assert_eq!(sent["event"], "identify");
    assert_eq!(sent["subscription_id"], id);
    let event_id = sent["event_id"].as_str().unwrap();

    let got = receiver.wait_for(1, PATIENCE).await;
    let first = &got[0];
    verify_signature(secret, first);
    assert_eq!(first.header("webhook-id"), event_id);
    let body: Value = serde_json::from_str(first.text()).unwrap();
    assert_eq!(body, sent["payload"]);
    assert_eq!(body["event"], "identify");
    assert!(body.get("account_id").is_none());
    assert_valid(&schema_of(&app, "identify").await, &body);

    let (status, second) = app
        .post(
            &format!("/v1/subscriptions/{id}/test"),
            json!({ "event": "goal_achieved" }),
        )
        .await;
    assert_eq!(status, 202, "{second}");
    let got = receiver.wait_for(2, PATIENCE).await;
    verify_signature(secret, &got[1]);
    assert_ne!(
        got[1].header("webhook-id"),
        event_id,
        "a fresh id each time"
    );
    let body: Value = serde_json::from_str(got[1].text()).unwrap();
    assert_eq!(body["event"], "goal_achieved");
    assert_valid(&schema_of(&app, "goal_achieved").await, &body);

    let metrics = app.metrics().await;
    for event in ["identify", "goal_achieved"] {
        let series = format!("event=\"{event}\",outcome=\"success\"");
        let n = metric_sum(&metrics, "webhook_delivery_attempts_total", &series);
        assert_eq!(n, 1.0, "{event}: {metrics}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_endpoint_gets_the_test_event_retried_then_dead_lettered() {
    let app = spawn_app_with(&["--retry-delays", "100ms,200ms"]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(500));
    let sub = app.subscribe("acct_test", &receiver.url, &["*"]).await;
    let id = sub["id"].as_str().unwrap();
    let (status, sent) = app
        .post(
            &format!("/v1/subscriptions/{id}/test"),
            json!({ "event": "high_intent_visitor" }),
        )
        .await;
    assert_eq!(status, 202, "{sent}");

    let logs = app.wait_for_logs(&format!("subscription_id={id}"), 1).await;
    let record = &logs[0];
    assert_eq!(record["reason"], "exhausted");
    assert_eq!(record["event_id"], sent["event_id"]);
    assert_eq!(record["event"], "high_intent_visitor");
    assert_eq!(record["payload"], sent["payload"]);
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{record}");
    assert!(attempts.iter().all(|a| a["status"] == 500));
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == sent["event_id"])
    );
    let metrics = app.metrics().await;
    let failed = metric_sum(
        &metrics,
        "webhook_delivery_attempts_total",
        r#"event="high_intent_visitor",outcome="http_error""#,
    );
    assert_eq!(failed, 3.0, "{metrics}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn test_event_requests_that_cannot_be_served_get_clear_errors() {
    let proxy = Proxy::to_broker().await;
    let app = spawn_app_with(&["--amqp-url", &proxy.amqp_url()]).await;
    let receiver = Receiver::start().await;
    let sub = app
        .subscribe("acct_test", &receiver.url, &["purchase"])
        .await;
    let id = sub["id"].as_str().unwrap();
    let test = format!("/v1/subscriptions/{id}/test");

    let (status, err) = app.post("/v1/subscriptions/sub_nope/test", json!({})).await;
    assert_eq!(
        (status.as_u16(), &err["error"]["code"]),
        (404, &json!("not_found"))
    );

    let (status, err) = app.post(&test, json!({ "event": "refund" })).await;
    assert_eq!(status, 422, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(EVENTS.iter().all(|e| message.contains(e)), "{message}");

    let (status, err) = app.post(&test, json!({ "event": "identify" })).await;
    assert_eq!(status, 422, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("identify") && message.contains("purchase"),
        "{message}"
    );

    let (status, err) = app.post(&test, json!({ "evnt": "purchase" })).await;
    assert_eq!(status, 422, "unknown field: {err}");
    let raw = app
        .http
        .post(app.url(&test))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);

    set_enabled(&app, id, false).await;
    let (status, err) = app.post(&test, json!({})).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "subscription_disabled");
    set_enabled(&app, id, true).await;

    // Broker unreachable: 503, and nothing is sent later either.
    proxy.cut();
    wait_until("/readyz to say 503", PATIENCE, || async {
        app.get("/readyz").await.0 == 503
    })
    .await;
    let (status, err) = app.post(&test, json!({})).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "broker_unavailable");
    proxy.restore();
    wait_until("/readyz to say 200", PATIENCE, || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    // Nothing from any refused request was delivered; the next good one is.
    let (status, _) = app.post(&test, json!({})).await;
    assert_eq!(status, 202);
    let got = receiver.wait_for(1, PATIENCE).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        receiver.count(),
        1,
        "{:?}",
        got.iter().map(|r| r.text()).collect::<Vec<_>>()
    );
    app.stop().await.unwrap();
}
