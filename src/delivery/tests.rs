//! The deliverer against real sockets: classification, timeouts, the guard.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An endpoint that answers `head` at once, then drips one body byte every 50 ms until the
/// client hangs up.
async fn dripping(head: &'static str) -> url::Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The request is small: headers and body come before the first answer.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                while stream.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    url::Url::parse(&url).unwrap()
}

async fn attempt(url: &url::Url, timeout: Duration) -> (Outcome, AttemptRecord) {
    let attempt = Deliverer::new(timeout, true, 1)
        .unwrap()
        .attempt(url, &[&SigningKey::generate()], "evt_1", "{}", 1)
        .await;
    (attempt.outcome, attempt.record)
}

#[tokio::test]
async fn a_refused_connection_is_a_connection_error_that_says_nothing_about_load() {
    // A port nothing listens on: bound, then closed.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = url::Url::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap();
    let attempt = Deliverer::new(Duration::from_secs(2), true, 1)
        .unwrap()
        .attempt(&url, &[&SigningKey::generate()], "evt_1", "{}", 1)
        .await;
    assert!(
        matches!(&attempt.outcome, Outcome::Refused(e) if e.contains("refused")),
        "{:?}",
        attempt.outcome
    );
    assert_eq!(attempt.outcome.label(), "connect_error");
    assert_eq!(attempt.record.status, None);
    assert_eq!(attempt.signal, Signal::Other, "the limit stays where it is");
}

#[test]
fn retry_after_is_read_as_seconds_or_an_http_date() {
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .unwrap()
        .to_utc();
    assert_eq!(retry_after("5", now), Some(Duration::from_secs(5)));
    assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
    assert_eq!(
        retry_after("Tue, 01 Dec 2026 10:00:30 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        retry_after("Tue, 01 Dec 2026 09:59:00 GMT", now),
        None,
        "past"
    );
    // The obsolete forms RFC 9110 still has recipients read, and a numeric zone.
    for form in [
        "Tuesday, 01-Dec-26 10:00:30 GMT",
        "Tue Dec  1 10:00:30 2026",
        "Tue, 01 Dec 2026 11:00:30 +0100",
    ] {
        assert_eq!(
            retry_after(form, now),
            Some(Duration::from_secs(30)),
            "{form}"
        );
    }
    assert_eq!(retry_after("0", now), None);
    assert_eq!(retry_after("-3", now), None);
    assert_eq!(retry_after("soon", now), None);
}

#[tokio::test]
async fn a_status_followed_by_a_body_that_never_ends_is_classified_by_the_status() {
    let timeout = Duration::from_millis(300);
    for (head, expected) in [
        (
            "HTTP/1.1 500 Oops\r\ncontent-length: 1000000\r\n\r\n",
            Outcome::HttpError(500),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n",
            Outcome::Success(200),
        ),
    ] {
        let url = dripping(head).await;
        let (outcome, record) = attempt(&url, timeout).await;
        assert_eq!(outcome, expected, "{head:?}");
        assert_eq!(record.status, outcome.status());
        // Cut off by the timeout, not read to the end (that would take 14 hours).
        assert!(record.duration_ms >= 300, "{record:?}");
        assert!(record.duration_ms < 3_000, "{record:?}");
    }
}

/// With the guard on, a delivery to a private target fails as `blocked` without any
/// connection: IP literals in any spelling, and names (through the guarded resolver).
#[tokio::test]
async fn the_guard_blocks_private_targets_at_delivery_without_connecting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let guarded = Deliverer::new(Duration::from_secs(2), false, 1).unwrap();
    for raw in [
        format!("http://127.0.0.1:{port}/hooks"),
        format!("http://2130706433:{port}/hooks"),
        format!("http://[::ffff:127.0.0.1]:{port}/hooks"),
        format!("http://localhost:{port}/hooks"),
        format!("http://localhost.:{port}/hooks"),
    ] {
        let url = url::Url::parse(&raw).unwrap();
        let Attempt {
            outcome, record, ..
        } = guarded
            .attempt(&url, &[&SigningKey::generate()], "evt_1", "{}", 1)
            .await;
        assert!(matches!(outcome, Outcome::Blocked(_)), "{raw}: {outcome:?}");
        assert_eq!(outcome.label(), "connect_error");
        let error = record.error.unwrap();
        assert!(error.starts_with("blocked: "), "{raw}: {error}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}
