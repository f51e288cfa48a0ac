//! `POST /v1/delivery-logs/replay`: dry run, real run, filters, `limit`/`more`, bad bodies, and
//! two bulk replays racing for the same records.

use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use webhook_dispatcher::store::{Store, Trust};
use webhook_dispatcher::wire::{DeadLetter, new_dead_letter_id, raw_payload};

use crate::support::*;

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
    assert_eq!(page["more"], true);
    assert!(page["next_cursor"].is_string(), "{page}");
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
        (
            json!({"since": "2099-01-01", "dry_run": true}),
            "is in the future",
        ),
        (
            json!({"all": true, "cursor": "dl_0192"}),
            "is not a next_cursor of this endpoint",
        ),
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

/// An app on a SQLite file of the test's own, whose `acct_a` endpoint answers 200, with `n`
/// dead-lettered purchases (`evt_many_0…`) written straight into its store (many records
/// without waiting for each to fail). Returns the app, the receiver, the store and the record
/// ids, oldest first.
async fn app_with_stored_letters(n: usize) -> (TestApp, Receiver, Store, Vec<String>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bulk.db").display());
    let app = spawn_app_with(&["--database-url", &url]).await;
    let receiver = Receiver::start().await;
    let sub = app.subscribe("acct_a", &receiver.url, &["*"]).await;
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let store = Store::connect(&url).await.unwrap();
    let mut record_ids = Vec::new();
    for i in 0..n {
        let letter = DeadLetter {
            id: new_dead_letter_id(),
            event_id: format!("evt_many_{i}"),
            account_id: Some("acct_a".into()),
            subscription_id: Some(sub_id.clone()),
            url: Some(receiver.url.clone()),
            event: Some("purchase".into()),
            payload: raw_payload(format!(r#"{{"event":"purchase","n":{i}}}"#).as_bytes()),
            reason: "exhausted".into(),
            detail: None,
            attempts: Vec::new(),
            dead_lettered_at: webhook_dispatcher::time::now_rfc3339(),
        };
        assert!(
            store
                .insert_dead_letter(&letter, Trust::Verified)
                .await
                .unwrap()
        );
        record_ids.push(letter.id);
    }
    (app, receiver, store, record_ids, dir)
}

/// Waits until `receiver` got `n` deliveries, then (a moment later, for any second copy) checks
/// they are the `n` stored letters of [`app_with_stored_letters`], each once.
async fn each_stored_letter_arrives_once(receiver: &Receiver, n: usize) {
    receiver.wait_for(n, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (arrived, twice) = arrivals(receiver);
    let mut expected: Vec<String> = (0..n).map(|i| format!("evt_many_{i}")).collect();
    expected.sort();
    assert_eq!(arrived, expected);
    assert!(!twice, "no record sent twice");
}

/// The `webhook-id`s `receiver` got, sorted, and whether any came twice.
fn arrivals(receiver: &Receiver) -> (Vec<String>, bool) {
    let mut got: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    got.sort();
    let n = got.len();
    got.dedup();
    let twice = got.len() != n;
    (got, twice)
}

#[tokio::test]
async fn a_bulk_replay_whose_client_hangs_up_still_sends_every_record_it_claims() {
    // The most one request may replay (10 batches of claims, confirmed publishes and commits):
    // the client gives up long before they are done.
    let n = 10_000;
    let (app, receiver, store, _, _dir) = app_with_stored_letters(n).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = impatient
        .post(app.url(BULK))
        .json(&json!({"account_id": "acct_a", "limit": n}))
        .send()
        .await
        .expect_err("the client hangs up first");
    assert!(err.is_timeout(), "{err}");
    // The run goes on without it: every record is replayed and delivered, none marked replayed
    // without being sent.
    wait_until("every record marked replayed", PATIENCE, || async {
        store.count_delivery_logs().await.unwrap().not_replayed == 0
    })
    .await;
    each_stored_letter_arrives_once(&receiver, n).await;
    store.close().await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn later_pages_do_not_replay_what_the_run_itself_dead_lettered_again() {
    // The endpoint stays down: each replay is dead-lettered again ~100 ms later, as a new,
    // newer record.
    let (app, _receiver, records) = app_with_dead_letters(2).await;
    let all_ids = record_ids(&records);
    let (status, first) = app.post(BULK, json!({"all": true, "limit": 1})).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(ids(&first["replayed"]), all_ids[..1]);
    assert_eq!(first["more"], true);
    let again = app.wait_for_logs("account_id=acct_a", 3).await;
    assert_eq!(again.len(), 3, "the replay failed again as a new record");
    let (status, second) = app
        .post(
            BULK,
            json!({"all": true, "limit": 1, "cursor": first["next_cursor"]}),
        )
        .await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(ids(&second["replayed"]), all_ids[1..]);
    assert_eq!(
        (&second["more"], &second["next_cursor"]),
        (&json!(false), &Value::Null),
        "the new record is after this run's start: not this run's to replay"
    );
    // A new run (no cursor) does take it.
    let (_, fresh) = app.post(BULK, json!({"all": true, "dry_run": true})).await;
    assert!(fresh["matched"].as_u64().unwrap() >= 1, "{fresh}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_bulk_replays_send_each_record_once() {
    let n = 300;
    let (app, receiver, store, record_ids, dir) = app_with_stored_letters(n).await;
    // Both requests start together and work through the same records, oldest first. The store
    // is held meanwhile, so both wait at their first claim: they really run at the same time.
    let lock = StoreLock::take(&dir.path().join("bulk.db")).await;
    let start = tokio::sync::Barrier::new(3);
    let send = |body: Value| {
        let start = &start;
        let app = &app;
        async move {
            start.wait().await;
            app.post(BULK, body).await
        }
    };
    let release = async {
        start.wait().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        lock.release().await;
    };
    let (a, b, ()) = tokio::join!(
        send(json!({"account_id": "acct_a"})),
        send(json!({"all": true})),
        release
    );
    assert_eq!((a.0.as_u16(), b.0.as_u16()), (202, 202), "{a:?} {b:?}");
    // They overlapped: each looked at records, and one found the other had taken some.
    assert!(
        a.1["matched"].as_u64() > Some(0) && b.1["matched"].as_u64() > Some(0),
        "both requests worked on the records: {a:?} {b:?}"
    );
    let skipped =
        a.1["skipped"].as_array().unwrap().len() + b.1["skipped"].as_array().unwrap().len();
    assert!(
        skipped > 0,
        "the requests raced for the same records: {a:?} {b:?}"
    );
    let mut replayed = ids(&a.1["replayed"]);
    replayed.extend(ids(&b.1["replayed"]));
    replayed.sort();
    let mut expected = record_ids.clone();
    expected.sort();
    assert_eq!(
        replayed, expected,
        "each record replayed by exactly one request"
    );
    // What one request lost to the other it reports as already replayed.
    for (answer, other) in [(&a.1, &b.1), (&b.1, &a.1)] {
        for skipped in answer["skipped"].as_array().unwrap() {
            assert_eq!(skipped["reason"], "already_replayed", "{skipped}");
            assert!(ids(&other["replayed"]).contains(&skipped["id"].as_str().unwrap().to_string()));
        }
    }
    receiver.wait_for(n, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (arrived, twice) = arrivals(&receiver);
    assert_eq!(arrived.len(), n);
    assert!(!twice, "no record delivered twice");
    store.close().await;
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

/// With the broker unreachable, a bulk replay takes nothing and says so: a 503, as for one
/// record, with nothing marked; once the broker is back the same request replays them all.
#[tokio::test]
async fn a_bulk_replay_the_broker_takes_none_of_is_a_503_and_marks_nothing() {
    let proxy = Proxy::to_broker().await;
    let app = spawn_app_with(&["--amqp-url", &proxy.amqp_url(), "--retry-delays", "50ms"]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(503));
    app.subscribe("acct_a", &receiver.url, &["*"]).await;
    for i in 0..3 {
        let body = format!(
            r#"{{"id":"evt_down_{i}","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"acct_a","data":{{"visitor_id":"v"}}}}"#
        );
        app.publish("purchase", body.as_bytes()).await;
    }
    let mut records = app.wait_for_logs("account_id=acct_a", 3).await;
    records.reverse();
    let all_ids = record_ids(&records);

    proxy.cut();
    wait_until("/readyz to say 503", PATIENCE, || async {
        app.get("/readyz").await.0 == 503
    })
    .await;
    let (status, down) = app.post(BULK, json!({"all": true})).await;
    assert_eq!(status, 503, "{down}");
    assert_eq!(down["error"]["code"], "broker_unavailable", "{down}");
    let message = down["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("none was replayed"), "{down}");
    assert_eq!(replayed_count(&app).await, 0);

    proxy.restore();
    wait_until("/readyz to say 200", PATIENCE, || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    receiver.always(Reply::Status(200));
    let (status, up) = app.post(BULK, json!({"all": true})).await;
    assert_eq!(status, 202, "{up}");
    assert_eq!(ids(&up["replayed"]), all_ids, "{up}");
    app.stop().await.unwrap();
}

/// Sets a record's stored payload ($1) by its id ($2).
const STORED_PAYLOAD: &str = "UPDATE delivery_logs SET payload = $1 WHERE id = $2";

/// A record whose row no longer reads back (its payload not JSON) fails alone: a replay names it
/// and goes on to the records after it, and the account's listing leaves it out while its pages
/// still reach every other record. Repaired, it replays.
#[tokio::test]
async fn a_record_that_cannot_be_read_fails_alone_and_replays_and_listings_go_past_it() {
    let n = 5;
    let (app, receiver, store, stored, dir) = app_with_stored_letters(n).await;
    let db = dir.path().join("bulk.db");
    let damaged = stored[1].clone();
    edit_store(&db, STORED_PAYLOAD, &[r#"{"event":"#, &damaged]).await;
    let readable: Vec<String> = stored
        .iter()
        .filter(|id| **id != damaged)
        .cloned()
        .collect();

    // Pages of two, newest first: the damaged record is left out, and no page is lost with it.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/delivery-logs?account_id=acct_a&limit=2".to_string(),
            Some(c) => format!("/v1/delivery-logs?account_id=acct_a&limit=2&cursor={c}"),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        listed.extend(record_ids(page["items"].as_array().unwrap()));
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    let mut newest_first = readable.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    // Asked for by id, it is an error that names it.
    let (status, one) = app.get(&format!("/v1/delivery-logs/{damaged}")).await;
    assert_eq!(status, 500, "{one}");
    let message = one["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&damaged) && message.contains("payload"),
        "{one}"
    );

    let (status, dry) = app
        .post(BULK, json!({"account_id": "acct_a", "dry_run": true}))
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(ids(&dry["replayed"]), readable, "{dry}");
    assert_eq!(dry["failed"].as_array().map(Vec::len), Some(1), "{dry}");
    assert_eq!(dry["failed"][0]["id"], json!(damaged), "{dry}");

    let (status, done) = app.post(BULK, json!({"account_id": "acct_a"})).await;
    assert_eq!(status, 202, "{done}");
    assert_eq!(ids(&done["replayed"]), readable, "{done}");
    assert_eq!(done["failed"][0]["id"], json!(damaged), "{done}");
    let error = done["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot be read") && error.contains("payload"),
        "{done}"
    );
    assert_eq!(
        (&done["more"], done["matched"].as_u64()),
        (&json!(false), Some(n as u64))
    );
    receiver.wait_for(n - 1, PATIENCE).await;
    assert_eq!(store.count_delivery_logs().await.unwrap().not_replayed, 1);

    // Repaired, the record replays like any other.
    edit_store(
        &db,
        STORED_PAYLOAD,
        &[r#"{"event":"purchase","n":1}"#, &damaged],
    )
    .await;
    let (status, again) = app.post(BULK, json!({"account_id": "acct_a"})).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(ids(&again["replayed"]), [damaged], "{again}");
    each_stored_letter_arrives_once(&receiver, n).await;
    store.close().await;
    app.stop().await.unwrap();
}
