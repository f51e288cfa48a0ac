//! `POST /v1/delivery-logs/replay`: dry run, real run, filters, `limit`/`more`, bad bodies, and
//! two bulk replays racing for the same records.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const BULK: &str = "/v1/delivery-logs/replay";

/// An app whose `acct_a` endpoint fails, with `n` dead-lettered purchases (`evt_bulk_0…`),
/// oldest first; returns the app, the receiver and the records (oldest first).
async fn app_with_dead_letters(n: usize) -> (TestApp, Receiver, Vec<Value>) {
    let app = spawn_app_with(&["--retry-delays", "50ms"]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(503));
    app.subscribe("acct_a", &receiver.url, &["*"]).await;
    for i in 0..n {
        let body = format!(
            r#"{{"id":"evt_bulk_{i}","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"acct_a","data":{{"visitor_id":"v_{i}"}}}}"#
        );
        app.publish("purchase", body.as_bytes()).await;
        // One at a time, so the records' order is the publish order.
        app.wait_for_logs("account_id=acct_a", i + 1).await;
    }
    let mut records = app.wait_for_logs("account_id=acct_a", n).await;
    records.reverse();
    (app, receiver, records)
}

/// How many of `acct_a`'s records read replayed.
async fn replayed_count(app: &TestApp) -> usize {
    let (_, page) = app.get("/v1/delivery-logs?account_id=acct_a").await;
    let items = page["items"].as_array().unwrap();
    items
        .iter()
        .filter(|r| r["replayed_at"].is_string())
        .count()
}

fn ids(values: &Value) -> Vec<String> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn record_ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn bulk_replay_dry_runs_filters_pages_and_replays_once() {
    let (app, receiver, records) = app_with_dead_letters(5).await;
    let all_ids = record_ids(&records);
    let attempts = receiver.count();

    let (status, dry) = app
        .post(BULK, json!({"account_id": "acct_a", "dry_run": true}))
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        dry,
        json!({"dry_run": true, "matched": 5, "replayed": all_ids, "skipped": [], "failed": [], "more": false, "next_cursor": null})
    );
    assert_eq!(replayed_count(&app).await, 0, "a dry run changes nothing");
    // Pages go on from the cursor (a dry run marks nothing: without it the same records return).
    let (_, page) = app
        .post(BULK, json!({"all": true, "dry_run": true, "limit": 2}))
        .await;
    assert_eq!(ids(&page["replayed"]), all_ids[..2]);
    assert_eq!(
        (&page["more"], &page["next_cursor"]),
        (&json!(true), &json!(all_ids[1]))
    );
    let (_, page) = app
        .post(
            BULK,
            json!({"all": true, "dry_run": true, "limit": 2, "cursor": page["next_cursor"]}),
        )
        .await;
    assert_eq!(ids(&page["replayed"]), all_ids[2..4]);

    // Filters that match nothing, and one that matches one record.
    for body in [
        json!({"account_id": "acct_other", "dry_run": true}),
        json!({"event": "identify", "dry_run": true}),
        json!({"since": "2099-01-01", "dry_run": true}),
        json!({"until": "2000-01-01T00:00:00+02:00", "dry_run": true}),
        json!({"reason": "invalid_json", "dry_run": true}),
    ] {
        let (status, none) = app.post(BULK, body.clone()).await;
        assert_eq!(status, 200, "{body}: {none}");
        assert_eq!(none["matched"], 0, "{body}: {none}");
    }
    let (_, one) = app
        .post(
            BULK,
            json!({"ids": [all_ids[3]], "since": "1h", "dry_run": true}),
        )
        .await;
    assert_eq!(ids(&one["replayed"]), [all_ids[3].clone()]);

    // Real run, two at a time: the oldest first, `more` until the end.
    receiver.always(Reply::Status(200));
    let (status, first) = app.post(BULK, json!({"all": true, "limit": 2})).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["dry_run"], false);
    assert_eq!(first["matched"], 2);
    assert_eq!(ids(&first["replayed"]), all_ids[..2]);
    assert_eq!(first["more"], true);
    let (_, rest) = app.post(BULK, json!({"account_id": "acct_a"})).await;
    assert_eq!(ids(&rest["replayed"]), all_ids[2..]);
    assert_eq!(rest["more"], false);
    let got = receiver.wait_for(attempts + 5, PATIENCE).await;
    let mut arrived: Vec<&str> = got[attempts..]
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect();
    arrived.sort();
    assert_eq!(
        arrived,
        [
            "evt_bulk_0",
            "evt_bulk_1",
            "evt_bulk_2",
            "evt_bulk_3",
            "evt_bulk_4"
        ]
    );
    assert_eq!(replayed_count(&app).await, 5);

    // Nothing is left: a third run matches nothing, and the single-record replay says why.
    let (status, none) = app.post(BULK, json!({"all": true})).await;
    assert_eq!(status, 202);
    assert_eq!(none["matched"], 0);
    let (status, again) = app
        .post(
            &format!("/v1/delivery-logs/{}/replay", all_ids[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(again["error"]["code"], "already_replayed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), attempts + 5);

    // The list endpoint takes the same times.
    let (status, listed) = app.get("/v1/delivery-logs?since=1h&until=2099-01-01").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["items"].as_array().unwrap().len(), 5);
    let (status, listed) = app.get("/v1/delivery-logs?until=2000-01-01").await;
    assert_eq!(status, 200);
    assert!(listed["items"].as_array().unwrap().is_empty());
    let (status, bad) = app.get("/v1/delivery-logs?since=later").await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["code"], "bad_request");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"later\" is not a time")
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bulk_replay_refuses_bad_bodies_clearly() {
    let app = spawn_app().await;
    // Every one is a 422 in the API's error format, saying what is wrong.
    for (body, says) in [
        (json!({"account": "acct_a"}), "unknown field `account`"),
        (
            json!({"since": "tomorrow-ish"}),
            "\"tomorrow-ish\" is not a time",
        ),
        (json!({}), "at least one filter"),
        (json!({"dry_run": true}), "at least one filter"),
        (
            json!({"all": true, "limit": 0}),
            "limit must be between 1 and 10000",
        ),
        (
            json!({"all": true, "limit": 10001}),
            "limit must be between 1 and 10000",
        ),
        (
            json!({"since": "2h", "until": "3h"}),
            "must be before until",
        ),
        (json!({"ids": "dl_1"}), "invalid type"),
        (json!({"account_id": ""}), "account_id must not be empty"),
    ] {
        let (status, answer) = app.post(BULK, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(
            answer["error"]["code"], "validation_failed",
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let resp = app
        .http
        .post(app.url(BULK))
        .header("content-type", "application/json")
        .body("{\"all\": tru")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "bad_request");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_bulk_replays_send_each_record_once() {
    let (app, receiver, records) = app_with_dead_letters(12).await;
    receiver.always(Reply::Status(200));
    let attempts = receiver.count();
    let (a, b) = tokio::join!(
        app.post(BULK, json!({"account_id": "acct_a"})),
        app.post(BULK, json!({"all": true})),
    );
    assert_eq!((a.0.as_u16(), b.0.as_u16()), (202, 202), "{a:?} {b:?}");
    let mut replayed = ids(&a.1["replayed"]);
    replayed.extend(ids(&b.1["replayed"]));
    replayed.sort();
    assert_eq!(
        replayed,
        record_ids(&records),
        "each record replayed by exactly one request"
    );
    // What one request lost to the other it reports as already replayed.
    for (answer, other) in [(&a.1, &b.1), (&b.1, &a.1)] {
        for skipped in answer["skipped"].as_array().unwrap() {
            assert_eq!(skipped["reason"], "already_replayed", "{skipped}");
            assert!(ids(&other["replayed"]).contains(&skipped["id"].as_str().unwrap().to_string()));
        }
    }
    receiver.wait_for(attempts + 12, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), attempts + 12, "no record delivered twice");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bulk_replay_needs_the_admin_token() {
    let token = "test-token-0123456789abcdef";
    let app = spawn_app_with(&["--admin-token", token]).await;
    let (status, err) = app.post(BULK, json!({"all": true, "dry_run": true})).await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "unauthorized");
    let resp = app
        .http
        .post(app.url(BULK))
        .bearer_auth(token)
        .json(&json!({"all": true, "dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await.unwrap();
}
