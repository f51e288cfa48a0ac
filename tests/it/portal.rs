//! The customer portal over plain HTTP: portal links (API and CLI), sessions, one account's
//! walls, CSRF, escaping, the same validation as the API. `portal_browser.rs` drives the same
//! pages in a real browser.

use axum::http::StatusCode;
use serde_json::{Value, json};
use webhook_dispatcher::portal::PortalKey;

use crate::support::*;

const PORTAL_KEY: &str = "portal-key-for-tests-0123456789abcdef";

#[tokio::test]
async fn portal_links_are_issued_for_one_account_and_checked() {
    let app = spawn_app().await;
    let before = chrono::Utc::now();
    let (status, link) = app
        .post("/v1/portal-links", json!({"account_id": "acct_a"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&app.url("/portal/login?token=v1.")),
        "the link points at PUBLIC_URL (default: the listen address): {url}"
    );
    assert_eq!(link["account_id"], "acct_a");
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(link["expires_at"].as_str().unwrap()).unwrap();
    let lifetime = (expires_at.with_timezone(&chrono::Utc) - before).num_seconds();
    assert!(
        (3599..=3601).contains(&lifetime),
        "default lifetime 3600 s, got {lifetime}"
    );

    let (status, short) = app
        .post(
            "/v1/portal-links",
            json!({"account_id": "acct_a", "expires_in": 60}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{short}");
    for (body, says) in [
        (
            json!({"account_id": "acct_a", "expires_in": 59}),
            "between 60 and 86400",
        ),
        (
            json!({"account_id": "acct_a", "expires_in": 86401}),
            "between 60 and 86400",
        ),
        (json!({"account_id": " acct_a"}), "white space"),
        (json!({"account_id": ""}), "account_id"),
        (
            json!({"account_id": "acct_a", "scope": "all"}),
            "unknown field",
        ),
        (json!({"expires_in": 60}), "account_id"),
    ] {
        let (status, error) = app.post("/v1/portal-links", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_link_starts_a_session_and_leaves_the_address_bar() {
    let app = spawn_app_with(&["--portal-key", PORTAL_KEY]).await;
    let user = PortalUser::new(&app);
    assert_eq!(
        user.get("/portal/integrations").await.status,
        StatusCode::UNAUTHORIZED,
        "no session yet"
    );
    let link = portal_link(&app, "acct_a").await;
    let opened = user.open(&link).await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER);
    assert_eq!(opened.location.as_deref(), Some("/portal/integrations"));
    let cookie = opened.header("set-cookie");
    for attribute in [
        "wd_portal=v1.",
        "Path=/portal",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "no Secure on a plain-http PUBLIC_URL: {cookie}"
    );
    let page = user.get("/portal/integrations").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("<h1>Integrations</h1>") && page.html.contains("acct_a"));
    for header in [
        "content-security-policy",
        "cache-control",
        "referrer-policy",
    ] {
        assert!(!page.header(header).is_empty(), "{header}");
    }
    assert!(
        !page
            .header("content-security-policy")
            .contains("script-src")
    );
    assert!(
        page.header("content-security-policy")
            .starts_with("default-src 'none'")
    );

    // Expired and tampered links open nothing and show nothing of the account.
    let key = PortalKey::new(PORTAL_KEY.as_bytes().to_vec());
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let expired = format!(
        "{}?token={}",
        app.url("/portal/login"),
        key.link("acct_a", past)
    );
    let stranger = PortalUser::new(&app);
    let page = stranger.open(&expired).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.html.contains("This link has expired") && !page.html.contains("acct_a"));
    assert!(page.header("set-cookie").is_empty());
    let token = link.split("token=").nth(1).unwrap();
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[1] = "YWNjdF9i".into(); // acct_b
    for tampered in [
        parts.join("."),
        format!("{token}x"),
        String::new(),
        "v1.a.b".into(),
    ] {
        let page = stranger
            .open(&format!("{}?token={tampered}", app.url("/portal/login")))
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{tampered}");
        assert!(page.html.contains("This link is not valid"), "{tampered}");
        assert!(page.header("set-cookie").is_empty());
    }
    let other_key = PortalKey::new(b"another-key-another-key-another-key".to_vec());
    let forged = other_key.link("acct_a", chrono::Utc::now() + chrono::Duration::hours(1));
    let page = stranger
        .open(&format!("{}?token={forged}", app.url("/portal/login")))
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(
        stranger.get("/portal/integrations").await.status,
        StatusCode::UNAUTHORIZED
    );

    // Signing out ends the cookie.
    let signed_out = user.submit("/portal/logout", &[]).await;
    assert_eq!(signed_out.status, StatusCode::OK);
    assert!(signed_out.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(
        user.get("/portal/integrations").await.status,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_signed_out_session_is_refused_even_from_a_copy_of_its_cookie() {
    let app = spawn_app().await;
    let user = PortalUser::signed_in(&app, "acct_a").await;
    // Someone else holds a copy of the cookie, and a form's CSRF token from before.
    let copied = user.copy();
    let copied_csrf = copied.csrf().await;
    let elsewhere = PortalUser::signed_in(&app, "acct_a").await;

    let signed_out = user.submit("/portal/logout", &[]).await;
    assert_eq!(signed_out.status, StatusCode::OK, "{}", signed_out.html);
    assert!(signed_out.html.contains("Signed out"));
    let refused = copied.get("/portal/integrations").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.html);
    assert!(refused.html.contains("Your session has ended") && !refused.html.contains("acct_a"));
    let change = copied
        .post(
            "/portal/integrations",
            &[
                ("csrf", copied_csrf.as_str()),
                ("url", "https://attacker.example/after-sign-out"),
                ("events", "purchase"),
            ],
        )
        .await;
    assert_eq!(change.status, StatusCode::UNAUTHORIZED, "{}", change.html);

    // Another session of the same account goes on (signing out ends one session, not all),
    // and nothing was added through the copy.
    let list = elsewhere.get("/portal/integrations").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(!list.html.contains("after-sign-out"), "{}", list.html);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_sign_out_the_store_cannot_record_says_so_and_keeps_the_session() {
    let app = spawn_app().await;
    let user = PortalUser::signed_in(&app, "acct_a").await;
    let copied = user.copy();
    // A writer holds the store (SQLite's write lock): the sign-out cannot be recorded, so it
    // must not claim the session has ended — a copy of the cookie would still work.
    let lock = StoreLock::take(&app.db_path()).await;
    let failed = user.submit("/portal/logout", &[]).await;
    assert_eq!(
        failed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        failed.html
    );
    assert!(
        failed.html.contains("Signing out did not complete"),
        "{}",
        failed.html
    );
    assert!(
        failed.header("set-cookie").is_empty(),
        "the browser keeps its cookie: {}",
        failed.header("set-cookie")
    );
    assert_eq!(
        user.get("/portal/integrations").await.status,
        StatusCode::OK
    );

    // The store back, signing out again works, and ends the copy too.
    lock.release().await;
    let signed_out = user.submit("/portal/logout", &[]).await;
    assert_eq!(signed_out.status, StatusCode::OK, "{}", signed_out.html);
    assert_eq!(
        copied.get("/portal/integrations").await.status,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn behind_https_the_session_cookie_is_secure() {
    // Published beyond this machine: the token and the portal key are required.
    let token = "test-token-0123456789abcdef";
    let app = spawn_app_with(&[
        "--public-url",
        "https://hooks.example.com",
        "--admin-token",
        token,
        "--portal-key",
        "portal-key-0123456789abcdef-0123456789",
    ])
    .await;
    let minted: Value = app
        .http
        .post(app.url("/v1/portal-links"))
        .bearer_auth(token)
        .json(&json!({ "account_id": "acct_a" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = minted["url"].as_str().expect("a url").to_string();
    let path = link
        .strip_prefix("https://hooks.example.com")
        .unwrap_or_else(|| panic!("the link uses PUBLIC_URL: {link}"));
    let opened = PortalUser::new(&app).get(path).await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER);
    let cookie = opened.header("set-cookie");
    assert!(
        cookie.ends_with("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_link_clicked_on_another_site_reloads_once_to_bring_its_strict_cookie() {
    let app = spawn_app().await;
    let user = PortalUser::new(&app);
    // No session and a cross-site navigation: a same-site reload, once.
    let arrival = user.get("/portal/integrations?done=created").await;
    assert_eq!(
        arrival.status,
        StatusCode::UNAUTHORIZED,
        "a same-site request is not reloaded"
    );
    let request = reqwest::Client::new()
        .get(app.url("/portal/integrations?done=created"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(request.status(), StatusCode::OK);
    assert_eq!(
        request.headers()["refresh"],
        "0; url=/portal/integrations?done=created&again"
    );
    let again = reqwest::Client::new()
        .get(app.url("/portal/integrations?done=created&again"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED, "never a loop");
    app.stop().await.unwrap();
}

/// Subscription `id` as the admin API reads it.
async fn subscription(app: &TestApp, id: &str) -> Value {
    let (status, sub) = app.get(&format!("/v1/subscriptions/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{sub}");
    sub
}

#[tokio::test]
async fn an_account_sees_and_changes_only_its_own() {
    let app = spawn_app_with(&["--retry-delays", "50ms"]).await;
    let failing = Receiver::start().await;
    failing.always(Reply::Status(503));
    let a_sub = app.subscribe("acct_a", &failing.url, &["purchase"]).await;
    let a_id = a_sub["id"].as_str().unwrap().to_string();
    let b_receiver = Receiver::start().await;
    let b_sub = app
        .subscribe("acct_b", &b_receiver.url, &["identify"])
        .await;
    let b_id = b_sub["id"].as_str().unwrap().to_string();
    app.publish(
        "purchase",
        br#"{"id":"evt_wall_1","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"acct_a","data":{"visitor_id":"v_secret_visitor"}}"#,
    )
    .await;
    let records = app.wait_for_logs("account_id=acct_a", 1).await;
    let record_id = records[0]["id"].as_str().unwrap().to_string();

    let a_before = subscription(&app, &a_id).await;
    let a = PortalUser::signed_in(&app, "acct_a").await;
    let b = PortalUser::signed_in(&app, "acct_b").await;
    // A sees its own.
    let a_list = a.get("/portal/integrations").await;
    assert!(a_list.html.contains(&failing.url) && !a_list.html.contains(&b_receiver.url));
    let a_logs = a.get("/portal/delivery-logs").await;
    assert!(a_logs.html.contains(&record_id), "{}", a_logs.html);
    assert_eq!(
        a.get(&format!("/portal/delivery-logs/{record_id}"))
            .await
            .status,
        StatusCode::OK
    );

    // B: every page A could open, every change A could make, on A's ids: 404, nothing shown,
    // nothing changed.
    let b_list = b.get("/portal/integrations").await;
    assert!(b_list.html.contains(&b_receiver.url) && !b_list.html.contains(&failing.url));
    let b_logs = b.get("/portal/delivery-logs").await;
    assert_eq!(b_logs.status, StatusCode::OK);
    assert!(!b_logs.html.contains(&record_id) && b_logs.html.contains("No records match"));
    let b_filtered = b
        .get(&format!("/portal/delivery-logs?endpoint={a_id}"))
        .await;
    assert!(!b_filtered.html.contains(&record_id) && !b_filtered.html.contains(&failing.url));
    for path in [
        format!("/portal/integrations/{a_id}"),
        format!("/portal/integrations/{a_id}/delete"),
        format!("/portal/delivery-logs/{record_id}"),
    ] {
        let page = b.get(&path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "GET {path}");
        assert!(
            !page.html.contains(&failing.url) && !page.html.contains("v_secret_visitor"),
            "GET {path}"
        );
    }
    let b_csrf = b.csrf().await;
    for (path, fields) in [
        (
            format!("/portal/integrations/{a_id}"),
            vec![
                ("url", "https://attacker.example/x"),
                ("events", "purchase"),
            ],
        ),
        (format!("/portal/integrations/{a_id}/disable"), vec![]),
        (format!("/portal/integrations/{a_id}/delete"), vec![]),
        (format!("/portal/integrations/{a_id}/test"), vec![]),
        (format!("/portal/integrations/{a_id}/rotate"), vec![]),
        (format!("/portal/integrations/{a_id}/secret"), vec![]),
        (format!("/portal/delivery-logs/{record_id}/replay"), vec![]),
    ] {
        let mut all = vec![("csrf", b_csrf.as_str())];
        all.extend(fields);
        let page = b.post(&path, &all).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "POST {path}");
        assert!(
            !page.html.contains(a_sub["secret"].as_str().unwrap()),
            "POST {path}"
        );
    }
    // "Replay all shown" with A's endpoint as the filter replays nothing of A's.
    let bulk = b
        .post(
            "/portal/delivery-logs/replay",
            &[("csrf", &b_csrf), ("endpoint", &a_id)],
        )
        .await;
    assert!(bulk.html.contains("Replayed 0 deliveries"), "{}", bulk.html);
    assert_eq!(
        subscription(&app, &a_id).await,
        a_before,
        "A's subscription is unchanged"
    );
    let (_, record) = app.get(&format!("/v1/delivery-logs/{record_id}")).await;
    assert!(
        record["replayed_at"].is_null(),
        "B did not replay A's record: {record}"
    );
    // B's own subscription is untouched by all that, too.
    assert_eq!(
        subscription(&app, &b_id).await["url"],
        b_receiver.url.as_str()
    );

    // A record of A's that no longer reads back (its stored payload damaged) is, to B, the same
    // 404 as a record that does not exist: the page must not tell B that the id is taken. A
    // gets the error, naming the record.
    edit_store(
        &app.db_path(),
        "UPDATE delivery_logs SET payload = $1 WHERE id = $2",
        &[r#"{"event":"#, &record_id],
    )
    .await;
    let missing = b.get("/portal/delivery-logs/dl_no_such_record").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    for path in [
        format!("/portal/delivery-logs/{record_id}"),
        format!("/portal/delivery-logs/{record_id}/replay"),
    ] {
        let page = if path.ends_with("/replay") {
            b.post(&path, &[("csrf", b_csrf.as_str())]).await
        } else {
            b.get(&path).await
        };
        assert_eq!(page.status, StatusCode::NOT_FOUND, "B: {path}");
        assert_eq!(
            main_text(&page.html),
            main_text(&missing.html),
            "B: {path} reads as a missing record"
        );
    }
    let own = a.get(&format!("/portal/delivery-logs/{record_id}")).await;
    assert_eq!(own.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(own.html.contains(&record_id), "{}", own.html);
    app.stop().await.unwrap();
}

/// A page's `<main>`, the part that differs from one answer to another.
fn main_text(html: &str) -> &str {
    let start = html.find("<main").expect("a <main>");
    let end = html.find("</main>").expect("a </main>");
    &html[start..end]
}

#[tokio::test]
async fn every_change_needs_the_sessions_csrf_token() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let sub = app.subscribe("acct_a", &receiver.url, &["purchase"]).await;
    let id = sub["id"].as_str().unwrap();
    let user = PortalUser::signed_in(&app, "acct_a").await;
    let other_session = PortalUser::signed_in(&app, "acct_a").await;
    let foreign = other_session.csrf().await;
    let fields = [
        ("url", "https://example.com/changed"),
        ("events", "identify"),
    ];
    for csrf in [None, Some(""), Some("x"), Some(foreign.as_str())] {
        for (path, with_fields) in [
            ("/portal/integrations".to_string(), true),
            (format!("/portal/integrations/{id}"), true),
            (format!("/portal/integrations/{id}/disable"), false),
            (format!("/portal/integrations/{id}/delete"), false),
            (format!("/portal/integrations/{id}/rotate"), false),
            (format!("/portal/integrations/{id}/secret"), false),
            (format!("/portal/integrations/{id}/test"), false),
            ("/portal/delivery-logs/replay".to_string(), false),
            ("/portal/logout".to_string(), false),
        ] {
            let mut all: Vec<(&str, &str)> = csrf.map(|c| vec![("csrf", c)]).unwrap_or_default();
            if with_fields {
                all.extend(fields);
            }
            let page = user.post(&path, &all).await;
            assert_eq!(
                page.status,
                StatusCode::FORBIDDEN,
                "POST {path} with csrf {csrf:?}"
            );
            assert!(page.html.contains("This form has expired"), "POST {path}");
        }
    }
    let (_, list) = app.get("/v1/subscriptions?account_id=acct_a").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "nothing was created"
    );
    let read = subscription(&app, id).await;
    assert_eq!(read["url"], receiver.url.as_str());
    assert_eq!(read["enabled"], true);
    assert_eq!(receiver.count(), 0, "no test event was sent");
    // The session's own token goes through.
    let page = user
        .submit(&format!("/portal/integrations/{id}/disable"), &[])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(subscription(&app, id).await["enabled"], false);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn markup_in_a_description_or_url_is_shown_as_text() {
    let app = spawn_app().await;
    let (status, sub) = app
        .post(
            "/v1/subscriptions",
            json!({
                "account_id": "acct_a",
                "url": "https://example.com/hooks?q=\"><script>alert(1)</script>",
                "events": ["purchase"],
                "description": "<script>alert('x')</script><img src=x onerror=alert(2)> & \"quotes\"",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    let user = PortalUser::signed_in(&app, "acct_a").await;
    let id = sub["id"].as_str().unwrap();
    for path in [
        "/portal/integrations".to_string(),
        format!("/portal/integrations/{id}"),
    ] {
        let page = user.get(&path).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            !page.html.contains("<script") && !page.html.contains("<img"),
            "{path}: {}",
            page.html
        );
        assert!(
            page.html.contains(
                "&lt;script&gt;alert('x')&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"
            ),
            "{path}: the description is shown as text: {}",
            page.html
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_portal_checks_input_with_the_apis_rules_and_keeps_it() {
    let app = spawn_app_with(&["--allow-private-targets", "false"]).await;
    let user = PortalUser::signed_in(&app, "acct_a").await;
    for (url, events, says) in [
        (
            "http://127.0.0.1:9/hooks",
            vec!["purchase"],
            "(127.0.0.1 is not a public address)",
        ),
        // What a name resolves to on the operator's network is not shown.
        (
            "http://localhost:9/hooks",
            vec!["purchase"],
            "(localhost does not resolve to a public address)",
        ),
        ("not a url", vec!["purchase"], "url"),
        ("ftp://example.com/x", vec!["purchase"], "http"),
        ("https://example.com/hooks", vec![], "event"),
        ("https://example.com/hooks", vec!["purchased"], "purchased"),
    ] {
        let mut fields = vec![("url", url)];
        fields.extend(events.iter().map(|e| ("events", *e)));
        let page = user.submit("/portal/integrations", &fields).await;
        assert_eq!(
            page.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url} {events:?}"
        );
        let error_at = page
            .html
            .find("class=\"field-error\"")
            .unwrap_or_else(|| panic!("an error beside a field: {}", page.html));
        let error = &page.html[error_at..page.html[error_at..].find("</p>").unwrap() + error_at];
        assert!(
            error.to_lowercase().contains(says),
            "{url} {events:?}: {error}"
        );
        if url.contains("localhost") {
            assert!(
                !error.contains("127.0.0.1") && !error.contains("::1"),
                "{error}"
            );
        }
        assert_eq!(
            hidden_value(&page.html, "url"),
            url,
            "the URL typed is kept"
        );
    }
    let (_, list) = app.get("/v1/subscriptions?account_id=acct_a").await;
    assert!(
        list["items"].as_array().unwrap().is_empty(),
        "nothing was created: {list}"
    );
    let too_long = "d".repeat(1001);
    let page = user
        .submit(
            "/portal/integrations",
            &[
                ("url", "https://example.com/hooks"),
                ("events", "purchase"),
                ("description", &too_long),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.html.contains("at most 1000 characters"));
    app.stop().await.unwrap();
}

/// The `value` of the input named `name` (the form keeps what was typed).
fn hidden_value(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .expect("the field");
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()]
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

#[tokio::test]
async fn the_portal_link_command_signs_links_the_service_opens() {
    let mut service = ServiceProcess::start(&[]).await;
    let run = service
        .cli(
            &[
                "portal-link",
                "--account",
                "acct_cli",
                "--expires-in",
                "10m",
            ],
            b"",
        )
        .await;
    run.expect_code(0);
    let link = run.stdout.trim().to_string();
    assert!(link.contains("/portal/login?token=v1."), "{link}");
    assert!(run.stderr.contains("acct_cli"), "{}", run.stderr);
    // The key is the store's, shared with the service: the link opens a session there.
    let path = &link[link.find("/portal/login").unwrap()..];
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(service.url(path))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("wd_portal=v1.")
    );
    let run = service
        .cli(&["portal-link", "--account", "acct_cli", "--json"], b"")
        .await;
    run.expect_code(0);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["account_id"], "acct_cli");
    assert!(json["expires_at"].is_string() && json["url"].is_string());
    for (args, says) in [
        (vec!["portal-link", "--account", " acct"], "white space"),
        (
            vec!["portal-link", "--account", "acct", "--expires-in", "2d"],
            "between 60 and 86400",
        ),
        (
            vec!["portal-link", "--account", "acct", "--expires-in", "soon"],
            "soon",
        ),
    ] {
        let run = service.cli(&args, b"").await;
        run.expect_code(2);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    let short = service
        .cli_with(
            &[("PORTAL_KEY", "REPLACE_ME")],
            &["portal-link", "--account", "acct"],
            b"",
        )
        .await;
    short.expect_code(2);
    assert!(
        short.stderr.contains("at least 32 characters"),
        "{}",
        short.stderr
    );
    service.stop(PATIENCE).await;
}

/// The rotate form carries (a digest of) the secret it was shown with: a second click, a reload
/// of the answer or another tab does not rotate again, which would drop at once the secret the
/// endpoint still verifies with. The answer shows the current secret either way.
#[tokio::test]
async fn a_second_click_on_rotate_keeps_the_secret_the_endpoint_uses() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let sub = app
        .subscribe("acct_acme", &receiver.url, &["purchase"])
        .await;
    let id = sub["id"].as_str().unwrap();
    let first = sub["secret"].as_str().unwrap();
    let user = PortalUser::signed_in(&app, "acct_acme").await;
    let shown = user.get(&format!("/portal/integrations/{id}")).await;
    let rotating = shown.hidden("rotating");
    assert!(
        !shown.html.contains(first),
        "the form does not carry the secret"
    );
    let path = format!("/portal/integrations/{id}/rotate");
    let secret_on = |html: &str| -> String {
        let at = html.find("whsec_").expect("a secret on the page");
        html[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "_+/=".contains(*c))
            .collect()
    };

    let once = user.submit(&path, &[("rotating", &rotating)]).await;
    assert_eq!(once.status, StatusCode::OK, "{}", once.html);
    let second = secret_on(&once.html);
    assert_ne!(second, first);
    let again = user.submit(&path, &[("rotating", &rotating)]).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.html);
    assert!(again.html.contains("already rotated"), "{}", again.html);
    assert_eq!(secret_on(&again.html), second, "nothing changed");

    // Both secrets still sign: the endpoint may go on verifying with the first.
    app.publish("purchase", fixture("purchase").as_bytes())
        .await;
    let received = receiver.wait_for(1, PATIENCE).await;
    verify_signature(first, &received[0]);
    verify_signature(&second, &received[0]);

    // A rotation from a page showing the current secret goes through.
    let fresh = user.get(&format!("/portal/integrations/{id}")).await;
    let third = user
        .submit(&path, &[("rotating", &fresh.hidden("rotating"))])
        .await;
    assert!(!third.html.contains("already rotated"), "{}", third.html);
    assert_ne!(secret_on(&third.html), second);
    app.stop().await.unwrap();
}

/// At the account's limit of webhooks the form comes back as typed, saying why, and nothing is
/// created.
#[tokio::test]
async fn a_webhook_past_the_accounts_limit_is_refused_with_the_form_kept() {
    let app = spawn_app_with(&["--max-subscriptions-per-account", "1"]).await;
    app.subscribe("acct_a", "https://example.com/first", &["purchase"])
        .await;
    let user = PortalUser::signed_in(&app, "acct_a").await;
    let page = user
        .submit(
            "/portal/integrations",
            &[
                ("url", "https://example.com/second"),
                ("events", "identify"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.html);
    assert!(
        page.html
            .contains("Your account already has 1 webhooks, the most it can have."),
        "{}",
        page.html
    );
    assert!(
        page.html.contains("value=\"https://example.com/second\""),
        "the URL as typed: {}",
        page.html
    );
    let (_, listed) = app.get("/v1/subscriptions?account_id=acct_a").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    app.stop().await.unwrap();
}
