//! Security: the SSRF guard on the API (create and update refuse private targets with a clear
//! 422) and secret rotation (the old secret keeps signing next to the new one for the overlap).

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::helpers::*;

/// Whether `secret` verifies `received` with the stock Standard Webhooks library.
fn verifies(secret: &str, received: &Received) -> bool {
    let wh = standardwebhooks::Webhook::new(secret).expect("secret parses");
    let mut headers = HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, received.header(name).parse().expect("header value"));
    }
    wh.verify(&received.body, &headers).is_ok()
}

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
    assert!(verifies(&new, &during), "the new secret verifies");
    assert!(verifies(&old, &during), "the old secret still verifies");

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
    assert!(verifies(newest, &after));
    assert!(!verifies(&new, &after) && !verifies(&old, &after));
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
