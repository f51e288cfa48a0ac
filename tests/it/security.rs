//! Security: the SSRF guard on the API (create and update refuse private targets with a clear
//! 422), secret rotation (the old secret keeps signing next to the new one for the overlap), and
//! no secret in the logs of a whole run.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;
use crate::support::{LOAD_ACCOUNT, Producer, ServiceProcess, event_ids};

#[tokio::test]
async fn private_targets_are_refused_on_create_and_update() {
    let app = spawn_app_with(&["--allow-private-targets", "false"]).await;
    let hostile = [
        "http://127.0.0.1:9/hooks",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost./hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[fd00::1]/",
        "http://100.64.0.1/",
        "http://metadata.google.internal/",
    ];
    for url in hostile {
        let (status, err) = app
            .post(
                "/v1/subscriptions",
                json!({"account_id": "acct_ssrf", "url": url, "events": ["*"]}),
            )
            .await;
        assert_eq!(status, 422, "{url}: {err}");
        assert_eq!(err["error"]["code"], "validation_failed");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("url is not allowed"), "{url}: {message}");
    }
    let (_, list) = app.get("/v1/subscriptions?account_id=acct_ssrf").await;
    assert_eq!(list["items"], json!([]), "nothing was stored");

    // A public literal is accepted; changing it to a private one is refused and changes nothing.
    let sub = app
        .subscribe("acct_ssrf", "https://93.184.216.34/hooks", &["*"])
        .await;
    let path = format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap());
    for url in hostile {
        let (status, err) = app
            .request(Method::PATCH, &path, Some(json!({ "url": url })))
            .await;
        assert_eq!(status, 422, "{url}: {err}");
    }
    let (_, read) = app.get(&path).await;
    assert_eq!(read["url"], "https://93.184.216.34/hooks");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_rotated_secret_signs_next_to_the_new_one_for_the_overlap() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let sub = app
        .subscribe("acct_acme", &receiver.url, &["purchase"])
        .await;
    let id = sub["id"].as_str().unwrap();
    let old = sub["secret"].as_str().unwrap().to_string();
    assert!(sub["previous_secret_expires_at"].is_null());

    // Default overlap (SECRET_ROTATION_OVERLAP = 24 h), no body.
    let resp = app
        .http
        .post(app.url(&format!("/v1/subscriptions/{id}/rotate-secret")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert!(new.starts_with("whsec_") && new != old);
    let until = chrono::DateTime::parse_from_rfc3339(
        rotated["previous_secret_expires_at"].as_str().unwrap(),
    )
    .unwrap();
    let overlap = until.to_utc() - chrono::Utc::now();
    assert!(
        overlap > chrono::Duration::hours(23) && overlap <= chrono::Duration::hours(24),
        "{overlap}"
    );
    let (_, read) = app.get(&format!("/v1/subscriptions/{id}")).await;
    assert!(read.get("secret").is_none(), "{read}");
    assert!(!read.to_string().contains(&old) && !read.to_string().contains(&new));

    app.publish_fixture("purchase").await;
    let during = receiver.wait_for(1, PATIENCE).await.remove(0);
    let signatures: Vec<&str> = during.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(signatures.iter().all(|s| s.starts_with("v1,")));
    assert!(signature_verifies(&new, &during), "the new secret verifies");
    assert!(
        signature_verifies(&old, &during),
        "the old secret still verifies"
    );

    // A second rotation with no overlap retires both earlier secrets at once.
    let (status, again) = app
        .post(
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            json!({"overlap_seconds": 0}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert!(again["previous_secret_expires_at"].is_null());
    let newest = again["secret"].as_str().unwrap();
    app.publish_fixture("purchase").await;
    let after = receiver.wait_for(2, PATIENCE).await.remove(1);
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    assert!(signature_verifies(newest, &after));
    assert!(!signature_verifies(&new, &after) && !signature_verifies(&old, &after));

    // A one-second overlap ends by itself: the expiry reads null afterwards, and one signature.
    let (_, short) = app
        .post(
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            json!({"overlap_seconds": 1}),
        )
        .await;
    assert!(short["previous_secret_expires_at"].is_string(), "{short}");
    wait_until("the one-second overlap to end", PATIENCE, || async {
        let (_, read) = app.get(&format!("/v1/subscriptions/{id}")).await;
        read["previous_secret_expires_at"].is_null()
    })
    .await;
    app.publish_fixture("purchase").await;
    let later = receiver.wait_for(3, PATIENCE).await.remove(2);
    assert_eq!(later.header("webhook-signature").split(' ').count(), 1);
    assert!(signature_verifies(
        short["secret"].as_str().unwrap(),
        &later
    ));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn rotation_requests_are_checked() {
    let app = spawn_app().await;
    let sub = app
        .subscribe("acct_rot", "http://127.0.0.1:9/hooks", &["*"])
        .await;
    let path = format!(
        "/v1/subscriptions/{}/rotate-secret",
        sub["id"].as_str().unwrap()
    );
    for (body, status, needle) in [
        (
            json!({"overlap_seconds": 2_592_001}),
            422,
            "at most 2592000",
        ),
        (json!({"overlap_seconds": -1}), 422, "overlap_seconds"),
        (json!({"overlap": 60}), 422, "unknown field"),
    ] {
        let (got, err) = app.post(&path, body.clone()).await;
        assert_eq!(got, status, "{body}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {err}"
        );
    }
    let resp = app
        .http
        .post(app.url(&path))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, err) = app
        .post("/v1/subscriptions/sub_missing/rotate-secret", json!({}))
        .await;
    assert_eq!(status, 404, "{err}");
    app.stop().await.unwrap();
}

/// A full run through the real binary at `RUST_LOG=debug` (its own crates and every dependency):
/// create, deliver, retry, dead-letter, rotate, replay. Neither the subscription secrets (whole
/// or their key part) nor the admin token may appear anywhere in what it printed.
#[tokio::test]
async fn secrets_never_reach_the_logs() {
    const TOKEN: &str = "admin-token-that-must-not-be-logged";
    let mut service = ServiceProcess::start(&[
        ("RUST_LOG", "debug"),
        ("ADMIN_TOKEN", TOKEN),
        ("RETRY_DELAYS", "100ms,200ms"),
    ])
    .await;
    let ok = Receiver::start().await;
    ok.script(&[Reply::Status(503)]);
    let failing = Receiver::start().await;
    failing.always(Reply::Status(500));
    // The admin API with the token: (status, JSON body or null).
    let api = |method: Method, path: String, body: Option<Value>| {
        let mut request = service
            .http
            .request(method, service.url(&path))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let subscribe = |url: &str| {
        let body = json!({"account_id": LOAD_ACCOUNT, "url": url, "events": ["purchase"]});
        api(Method::POST, "/v1/subscriptions".into(), Some(body))
    };
    let (_, good) = subscribe(&ok.url).await;
    let (_, bad) = subscribe(&failing.url).await;
    let rotate = format!(
        "/v1/subscriptions/{}/rotate-secret",
        good["id"].as_str().unwrap()
    );
    let (_, rotated) = api(Method::POST, rotate, None).await;
    let secrets: Vec<String> = [&good, &bad, &rotated]
        .iter()
        .map(|v| v["secret"].as_str().unwrap().to_string())
        .collect();

    let producer = Producer::connect(&service.exchange).await;
    assert_eq!(producer.publish_events(&event_ids("secrets", 1)).await, 1);
    // The good endpoint: a 503, then a retry that succeeds, signed with both of its secrets.
    let received = ok.wait_for(2, PATIENCE).await;
    verify_signature(&secrets[0], &received[1]);
    verify_signature(&secrets[2], &received[1]);
    // The failing endpoint: three attempts, a dead letter, then a replay of it.
    let deadline = std::time::Instant::now() + PATIENCE;
    let record = loop {
        let path = "/v1/delivery-logs?reason=exhausted".to_string();
        let (_, page) = api(Method::GET, path, None).await;
        if !page["items"][0].is_null() {
            break page["items"][0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exhausted record within {PATIENCE:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let replay = format!(
        "/v1/delivery-logs/{}/replay",
        record["id"].as_str().unwrap()
    );
    assert_eq!(api(Method::POST, replay, None).await.0, 202);
    failing.wait_for(4, PATIENCE).await;

    // Stopped gracefully first, so whatever is logged on the way out is checked too.
    service.stop(PATIENCE).await;
    let logs = service.logs();
    // The run was logged (at debug, with the dependencies' own lines) …
    for expected in [
        "subscription created",
        "subscription secret rotated",
        good["id"].as_str().unwrap(),
        "exhausted",
    ] {
        assert!(
            logs.contains(expected),
            "the logs should mention {expected:?}"
        );
    }
    // … and no secret, nor the key inside it, nor the admin token, is in there.
    for secret in &secrets {
        let key = secret.strip_prefix("whsec_").unwrap();
        assert!(!logs.contains(key), "a subscription secret was logged");
    }
    assert!(!logs.contains(TOKEN), "the admin token was logged");
    println!("secrets checked against {} bytes of debug logs", logs.len());
}
