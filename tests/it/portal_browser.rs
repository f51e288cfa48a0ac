//! The customer portal in a real browser (headless Chromium through chromedriver), against the
//! real service and broker: the documentation's five steps by clicking and typing, managing a
//! webhook, Delivery Logs and Replay, one account's walls, a link clicked on another site, and
//! axe-core's accessibility check and a phone-width layout on every page. With
//! `UPDATE_SCREENSHOTS=1` the accessibility test also writes the README's screenshots to
//! `docs/`.

use std::time::Duration;

use axum::response::Html;
use serde_json::json;

use crate::support::*;

/// The event published to `account`: a purchase with visitor `visitor`.
fn purchase(id: &str, account: &str, visitor: &str) -> String {
    format!(
        r#"{{"id":"{id}","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"{account}","data":{{"visitor_id":"{visitor}","amount":299.0,"currency":"USD"}}}}"#
    )
}

#[tokio::test]
async fn a_customer_follows_the_documented_steps_and_the_webhook_receives_events() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let browser = Browser::start().await;

    // Go to Dashboard → Integrations (the portal link lands there; the token leaves the URL).
    browser.goto(&portal_link(&app, "acct_steps").await).await;
    browser.wait_heading("Integrations").await;
    assert!(
        !browser.url().await.contains("token"),
        "{}",
        browser.url().await
    );
    assert!(browser.text().await.contains("No integrations yet"));
    // Click Add Integration.
    browser.click("Add Integration").await;
    browser.wait_heading("Add Integration").await;
    // Choose Webhook and enter your endpoint URL.
    browser.click("Webhook").await;
    browser.wait_heading("Add Integration: Webhook").await;
    browser.fill("Endpoint URL", &receiver.url).await;
    // Select which events should trigger the webhook.
    browser.field("purchase").await.click().await;
    browser.field("identify").await.click().await;
    browser
        .fill(
            "Description",
            "<img src=x onerror=\"document.title='owned'\">Orders <b>CRM</b>",
        )
        .await;
    // Save and enable.
    browser.click("Save and enable").await;
    browser.wait_heading("Webhook saved and enabled").await;
    let secret = browser.find(".secret").await.text().await;
    assert!(
        secret.starts_with("whsec_"),
        "the signing secret is shown once saved: {secret}"
    );
    browser.click("Back to Integrations").await;
    browser.wait_heading("Integrations").await;

    let card = browser.find("article.integration").await.text().await;
    for shown in [
        receiver.url.as_str(),
        "Enabled",
        "purchase",
        "identify",
        "Last delivery: none yet",
    ] {
        assert!(card.contains(shown), "{shown:?} in {card}");
    }
    assert!(
        !card.contains("goal_achieved"),
        "only the events chosen: {card}"
    );
    // The description's markup is text: no element was made from it, nothing ran.
    assert!(
        card.contains("<img src=x onerror=\"document.title='owned'\">Orders <b>CRM</b>"),
        "{card}"
    );
    assert_eq!(browser.count("main img, main b").await, 0);
    assert_ne!(browser.title().await, "owned");

    // An event published now reaches the new webhook, signed with the secret the page showed.
    app.publish(
        "purchase",
        purchase("evt_steps_1", "acct_steps", "v_steps").as_bytes(),
    )
    .await;
    let received = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(received[0].header("webhook-id"), "evt_steps_1");
    verify_signature(&secret, &received[0]);
    let body: serde_json::Value = serde_json::from_str(received[0].text()).unwrap();
    assert_eq!(body["event"], "purchase");
    assert_eq!(body["data"]["visitor_id"], "v_steps");
    // An event it did not choose does not.
    app.publish(
        "goal_achieved",
        br#"{"id":"evt_steps_2","event":"goal_achieved","timestamp":"2026-02-12T14:30:00Z","account_id":"acct_steps","data":{"visitor_id":"v","goal":"demo"}}"#,
    )
    .await;
    app.publish(
        "purchase",
        purchase("evt_steps_3", "acct_steps", "v_steps").as_bytes(),
    )
    .await;
    let received = receiver.wait_for(2, PATIENCE).await;
    assert_eq!(
        received[1].header("webhook-id"),
        "evt_steps_3",
        "goal_achieved was not chosen"
    );
    // The list shows how the last delivery went.
    browser.goto(&app.url("/portal/integrations")).await;
    let card = browser.find("article.integration").await.text().await;
    assert!(
        card.contains("Delivered") && card.contains("HTTP 200"),
        "{card}"
    );
    browser.quit().await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_customer_edits_tests_pauses_rotates_and_deletes_a_webhook() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let sub = app
        .subscribe("acct_manage", &receiver.url, &["purchase"])
        .await;
    let first_secret = sub["secret"].as_str().unwrap().to_string();
    let browser = Browser::start().await;
    browser.goto(&portal_link(&app, "acct_manage").await).await;
    browser.wait_heading("Integrations").await;

    // Send test event: the outcome is on the page.
    browser.click("Send test event").await;
    browser.wait_heading("Send test event").await;
    let result = browser.text().await;
    assert!(result.contains("Delivered: HTTP 200"), "{result}");
    let tests = receiver.wait_for(1, PATIENCE).await;
    assert!(tests[0].header("webhook-id").starts_with("evt_test_"));
    verify_signature(&first_secret, &tests[0]);
    browser.click("Back to Integrations").await;
    browser.wait_heading("Integrations").await;

    // Edit: a wrong URL is refused beside its field, with what was typed kept.
    browser.click("Edit").await;
    browser.wait_heading("Edit webhook").await;
    browser
        .fill("Endpoint URL", "ftp://example.com/hooks")
        .await;
    browser.click("Save changes").await;
    browser.wait_heading("Edit webhook").await;
    assert!(
        browser
            .find(".field-error")
            .await
            .text()
            .await
            .contains("http or https")
    );
    let kept = browser.field("Endpoint URL").await.property("value").await;
    assert_eq!(kept, "ftp://example.com/hooks");
    assert_eq!(
        browser
            .field("Endpoint URL")
            .await
            .property("ariaInvalid")
            .await,
        "true"
    );
    browser.fill("Endpoint URL", &receiver.url).await;
    browser.field("goal_achieved").await.click().await;
    browser.click("Save changes").await;
    browser.wait_heading("Integrations").await;
    assert!(browser.text().await.contains("Changes saved."));
    let (_, read) = app
        .get(&format!(
            "/v1/subscriptions/{}",
            sub["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(read["events"], json!(["purchase", "goal_achieved"]));

    // Disable, then enable.
    browser.click("Disable").await;
    browser.wait_heading("Integrations").await;
    let card = browser.find("article.integration").await.text().await;
    assert!(card.contains("Disabled"), "{card}");
    let (_, read) = app
        .get(&format!(
            "/v1/subscriptions/{}",
            sub["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(read["enabled"], false);
    browser.click("Enable").await;
    browser.wait_heading("Integrations").await;
    assert!(
        browser
            .find("article.integration")
            .await
            .text()
            .await
            .contains("Enabled")
    );

    // Rotate secret: a new one, shown; deliveries are signed with both while the old overlaps.
    browser.click("Rotate secret").await;
    browser.wait_heading("Secret rotated").await;
    let second_secret = browser.find(".secret").await.text().await;
    assert!(second_secret.starts_with("whsec_") && second_secret != first_secret);
    app.publish(
        "purchase",
        purchase("evt_manage_1", "acct_manage", "v").as_bytes(),
    )
    .await;
    let received = receiver.wait_for(2, PATIENCE).await;
    verify_signature(&second_secret, &received[1]);
    verify_signature(&first_secret, &received[1]);
    browser.click("Back to Integrations").await;
    browser.wait_heading("Integrations").await;

    // Delete asks first; Cancel keeps it; Delete webhook removes it.
    browser.click("Delete").await;
    browser.wait_heading("Delete this webhook?").await;
    browser.click("Cancel").await;
    browser.wait_heading("Integrations").await;
    assert_eq!(browser.count("article.integration").await, 1);
    browser.click("Delete").await;
    browser.wait_heading("Delete this webhook?").await;
    browser.click("Delete webhook").await;
    browser.wait_heading("Integrations").await;
    assert!(browser.text().await.contains("Webhook deleted."));
    assert_eq!(browser.count("article.integration").await, 0);
    let (status, _) = app
        .get(&format!(
            "/v1/subscriptions/{}",
            sub["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 404);
    browser.quit().await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_delivery_shows_in_delivery_logs_and_replay_delivers_it_once() {
    let app = spawn_app_with(&["--retry-delays", "100ms,200ms,300ms"]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(500));
    app.subscribe("acct_logs", &receiver.url, &["*"]).await;
    app.publish(
        "purchase",
        purchase("evt_logs_1", "acct_logs", "v_logs").as_bytes(),
    )
    .await;
    app.wait_for_logs("account_id=acct_logs", 1).await;
    assert_eq!(receiver.count(), 4, "the first attempt and three retries");

    let browser = Browser::start().await;
    browser.goto(&portal_link(&app, "acct_logs").await).await;
    browser.wait_heading("Integrations").await;
    let card = browser.find("article.integration").await.text().await;
    assert!(
        card.contains("Failed") && card.contains("HTTP 500"),
        "{card}"
    );
    browser.click("Delivery Logs").await;
    browser.wait_heading("Delivery Logs").await;
    let row = browser.find("tbody tr").await.text().await;
    for shown in ["purchase", receiver.url.as_str(), "exhausted", "4"] {
        assert!(row.contains(shown), "{shown:?} in {row}");
    }
    // The record opens to its attempts and payload.
    browser.find("tbody tr td a").await.click().await;
    browser.wait_heading("Delivery record").await;
    assert_eq!(browser.count("tbody tr").await, 4, "one row per attempt");
    let attempts = browser.find("tbody").await.text().await;
    for (n, row) in attempts.lines().enumerate() {
        assert!(
            row.starts_with(&format!("{} ", n + 1)) && row.contains("endpoint answered HTTP 500"),
            "{attempts}"
        );
    }
    assert!(
        browser
            .find("pre")
            .await
            .text()
            .await
            .contains("\"visitor_id\": \"v_logs\"")
    );

    // The endpoint is fixed; Replay delivers once, and the record reads replayed.
    receiver.always(Reply::Status(200));
    browser.click("Replay").await;
    browser.wait_heading("Delivery Logs").await;
    assert!(
        browser
            .text()
            .await
            .contains("Replayed: the delivery goes out again")
    );
    let received = receiver.wait_for(5, PATIENCE).await;
    assert_eq!(received[4].header("webhook-id"), "evt_logs_1");
    let row = browser.find("tbody tr").await.text().await;
    assert!(row.contains("Replayed"), "{row}");
    assert_eq!(
        browser.count("tbody tr button").await,
        0,
        "no Replay button once replayed"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 5, "delivered once");

    // "Replay all shown": the count, a confirmation, then each record once.
    receiver.always(Reply::Status(500));
    for n in 2..=3 {
        let id = format!("evt_logs_{n}");
        app.publish("purchase", purchase(&id, "acct_logs", "v").as_bytes())
            .await;
        app.wait_for_logs("account_id=acct_logs", n).await;
    }
    let before = receiver.count();
    receiver.always(Reply::Status(200));
    browser.goto(&app.url("/portal/delivery-logs")).await;
    browser.click("Replay all shown").await;
    browser.wait_heading("Replay 2 deliveries?").await;
    assert_eq!(receiver.count(), before, "asking sends nothing");
    browser.click("Replay 2 deliveries").await;
    browser.wait_heading("Replayed 2 deliveries").await;
    receiver.wait_for(before + 2, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), before + 2);
    browser.quit().await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_account_opening_the_first_accounts_pages_sees_none_of_it() {
    let app = spawn_app_with(&["--retry-delays", "50ms"]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(500));
    let sub = app
        .subscribe("acct_first", &receiver.url, &["purchase"])
        .await;
    app.publish(
        "purchase",
        purchase("evt_first_1", "acct_first", "v_first_visitor").as_bytes(),
    )
    .await;
    app.wait_for_logs("account_id=acct_first", 1).await;

    // Every page the first account's session reaches, by following its links.
    let first = Browser::start().await;
    first.goto(&portal_link(&app, "acct_first").await).await;
    first.wait_heading("Integrations").await;
    let mut seen = vec![app.url("/portal/integrations")];
    let links = "return [...document.querySelectorAll('main a[href]')].map(a => a.href)";
    for start in ["/portal/integrations", "/portal/delivery-logs"] {
        first.goto(&app.url(start)).await;
        for href in first.execute(links, json!([])).await.as_array().unwrap() {
            let href = href.as_str().unwrap().to_string();
            if !seen.contains(&href) {
                seen.push(href);
            }
        }
    }
    let record_pages: Vec<&String> = seen
        .iter()
        .filter(|u| u.contains("/portal/delivery-logs/dl_"))
        .collect();
    assert!(
        !record_pages.is_empty(),
        "the record's page was among them: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|u| u.ends_with(&format!("/{}", sub["id"].as_str().unwrap())))
    );
    first.quit().await;

    let second = Browser::start().await;
    second.goto(&portal_link(&app, "acct_second").await).await;
    second.wait_heading("Integrations").await;
    for url in &seen {
        second.goto(url).await;
        let text = second.text().await;
        for secret in [
            receiver.url.as_str(),
            "v_first_visitor",
            "evt_first_1",
            "acct_first",
            sub["secret"].as_str().unwrap(),
        ] {
            assert!(
                !text.contains(secret),
                "{url} shows {secret:?} to another account: {text}"
            );
        }
    }
    // Expired and tampered links open nothing.
    second
        .goto(&app.url("/portal/login?token=v1.YWNjdF9maXJzdA.1.00.AAAA"))
        .await;
    second.wait_heading("This link is not valid").await;
    second.quit().await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_portal_link_clicked_on_another_site_signs_in() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let public = format!("http://localhost:{port}");
    let app = spawn_app_with(&["--listen-addr", &listen, "--public-url", &public]).await;
    let link = portal_link(&app, "acct_mail").await;
    assert!(link.starts_with(&public), "{link}");
    // A web mail client on another site (127.0.0.1 and localhost are different sites).
    let mail = serve_receiver(axum::Router::new().route(
        "/hooks",
        axum::routing::get(move || {
            let link = link.clone();
            async move { Html(format!("<!doctype html><title>Mail</title><a id=open href=\"{link}\">Manage webhooks</a>")) }
        }),
    ))
    .await;
    let browser = Browser::start().await;
    browser.goto(&mail).await;
    browser.find("#open").await.click().await;
    browser.wait_heading("Integrations").await;
    assert!(browser.text().await.contains("acct_mail"));
    browser.quit().await;
    app.stop().await.unwrap();
}

/// axe-core's serious and critical violations on the current page, and sideways scrolling.
async fn check_page(browser: &Browser, axe: &str, what: &str, problems: &mut Vec<String>) {
    for violation in browser.serious_accessibility_violations(axe).await {
        problems.push(format!("{what}: {violation}"));
    }
    let overflow = browser.overflow_x().await;
    if overflow > 0 {
        problems.push(format!("{what} scrolls sideways by {overflow} px"));
    }
}

/// Where the README's screenshots go.
fn screenshot_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("UPDATE_SCREENSHOTS")
        .filter(|v| v == "1")
        .map(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"))
}

#[tokio::test]
async fn every_page_passes_the_accessibility_check_and_fits_a_phone() {
    let axe = axe_source();
    let app = spawn_app_with(&["--retry-delays", "50ms"]).await;
    let failing = Receiver::start().await;
    failing.always(Reply::Status(503));
    let working = Receiver::start().await;
    let sub = app
        .post(
            "/v1/subscriptions",
            json!({"account_id": "acct_axe", "url": working.url, "events": ["purchase", "identify"], "description": "Orders to the CRM"}),
        )
        .await
        .1;
    let failing_sub = app.subscribe("acct_axe", &failing.url, &["*"]).await;
    app.publish(
        "purchase",
        purchase("evt_axe_1", "acct_axe", "v_axe").as_bytes(),
    )
    .await;
    app.wait_for_logs("account_id=acct_axe", 1).await;
    working.wait_for(1, PATIENCE).await;
    let (_, logs) = app.get("/v1/delivery-logs?account_id=acct_axe").await;
    let record = logs["items"][0]["id"].as_str().unwrap().to_string();
    let id = sub["id"].as_str().unwrap();

    let browser = Browser::start().await;
    browser.goto(&portal_link(&app, "acct_axe").await).await;
    browser.wait_heading("Integrations").await;
    let shots = screenshot_dir();
    let pages: Vec<(String, &str, Option<&str>)> = vec![
        (
            "/portal/integrations".into(),
            "Integrations",
            Some("portal-integrations.png"),
        ),
        ("/portal/integrations/new".into(), "Add Integration", None),
        (
            "/portal/integrations/new/webhook".into(),
            "Add Integration: Webhook",
            Some("portal-add-webhook.png"),
        ),
        (format!("/portal/integrations/{id}"), "Edit webhook", None),
        (
            format!("/portal/integrations/{id}/delete"),
            "Delete this webhook?",
            None,
        ),
        (
            "/portal/delivery-logs".into(),
            "Delivery Logs",
            Some("portal-delivery-logs.png"),
        ),
        (
            format!("/portal/delivery-logs/{record}"),
            "Delivery record",
            Some("portal-delivery-record.png"),
        ),
        (
            "/portal/delivery-logs/replay".into(),
            "Replay 1 delivery?",
            None,
        ),
        (
            "/portal/delivery-logs?since=yesterday-ish".into(),
            "Delivery Logs",
            None,
        ),
        ("/portal/no-such-page".into(), "Page not found", None),
        (
            "/portal/login?token=v1.x.1.n.m".into(),
            "This link is not valid",
            None,
        ),
    ];
    let mut problems = Vec::new();
    for (width, height) in [(1280, 900), (375, 740)] {
        browser.set_size(width, height).await;
        for (path, heading, shot) in &pages {
            browser.goto(&app.url(path)).await;
            browser.wait_heading(heading).await;
            check_page(
                &browser,
                &axe,
                &format!("{path} at {width} px"),
                &mut problems,
            )
            .await;
            if let (Some(dir), Some(name), 1280) = (&shots, shot, width) {
                browser.screenshot(&dir.join(name)).await;
            }
        }
        // Pages only a form post shows: the form with its errors, a secret, a test's outcome.
        browser
            .goto(&app.url("/portal/integrations/new/webhook"))
            .await;
        browser.fill("Endpoint URL", "not a url").await;
        browser.click("Save and enable").await;
        // The answer has the same heading as the form: wait for what it adds.
        browser.wait_for(".field-error").await;
        browser.wait_heading("Add Integration: Webhook").await;
        assert_eq!(
            browser.count(".field-error").await,
            2,
            "the URL's and the events' errors"
        );
        check_page(
            &browser,
            &axe,
            &format!("the form with errors at {width} px"),
            &mut problems,
        )
        .await;
        let failing_page = format!(
            "/portal/integrations/{}",
            failing_sub["id"].as_str().unwrap()
        );
        browser.goto(&app.url(&failing_page)).await;
        browser.click("Reveal secret").await;
        browser.wait_heading("Signing secret").await;
        check_page(
            &browser,
            &axe,
            &format!("a secret at {width} px"),
            &mut problems,
        )
        .await;
        browser.goto(&app.url(&failing_page)).await;
        browser.wait_heading("Edit webhook").await;
        browser.goto(&app.url("/portal/integrations")).await;
        browser
            .button_in(&format!("#card-{id}"), "Send test event")
            .await
            .click()
            .await;
        browser.wait_heading("Send test event").await;
        check_page(
            &browser,
            &axe,
            &format!("a test's outcome at {width} px"),
            &mut problems,
        )
        .await;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    browser.quit().await;
    app.stop().await.unwrap();
}
