//! Endpoint health: the automatic-disable rule end to end (with the operator's webhook verified
//! by the stock Standard Webhooks library), per-subscription stats against what the receiver
//! saw, on SQLite and on PostgreSQL; and the adaptive per-endpoint limit against a receiver that
//! throttles, then recovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

const ACCOUNT: &str = "acct_health";

fn purchase(id: &str) -> Vec<u8> {
    json!({
        "id": id,
        "event": "purchase",
        "timestamp": "2026-12-01T10:00:00Z",
        "account_id": ACCOUNT,
        "data": {"visitor_id": "v_1", "amount": 12.5}
    })
    .to_string()
    .into_bytes()
}

/// Everything the receiver saw with `webhook-id` = `id`.
fn with_id(receiver: &Receiver, id: &str) -> Vec<Received> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.header("webhook-id") == id)
        .collect()
}

async fn auto_disable_scenario(database: Option<&str>) {
    let operator = Receiver::start().await;
    let operator_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let endpoint = Receiver::start().await;
    endpoint.always(Reply::Status(500));
    let mut args = vec![
        "--retry-delays",
        "50ms,60ms,70ms",
        "--auto-disable-after",
        "1s",
        "--auto-disable-min-failures",
        "2",
        "--operator-webhook-url",
        &operator.url,
        "--operator-webhook-secret",
        operator_secret,
    ];
    if let Some(url) = database {
        args.extend(["--database-url", url]);
    }
    let app = spawn_app_with(&args).await;
    let sub = app.subscribe(ACCOUNT, &endpoint.url, &["purchase"]).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let secret = sub["secret"].as_str().unwrap().to_string();

    // Two deliveries fail every attempt: the minimum is met, but not the time.
    for n in 1..=2 {
        app.publish("purchase", &purchase(&format!("evt_h{n}")))
            .await;
    }
    app.wait_for_logs("reason=exhausted", 2).await;
    let (_, read) = app.get(&format!("/v1/subscriptions/{id}")).await;
    assert_eq!(read["enabled"], true, "{read}");
    assert_eq!(read["disabled_reason"], Value::Null, "{read}");

    // Past AUTO_DISABLE_AFTER with no success: the next exhausted delivery disables it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.publish("purchase", &purchase("evt_h3")).await;
    app.wait_for_logs("reason=exhausted", 3).await;
    let notices = operator.wait_for(1, PATIENCE).await;
    let notice = &notices[0];
    verify_signature(operator_secret, notice);
    let body: Value = serde_json::from_str(notice.text()).unwrap();
    assert_eq!(body["event"], "endpoint.disabled", "{body}");
    assert!(body["timestamp"].is_string(), "{body}");
    assert_eq!(body["data"]["subscription_id"], id.as_str(), "{body}");
    assert_eq!(body["data"]["account_id"], ACCOUNT, "{body}");
    assert_eq!(body["data"]["reason"], "auto", "{body}");
    assert_eq!(body["data"]["failures"], 3, "{body}");
    assert_eq!(body["data"]["last_status"], 500, "{body}");
    let (_, read) = app.get(&format!("/v1/subscriptions/{id}")).await;
    assert_eq!(read["enabled"], false, "{read}");
    assert_eq!(read["disabled_reason"], "auto", "{read}");
    assert!(read["disabled_at"].is_string(), "{read}");
    assert_metric(
        &app.metrics().await,
        "webhook_subscriptions_auto_disabled_total 1",
    );
    // The dispatcher heard of it (its own announcement, through the control exchange).
    wait_until("the directory to apply the disable", PATIENCE, || async {
        metric_sum(
            &app.metrics().await,
            "webhook_control_messages_total",
            "result=\"applied\"",
        ) >= 1.0
    })
    .await;

    // Its next event is kept, not attempted.
    let attempts_before = endpoint.count();
    app.publish("purchase", &purchase("evt_h4")).await;
    let kept = app
        .wait_for_logs(
            &format!("reason=subscription_disabled&subscription_id={id}"),
            1,
        )
        .await;
    assert_eq!(kept[0]["event_id"], "evt_h4");
    assert_eq!(kept[0]["subscription_id"], id.as_str());
    assert_eq!(endpoint.count(), attempts_before, "not attempted");

    // Stats agree with what the receiver saw: 3 deliveries × 4 attempts, all HTTP 500.
    let stats_path = format!("/v1/subscriptions/{id}/stats");
    wait_until("the stats to count every attempt", PATIENCE, || async {
        app.get(&stats_path).await.1["last_hour"]["attempts"] == json!(endpoint.count())
    })
    .await;
    let (status, stats) = app.get(&stats_path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(endpoint.count(), 12);
    assert_eq!(stats["last_hour"], json!({"attempts": 12, "successes": 0}));
    assert_eq!(stats["last_day"], json!({"attempts": 12, "successes": 0}));
    assert_eq!(stats["last_status"], 500);
    assert_eq!(stats["last_error"], "endpoint answered HTTP 500");
    assert_eq!(stats["last_success_at"], Value::Null);
    assert!(stats["latency_ms"]["p50"].is_u64(), "{stats}");

    // The portal says so, and shows the same figures.
    let user = PortalUser::signed_in(&app, ACCOUNT).await;
    let list = user.get("/portal/integrations").await;
    assert!(
        list.html.contains("Disabled automatically"),
        "{}",
        list.html
    );
    assert!(
        list.html.contains("New events are kept in"),
        "{}",
        list.html
    );
    let edit = user.get(&format!("/portal/integrations/{id}")).await;
    assert!(
        edit.html.contains("12 attempts, 0 succeeded (0.0 %)"),
        "{}",
        edit.html
    );
    assert!(
        edit.html.contains("endpoint answered HTTP 500"),
        "{}",
        edit.html
    );

    // Enabled again: reason and time cleared, the operator told, and the kept event replayed.
    endpoint.always(Reply::Status(204));
    let (status, enabled) = app
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert_eq!(enabled["disabled_reason"], Value::Null, "{enabled}");
    assert_eq!(enabled["disabled_at"], Value::Null, "{enabled}");
    let notices = operator.wait_for(2, PATIENCE).await;
    verify_signature(operator_secret, &notices[1]);
    let body: Value = serde_json::from_str(notices[1].text()).unwrap();
    assert_eq!(body["event"], "endpoint.enabled", "{body}");
    assert_eq!(body["data"]["subscription_id"], id.as_str(), "{body}");
    wait_until("the directory to apply the enable", PATIENCE, || async {
        metric_sum(
            &app.metrics().await,
            "webhook_control_messages_total",
            "result=\"applied\"",
        ) >= 2.0
    })
    .await;
    let record = kept[0]["id"].as_str().unwrap();
    let (status, replay) = app
        .post(&format!("/v1/delivery-logs/{record}/replay"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replay}");
    wait_until("the replay to arrive", PATIENCE, || async {
        !with_id(&endpoint, "evt_h4").is_empty()
    })
    .await;
    let replayed = with_id(&endpoint, "evt_h4");
    assert_eq!(replayed.len(), 1);
    verify_signature(&secret, &replayed[0]);

    // A success shows in the stats: one more attempt, one success, its time, no error.
    wait_until("the stats to count the success", PATIENCE, || async {
        app.get(&stats_path).await.1["last_hour"]["successes"] == json!(1)
    })
    .await;
    let (_, stats) = app.get(&stats_path).await;
    assert_eq!(stats["last_hour"], json!({"attempts": 13, "successes": 1}));
    assert_eq!(stats["last_status"], 204);
    assert_eq!(stats["last_error"], Value::Null);
    assert!(stats["last_success_at"].is_string(), "{stats}");
    let edit = user.get(&format!("/portal/integrations/{id}")).await;
    assert!(
        edit.html.contains("13 attempts, 1 succeeded (7.7 %)"),
        "{}",
        edit.html
    );
    assert!(
        !edit.html.contains("Disabled automatically"),
        "{}",
        edit.html
    );
    // Disabled by hand: reason manual, its time kept when disabled again.
    let path = format!("/v1/subscriptions/{id}");
    let off = json!({"enabled": false});
    let (_, first) = app
        .request(reqwest::Method::PATCH, &path, Some(off.clone()))
        .await;
    assert_eq!(first["disabled_reason"], "manual", "{first}");
    let (_, again) = app.request(reqwest::Method::PATCH, &path, Some(off)).await;
    assert_eq!(again["disabled_at"], first["disabled_at"], "{again}");
    let (status, _) = app.get("/v1/subscriptions/sub_nope/stats").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_that_always_fails_is_disabled_then_enabled_and_its_kept_event_replayed() {
    auto_disable_scenario(None).await;
}

#[tokio::test]
async fn the_automatic_disable_and_the_stats_work_on_postgresql() {
    let db = TempDatabase::create().await;
    auto_disable_scenario(Some(&db.url)).await;
}

/// A receiver that serves `capacity` requests at a time (2 ms each) and answers 429 past that;
/// it records the most requests it had in flight at once, and, with `open` set, takes any number.
#[derive(Clone)]
struct Throttling {
    url: String,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    throttled: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    open: Arc<AtomicBool>,
}

impl Throttling {
    async fn start(capacity: usize) -> Throttling {
        let t = Throttling {
            url: String::new(),
            in_flight: Arc::default(),
            peak: Arc::default(),
            throttled: Arc::default(),
            served: Arc::default(),
            open: Arc::default(),
        };
        let state = t.clone();
        let app = axum::Router::new().fallback(move || {
            let s = state.clone();
            async move {
                let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                s.peak.fetch_max(now, Ordering::SeqCst);
                let answer = if now > capacity && !s.open.load(Ordering::SeqCst) {
                    s.throttled.fetch_add(1, Ordering::SeqCst);
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    s.served.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                };
                s.in_flight.fetch_sub(1, Ordering::SeqCst);
                answer
            }
        });
        Throttling {
            url: serve_receiver(app).await,
            ..t
        }
    }

    /// Starts a new measuring period: the peak from now on.
    fn reset_peak(&self) -> usize {
        self.peak.swap(0, Ordering::SeqCst)
    }
}

#[tokio::test]
async fn the_endpoint_limit_falls_when_the_endpoint_throttles_and_rises_when_it_recovers() {
    let endpoint = Throttling::start(4).await;
    let app = spawn_app_with(&[
        "--max-in-flight-per-endpoint",
        "64",
        "--prefetch",
        "256",
        "--retry-delays",
        "50ms,60ms,70ms",
    ])
    .await;
    app.subscribe(LOAD_ACCOUNT, &endpoint.url, &["purchase"])
        .await;
    let producer = Producer::connect(&app.exchange).await;
    let limits = |page: &str, range: &str| {
        metric_sum(
            page,
            "webhook_endpoint_concurrency_limit",
            &format!("limit=\"{range}\""),
        )
    };

    // Bursts it can only partly take: the limit falls to where it fits.
    let feed = |from: usize, n: usize| {
        let producer = &producer;
        async move {
            let ids: Vec<String> = (from..from + n).map(|i| format!("evt_t{i}")).collect();
            assert_eq!(producer.publish_events(&ids).await, n);
        }
    };
    feed(0, 400).await;
    wait_until("the limit to fall to 8 or below", PATIENCE, || async {
        let page = app.metrics().await;
        limits(&page, "1") + limits(&page, "2-3") + limits(&page, "4-7") >= 1.0
    })
    .await;
    assert!(
        endpoint.throttled.load(Ordering::SeqCst) > 0,
        "it did throttle"
    );
    endpoint.reset_peak();
    feed(400, 400).await;
    wait_until(
        "every event to be delivered or given up",
        PATIENCE * 2,
        || async {
            let page = app.metrics().await;
            metric_sum(
                &page,
                "webhook_delivery_attempts_total",
                "outcome=\"success\"",
            ) + metric_sum(&page, "webhook_dead_letters_total", "reason=\"exhausted\"")
                >= 800.0
        },
    )
    .await;
    let peak_throttled = endpoint.reset_peak();
    assert!(
        peak_throttled <= 16,
        "against a receiver that takes 4, at most {peak_throttled} in flight"
    );

    // Recovered: it takes everything, and the limit climbs back to the maximum (+1/limit per
    // success, ~2,000 successes from 4 to 64). Fed at a pace (20 events per 50 ms), not as a
    // flood: this receiver runs on the test's own thread beside the service, so a flood makes
    // it truly slow once the machine is busy (with four copies of this test at once, 60–90 ms
    // at 30–55 in flight, CPU-bound) and the limit rightly settles below 64.
    endpoint.open.store(true, Ordering::SeqCst);
    let mut next = 800;
    wait_until_every(
        "the limit to climb back to 64",
        PATIENCE * 3,
        Duration::from_millis(50),
        || {
            let batch = next;
            next += 20;
            let app = &app;
            let feed = &feed;
            async move {
                feed(batch, 20).await;
                limits(&app.metrics().await, "64-127") >= 1.0
            }
        },
    )
    .await;
    let page = app.metrics().await;
    assert_eq!(
        limits(&page, "4-7") + limits(&page, "1") + limits(&page, "2-3"),
        0.0
    );
    app.stop().await.unwrap();
}
