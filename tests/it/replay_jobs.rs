//! `/v1/replay-jobs`: a bulk replay in the background — 202 and a `Location` at once, progress
//! by `GET`, the rate it is held to, cancel (the rest stays replayable), bad input refused.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const JOBS: &str = "/v1/replay-jobs";

/// `GET path`: the status and the JSON answer.
async fn get(service: &ServiceProcess, path: &str) -> (u16, Value) {
    let resp = service.http.get(service.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn job(service: &ServiceProcess, id: &str) -> Value {
    let (status, job) = get(service, &format!("{JOBS}/{id}")).await;
    assert_eq!(status, 200, "{job}");
    job
}

/// Polls the job until it leaves `running`; every state seen on the way.
async fn until_ended(service: &ServiceProcess, id: &str) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let now = job(service, id).await;
        seen.push(now.clone());
        if now["state"] != "running" {
            return (now, seen);
        }
        assert!(Instant::now() < deadline, "job still running: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_job_replays_its_selection_in_the_background_and_reports_its_progress() {
    let Replayable {
        service, receiver, ..
    } = Replayable::start("acct_job", 600).await;
    let resp = service
        .http
        .post(service.url(JOBS))
        .json(&json!({"account_id": "acct_job", "rate": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let started: Value = resp.json().await.unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("{JOBS}/{id}"));
    assert_eq!(started["state"], "running");
    assert_eq!(started["rate"], 300);
    assert_eq!(started["selection"], json!({"account_id": "acct_job"}));

    // At 300 a second, 600 records take two seconds: progress is seen on the way.
    let (ended, seen) = until_ended(&service, &id).await;
    assert_eq!(ended["state"], "done", "{ended}");
    assert_eq!(ended["matched"], 600);
    assert_eq!(ended["replayed"], 600);
    assert_eq!(ended["skipped"], 0);
    assert_eq!(ended["failed"], 0);
    assert!(ended["finished_at"].is_string());
    assert!(
        seen.iter().any(|j| {
            let replayed = j["replayed"].as_i64().unwrap();
            j["state"] == "running" && replayed > 0 && replayed < 600
        }),
        "progress while running: {seen:?}"
    );
    receiver.wait_distinct(600, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.total(), 600, "each record delivered once");

    let (_, list) = get(&service, JOBS).await;
    assert_eq!(list["items"][0]["id"], id.as_str());
    // Nothing left: a second job finds nothing and is done at once.
    let (status, second) = service
        .post_json(JOBS, json!({"account_id": "acct_job"}))
        .await;
    assert_eq!(status, 202);
    let (ended, _) = until_ended(&service, second["id"].as_str().unwrap()).await;
    assert_eq!(
        (ended["state"].as_str(), ended["replayed"].as_i64()),
        (Some("done"), Some(0))
    );
    // A finished job cannot be cancelled.
    let (status, body) = service
        .post_json(&format!("{JOBS}/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "job_ended");
}

#[tokio::test]
async fn a_cancelled_job_stops_and_what_it_did_not_reach_stays_replayable() {
    let Replayable {
        service, receiver, ..
    } = Replayable::start("acct_cancel", 400).await;
    let (status, started) = service
        .post_json(JOBS, json!({"account_id": "acct_cancel", "rate": 50}))
        .await;
    assert_eq!(status, 202);
    let id = started["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, asked) = service
        .post_json(&format!("{JOBS}/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 202, "{asked}");
    let (ended, _) = until_ended(&service, &id).await;
    assert_eq!(ended["state"], "cancelled", "{ended}");
    let replayed = ended["replayed"].as_i64().unwrap() as usize;
    assert!(replayed > 0 && replayed < 400, "{ended}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.distinct(),
        replayed,
        "what it reports is what was sent"
    );

    // The rest, by a second job: every record delivered exactly once over both.
    let (_, rest) = service
        .post_json(JOBS, json!({"account_id": "acct_cancel"}))
        .await;
    let (ended, _) = until_ended(&service, rest["id"].as_str().unwrap()).await;
    assert_eq!(ended["state"], "done");
    assert_eq!(ended["replayed"].as_i64().unwrap() as usize, 400 - replayed);
    receiver.wait_distinct(400, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.total(), 400);
}

#[tokio::test]
async fn bad_job_requests_are_refused_with_the_reason() {
    let service = ServiceProcess::start(&[]).await;
    // The documented request has every field the job takes.
    let (_, doc) = get(&service, "/openapi.json").await;
    let fields = &doc["components"]["schemas"]["ReplayJobRequest"]["properties"];
    for field in ["account_id", "since", "ids", "all", "rate"] {
        assert!(fields[field].is_object(), "{field} documented: {fields}");
    }
    for (body, says) in [
        (json!({}), "at least one filter"),
        (
            json!({"all": true, "rate": 0}),
            "rate must be between 1 and 1000000",
        ),
        (json!({"all": true, "speed": 5}), "unknown field"),
        (json!({"since": "soonish"}), "\"soonish\" is not a time"),
    ] {
        let (status, answer) = service.post_json(JOBS, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let (status, _) = get(&service, &format!("{JOBS}/rj_nothing")).await;
    assert_eq!(status, 404);
    let (status, _) = service
        .post_json(&format!("{JOBS}/rj_nothing/cancel"), json!({}))
        .await;
    assert_eq!(status, 404);
}
