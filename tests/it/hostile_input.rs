//! Input that is well-formed enough to pass a naive check but would hurt a receiver, mislead a
//! person, or hold the admin API: refused with a clear reason.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use webhook_dispatcher::api::{BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT};
use webhook_dispatcher::event::MAX_DATA_DEPTH;

use crate::support::*;

/// A `purchase` envelope with `id`, `account_id` (JSON text) and `data` (JSON text).
fn envelope(id: &str, account: &str, data: &str) -> String {
    format!(
        r#"{{"id":"{id}","event":"purchase","timestamp":"2026-12-01T00:00:00Z","account_id":{account},"data":{data}}}"#
    )
}

/// `data` with a value nested so that `data` itself is `levels` deep.
fn nested_data(levels: usize) -> String {
    let inner = format!("{}1{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
    format!(r#"{{"visitor_id":"v_1","deep":{inner}}}"#)
}

#[tokio::test]
async fn ids_account_ids_and_depths_receivers_cannot_take_are_rejected_with_their_reason() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.subscribe("acct_acme", &receiver.url, &["*"]).await;
    let data = r#"{"visitor_id":"v_1"}"#;
    let cases = [
        envelope("évt_1", r#""acct_acme""#, data),
        envelope("evt_2", r#""acct\u202eemca""#, data),
        envelope("evt_3", r#""\u00a0acct_acme""#, data),
        envelope("evt_4", r#""acct_acme ""#, data),
        envelope("evt_5", r#""acct_acme""#, &nested_data(100_000)),
        envelope("evt_6", r#""acct_acme""#, &nested_data(MAX_DATA_DEPTH + 1)),
    ];
    for body in &cases {
        app.publish("purchase", body.as_bytes()).await;
    }
    let deepest = envelope(
        "evt_deepest",
        r#""acct_acme""#,
        &nested_data(MAX_DATA_DEPTH),
    );
    app.publish("purchase", deepest.as_bytes()).await;

    let logs = app.wait_for_logs("", cases.len()).await;
    assert_eq!(logs.len(), cases.len(), "{logs:?}");
    for (what, id, says) in [
        ("non-ASCII id", "évt_1", "visible ASCII"),
        ("right-to-left override", "evt_2", "format"),
        ("leading no-break space", "evt_3", "white space"),
        ("trailing space", "evt_4", "white space"),
        ("100,000 levels", "evt_5", "nested"),
        ("one level too deep", "evt_6", "nested"),
    ] {
        let record = logs
            .iter()
            .find(|r| {
                r["payload"]["id"] == id
                    // Too large to keep whole: its first 64 KiB, as text.
                    || r["payload"]
                        .as_str()
                        .is_some_and(|p| p.starts_with(&format!(r#"{{"id":"{id}""#)))
            })
            .unwrap_or_else(|| panic!("{what}: no record of {id} in {logs:?}"));
        assert_eq!(record["reason"], "invalid_event", "{what}: {record}");
        assert!(
            record["detail"].as_str().unwrap().contains(says),
            "{what}: the detail says {says:?}: {record}"
        );
    }
    // The deepest accepted nesting goes through, and only it.
    let got = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(got[0].header("webhook-id"), "evt_deepest");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_api_refuses_control_characters_in_urls_and_account_ids_that_look_like_others() {
    let app = spawn_app().await;
    for url in [
        "https://example.com/a\r\nX: y",
        "https://example.com/a\tb",
        "https://example.com/\u{0}",
        " https://example.com/",
    ] {
        let (status, body) = app
            .post(
                "/v1/subscriptions",
                json!({"account_id": "acct_acme", "url": url, "events": ["*"]}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url:?}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("url"),
            "{body}"
        );
    }
    let sub = app
        .subscribe("acct_acme", "https://example.com/hooks", &["*"])
        .await;
    let (status, body) = app
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
            Some(json!({"url": "https://example.com/b\r\nHost: evil"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    for account in [
        "acct\u{202E}emca",
        "\u{00A0}acct_acme",
        "acct_acme ",
        "acct\u{200B}acme",
    ] {
        let (status, body) = app
            .post(
                "/v1/subscriptions",
                json!({"account_id": account, "url": "https://example.com/hooks", "events": ["*"]}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{account:?}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("account_id"),
            "{body}"
        );
    }
    let (_, list) = app.get("/v1/subscriptions").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "only the valid one: {list}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let token = "a-token-long-enough-for-anywhere";
    let app = spawn_app_with(&["--admin-token", token]).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let status = app
            .http
            .get(app.url("/v1/subscriptions"))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{scheme}");
    }
    for value in [
        format!("Bearer {}", token.to_uppercase()),
        format!("Basic {token}"),
        token.to_string(),
    ] {
        let status = app
            .http
            .get(app.url("/v1/subscriptions"))
            .header("authorization", value.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value}");
    }
    app.stop().await.unwrap();
}

/// Sends `start` at once, then `drip` one byte a second (over and over), and returns how long
/// until the server closed the connection (and what it answered), giving up after `limit`.
async fn drip(
    addr: std::net::SocketAddr,
    start: &[u8],
    drip: &[u8],
    limit: Duration,
) -> (Duration, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(start).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    for byte in drip.iter().cycle() {
        assert!(started.elapsed() < limit, "still open after {limit:?}");
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_cut_off() {
    let app = spawn_app().await;
    let limit = HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let headers = tokio::spawn(drip(
        app.addr,
        b"GET /healthz HTTP/1.1\r\nX-Slow: ",
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        limit,
    ));
    let body_limit = BODY_READ_TIMEOUT + Duration::from_secs(5);
    let body = tokio::spawn(drip(
        app.addr,
        b"POST /v1/subscriptions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{\"a\":\"",
        b"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        body_limit,
    ));
    // Meanwhile the API serves everyone else.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = app.get("/v1/subscriptions").await;
    assert_eq!(status, StatusCode::OK);

    let (took, _) = headers.await.unwrap();
    assert!(
        took >= HEADER_READ_TIMEOUT - Duration::from_secs(1) && took < limit,
        "a request whose headers never end is closed after {HEADER_READ_TIMEOUT:?} (took {took:?})"
    );
    let (took, answer) = body.await.unwrap();
    assert!(
        took >= BODY_READ_TIMEOUT - Duration::from_secs(1) && took < body_limit,
        "a body that never ends is cut off after {BODY_READ_TIMEOUT:?} (took {took:?})"
    );
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "answered 408: {answer:?}"
    );
    app.stop().await.unwrap();
}
