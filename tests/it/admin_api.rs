//! The admin API: subscription CRUD with validation, the secret shown once, JSON errors, the
//! bearer token, pagination, and changes applied to matching at once.

use std::time::Duration;

use axum::http::StatusCode;
use reqwest::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn subscriptions_can_be_created_read_listed_changed_and_deleted() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;

    let created = app
        .subscribe("acct_acme", &receiver.url, &["purchase", "identify"])
        .await;
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("sub_"));
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["events"], json!(["purchase", "identify"]));
    assert_eq!(created["enabled"], true);
    assert!(created["description"].is_null());
    assert_eq!(created["created_at"], created["updated_at"]);

    let (status, read) = app.get(&format!("/v1/subscriptions/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        read.get("secret").is_none(),
        "the secret is shown on create only: {read}"
    );
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    assert_eq!(read, without_secret);

    app.subscribe("acct_other", &receiver.url, &["*"]).await;
    let (_, list) = app.get("/v1/subscriptions?account_id=acct_acme").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_null());
    assert!(list["items"][0].get("secret").is_none());

    let (status, changed) = app
        .request(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"events": ["*"], "description": "CRM sync"})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["events"], json!(["*"]));
    assert_eq!(changed["description"], "CRM sync");
    assert_eq!(changed["url"], receiver.url);
    assert!(changed["updated_at"].as_str() >= created["updated_at"].as_str());

    // The change applies to matching at once: goal_achieved was not selected before.
    app.publish_fixture("goal_achieved").await;
    receiver.wait_for(1, PATIENCE).await;

    let (status, cleared) = app
        .request(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"description": null, "enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(cleared["description"].is_null());
    assert_eq!(cleared["enabled"], false);
    // Disabled means no deliveries…
    app.publish_fixture("purchase").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 1, "a disabled subscription gets nothing");
    // …and enabled again, deliveries resume: the subscription is live when it is deleted below,
    // so only the delete can stop the next delivery.
    let (status, enabled) = app
        .request(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(enabled["enabled"], true);
    app.publish_fixture("identify").await;
    receiver.wait_for(2, PATIENCE).await;

    let (status, body) = app
        .request(Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(body.is_null());
    let (status, body) = app.get(&format!("/v1/subscriptions/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = app
        .request(Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 404);

    // Deleted means no more deliveries (acct_other's subscription is another account).
    app.publish_fixture("purchase").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 2);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"account_id": "a", "url": "not a url", "events": ["*"]}),
            422,
            "absolute URL",
        ),
        (
            json!({"account_id": "a", "url": "ftp://x.example/", "events": ["*"]}),
            422,
            "http or https",
        ),
        (
            json!({"account_id": "", "url": "https://x.example/", "events": ["*"]}),
            422,
            "account_id",
        ),
        (
            json!({"account_id": "a", "url": "https://x.example/", "events": ["refund"]}),
            422,
            "refund",
        ),
        (
            json!({"account_id": "a", "url": "https://x.example/", "events": []}),
            422,
            "at least one",
        ),
        (
            json!({"account_id": "a", "url": "https://x.example/"}),
            422,
            "events",
        ),
        (
            json!({"account_id": "a", "url": "https://x.example/", "events": "*"}),
            422,
            "events",
        ),
        (
            json!({"account_id": "a", "url": "https://x.example/", "events": ["*"], "secret": "x"}),
            422,
            "secret",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, err) = app.post("/v1/subscriptions", body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body} → {err}");
        assert_eq!(err["error"]["code"], "validation_failed");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{body}: message {message:?} should mention {needle:?}"
        );
    }

    let raw = app
        .http
        .post(app.url("/v1/subscriptions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let err: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(err["error"]["code"], "bad_request");

    let huge = json!({"account_id": "a", "url": "https://x.example/", "events": ["*"], "description": "x".repeat(100_000)});
    let (status, err) = app.post("/v1/subscriptions", huge).await;
    assert_eq!(status, 413, "{err}");

    let (status, err) = app.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found");

    let (status, err) = app
        .request(Method::PATCH, "/v1/subscriptions/sub_x", Some(json!({})))
        .await;
    assert_eq!(status, 422, "{err}");
    let (status, err) = app
        .request(
            Method::PATCH,
            "/v1/subscriptions/sub_x",
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = app
        .request(
            Method::PATCH,
            "/v1/subscriptions/sub_x",
            Some(json!({"account_id": "b"})),
        )
        .await;
    assert_eq!(status, 422, "account_id cannot change: {err}");

    let (status, err) = app.get("/v1/delivery-logs?limit=lots").await;
    assert_eq!(status, 400, "{err}");
    for path in ["/v1/delivery-logs?limit=0", "/v1/subscriptions?limit=501"] {
        let (status, err) = app.get(path).await;
        assert_eq!(status, 400, "{path}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("between 1 and 500"), "{path}: {message}");
    }

    let (status, err) = app.request(Method::PUT, "/v1/subscriptions", None).await;
    assert_eq!(status, 405, "{err}");
    assert_eq!(err["error"]["code"], "method_not_allowed");
    app.stop().await.unwrap();
}

/// A body is a JSON object: serde would read a struct from an array of its fields in order,
/// so `["acct", "https://…", ["*"]]` must not create a subscription. An optional body may be
/// empty or `null` (the OpenAPI document says so).
#[tokio::test]
async fn bodies_must_be_json_objects() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let sub = app.subscribe("acct_a", &receiver.url, &["purchase"]).await;
    let id = sub["id"].as_str().unwrap();
    let send = |method: Method, path: String, content_type: &'static str, body: &'static str| {
        let req = app
            .http
            .request(method, app.url(&path))
            .header("content-type", content_type)
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let arrays = [
        (
            Method::POST,
            "/v1/subscriptions".to_string(),
            r#"["acct_a", "https://x.example/", ["*"]]"#,
        ),
        (
            Method::PATCH,
            format!("/v1/subscriptions/{id}"),
            "[null, null, false]",
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{id}/rotate-secret"),
            "[]",
        ),
        (Method::POST, format!("/v1/subscriptions/{id}/test"), "[]"),
        (
            Method::POST,
            "/v1/delivery-logs/replay".to_string(),
            r#"[null, null, null, null, null, null, [], true]"#,
        ),
        (Method::POST, "/v1/subscriptions".to_string(), "42"),
    ];
    for (method, path, body) in arrays {
        let (status, err) = send(method.clone(), path.clone(), "application/json", body).await;
        assert_eq!(
            (status, &err["error"]["message"]),
            (422, &json!("the body must be a JSON object")),
            "{method} {path} {body}"
        );
    }
    let (_, subs) = app.get("/v1/subscriptions?account_id=acct_a").await;
    assert_eq!(
        subs["items"].as_array().unwrap().len(),
        1,
        "nothing created: {subs}"
    );
    let (_, read) = app.get(&format!("/v1/subscriptions/{id}")).await;
    assert_eq!(read["enabled"], true, "nothing changed: {read}");

    let (status, rotated) = send(
        Method::POST,
        format!("/v1/subscriptions/{id}/rotate-secret"),
        "application/json",
        "null",
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let (status, sent) = send(
        Method::POST,
        format!("/v1/subscriptions/{id}/test"),
        "application/json",
        " null ",
    )
    .await;
    assert_eq!(
        (status, &sent["event"]),
        (202, &json!("purchase")),
        "{sent}"
    );

    let (status, err) = send(
        Method::POST,
        "/v1/subscriptions".to_string(),
        "text/plain",
        r#"{"account_id": "a", "url": "https://x.example/", "events": ["*"]}"#,
    )
    .await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (400, &json!("bad_request")),
        "{err}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn lists_page_with_a_cursor() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let sub = app
            .subscribe("acct_page", &format!("https://example.com/{n}"), &["*"])
            .await;
        ids.push(sub["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut path = "/v1/subscriptions?account_id=acct_page&limit=2".to_string();
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|s| s["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/v1/subscriptions?account_id=acct_page&limit=2&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(seen, ids, "every subscription once, in creation order");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_guards_v1_but_not_metrics_or_health() {
    let token = "test-token-0123456789abcdef";
    let app = spawn_app_with(&["--admin-token", token]).await;
    let (status, err) = app.get("/v1/subscriptions").await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "unauthorized");
    let wrong = app
        .http
        .get(app.url("/v1/subscriptions"))
        .bearer_auth("test-token-0123456789abcdeX")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .http
        .get(app.url("/v1/subscriptions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    for open in ["/metrics", "/healthz", "/readyz"] {
        let resp = app.http.get(app.url(open)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{open}");
    }
    app.stop().await.unwrap();
}

/// An account has at most `MAX_SUBSCRIPTIONS_PER_ACCOUNT` subscriptions: one more is a 409
/// that says why, other accounts are not affected, a deletion makes room, and creates racing
/// for the last places do not get past it.
#[tokio::test]
async fn an_account_has_at_most_its_limit_of_subscriptions() {
    let app = spawn_app_with(&["--max-subscriptions-per-account", "2"]).await;
    let first = app
        .subscribe("acct_a", "https://example.com/a/1", &["purchase"])
        .await;
    app.subscribe("acct_a", "https://example.com/a/2", &["purchase"])
        .await;
    let (status, refused) = app
        .post(
            "/v1/subscriptions",
            json!({"account_id": "acct_a", "url": "https://example.com/a/3", "events": ["purchase"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "subscription_limit_reached");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("acct_a")
            && message.contains(" 2 ")
            && message.contains("MAX_SUBSCRIPTIONS_PER_ACCOUNT"),
        "{message}"
    );
    let (_, listed) = app.get("/v1/subscriptions?account_id=acct_a").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    // Another account has its own two.
    app.subscribe("acct_b", "https://example.com/b/1", &["purchase"])
        .await;
    // A deletion makes room for one.
    let gone = format!("/v1/subscriptions/{}", first["id"].as_str().unwrap());
    let (status, _) = app.request(Method::DELETE, &gone, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.subscribe("acct_a", "https://example.com/a/3", &["purchase"])
        .await;

    // Eight at once for a new account: two get in.
    let (statuses, codes) = create_at_once(&app.http, &app.url(""), "acct_race", 8).await;
    assert_eq!(statuses, [201, 201, 409, 409, 409, 409, 409, 409]);
    assert!(
        codes.iter().all(|c| c == "subscription_limit_reached"),
        "{codes:?}"
    );
    let (_, listed) = app.get("/v1/subscriptions?account_id=acct_race").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    app.stop().await.unwrap();
}
