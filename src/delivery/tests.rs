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
                if !read_head(&mut stream).await || stream.write_all(head.as_bytes()).await.is_err()
                {
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

/// Reads a request's head (the request is small: its body comes with it); false if the client
/// went away first.
async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// A port nothing listens on (bound, then closed), and a URL on it.
fn closed_port() -> (u16, url::Url) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = url::Url::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap();
    (port, url)
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
    let (_, url) = closed_port();
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

#[tokio::test]
async fn a_refusal_stands_for_the_attempts_right_after_it_then_the_endpoint_is_tried_again() {
    let (port, url) = closed_port();
    // A hold longer than the default, so a slow machine cannot let it pass between two steps.
    let hold = Duration::from_secs(2);
    let mut deliverer = Deliverer::new(Duration::from_secs(2), true, 1).unwrap();
    deliverer.refusals = Arc::new(refusals::Refusals::new(hold));
    let send = |deliverer: Deliverer, url: url::Url| async move {
        deliverer
            .attempt(&url, &[&SigningKey::generate()], "evt_1", "{}", 1)
            .await
    };
    let first = send(deliverer.clone(), url.clone()).await;
    assert!(
        matches!(&first.outcome, Outcome::Refused(e) if e.contains("os error")),
        "a real refusal: {:?}",
        first.outcome
    );

    // The endpoint comes back at once, on the same port, and counts its connections.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });

    // Within the hold, attempts fail with that refusal and nothing is connected to; another
    // URL is not held back by it.
    let held = send(deliverer.clone(), url.clone()).await;
    assert!(
        matches!(&held.outcome, Outcome::Refused(e) if e.starts_with("connection refused ") && e.contains("ms earlier")),
        "{:?}",
        held.outcome
    );
    assert_eq!(held.outcome.label(), "connect_error");
    assert!(
        held.record
            .error
            .as_ref()
            .is_some_and(|e| e.contains("within 2000 ms of a refusal"))
    );
    assert_eq!((held.record.status, held.signal), (None, Signal::Other));
    let mut other = url.clone();
    other.set_path("/other");
    assert!(send(deliverer.clone(), other).await.outcome.is_success());
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only /other connected"
    );

    // Once the hold has passed, the endpoint is tried again.
    tokio::time::sleep(hold).await;
    let again = send(deliverer.clone(), url.clone()).await;
    assert_eq!(again.outcome, Outcome::Success(204));
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
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
