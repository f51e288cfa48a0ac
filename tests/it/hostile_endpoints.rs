//! Hostile endpoints: each fails in its own way, is recorded as exactly one attempt per try with
//! the right outcome, within `DELIVERY_TIMEOUT`, without reading more than a small cap — and
//! another account's healthy endpoint keeps getting its deliveries meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls;

use crate::support::*;

/// `--delivery-timeout` of the test app. Long enough that a healthy delivery started while a
/// hostile attempt hangs finishes well before that attempt times out, even on a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How far past `TIMEOUT` an attempt cut off by the timeout may end (scheduling on 2 busy cores).
const LATE: Duration = Duration::from_millis(1500);
/// Size of the huge response bodies.
const HUGE: usize = 10 * 1024 * 1024;
/// Most bytes a huge-body server may get into the socket before the service hangs up: the
/// service's read cap plus loopback socket buffers, far below `HUGE`.
const HUGE_WRITTEN_LIMIT: usize = 2 * 1024 * 1024;

#[derive(Clone, Debug)]
enum Behaviour {
    /// Reads the request, never answers, holds the connection until the client leaves.
    Hang,
    /// Accepts and closes at once with an RST (`SO_LINGER` 0).
    Reset,
    /// Sends the status line and headers (announcing a 1 MB body), then 1 byte per 100 ms.
    Drip(u16),
    /// Answers the status with a 10 MB body, as fast as the socket takes it, then closes.
    Huge(u16),
    /// Answers the status with `Location: <url>`, keeps the connection alive.
    Redirect(u16, String),
    /// TLS with a self-signed certificate for 127.0.0.1.
    SelfSignedTls,
}

/// What happened on one accepted connection.
#[derive(Clone, Debug, Default)]
struct Conn {
    /// When the (first) request was read completely.
    request_at: Option<Instant>,
    /// When the server was done: noticed the client was gone (EOF, reset, or a failed write), or
    /// wrote the whole response (huge bodies).
    client_gone_at: Option<Instant>,
    /// Response bytes the socket accepted (status line and headers included).
    written: usize,
    /// Whether the whole response was written.
    completed: bool,
    /// Server-side TLS handshake error.
    tls_error: Option<String>,
    /// The server is done with the connection.
    done: bool,
}

/// A raw TCP (or TLS) server that misbehaves as told and records every connection.
#[derive(Clone)]
struct Hostile {
    url: String,
    requests: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<Conn>>>,
}

impl Hostile {
    async fn start(behaviour: Behaviour) -> Hostile {
        let socket = TcpSocket::new_v4().expect("socket");
        if matches!(behaviour, Behaviour::Huge(_)) {
            // A fixed small send buffer (accepted sockets inherit it) instead of one autotuned
            // up to megabytes: what the socket accepts is then close to what the client read.
            socket.set_send_buffer_size(32 * 1024).expect("SO_SNDBUF");
        }
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("hostile port");
        let listener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().unwrap();
        let scheme = match behaviour {
            Behaviour::SelfSignedTls => "https",
            _ => "http",
        };
        let hostile = Hostile {
            url: format!("{scheme}://{addr}/hooks"),
            requests: Arc::default(),
            conns: Arc::default(),
        };
        let tls = matches!(behaviour, Behaviour::SelfSignedTls).then(self_signed_acceptor);
        let server = hostile.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let index = {
                    let mut conns = server.conns.lock().unwrap();
                    conns.push(Conn::default());
                    conns.len() - 1
                };
                let (server, behaviour, tls) = (server.clone(), behaviour.clone(), tls.clone());
                tokio::spawn(async move {
                    let mut conn = server.serve(stream, behaviour, tls).await;
                    conn.done = true;
                    server.conns.lock().unwrap()[index] = conn;
                });
            }
        });
        hostile
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The connections the server is done with (the client left or the handshake failed).
    fn finished(&self) -> Vec<Conn> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.done)
            .cloned()
            .collect()
    }

    /// Waits until the server is done with `n` connections.
    async fn wait_finished(&self, n: usize) -> Vec<Conn> {
        wait_until(
            &format!("{n} finished connections at {}", self.url),
            PATIENCE,
            || async { self.finished().len() >= n },
        )
        .await;
        self.finished()
    }

    fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    async fn serve(
        &self,
        mut stream: TcpStream,
        behaviour: Behaviour,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Conn {
        let mut conn = Conn::default();
        match behaviour {
            Behaviour::Reset => {
                stream.set_zero_linger().expect("SO_LINGER 0");
                drop(stream);
                conn.client_gone_at = Some(Instant::now());
            }
            Behaviour::SelfSignedTls => {
                let acceptor = tls.expect("TLS acceptor");
                match acceptor.accept(stream).await {
                    Ok(_) => panic!("the service accepted a self-signed certificate"),
                    Err(e) => conn.tls_error = Some(e.to_string()),
                }
            }
            Behaviour::Hang => {
                if self.read_request(&mut stream, &mut conn).await {
                    // Never answer; wait for the client to give up.
                    let mut sink = [0u8; 1024];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                }
                conn.client_gone_at = Some(Instant::now());
            }
            Behaviour::Drip(status) => {
                if self.read_request(&mut stream, &mut conn).await {
                    let head = format!(
                        "HTTP/1.1 {status} Whatever\r\ncontent-type: text/plain\r\ncontent-length: 1000000\r\n\r\n"
                    );
                    if write(&mut stream, head.as_bytes(), &mut conn).await {
                        while write(&mut stream, b"x", &mut conn).await {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                conn.client_gone_at = Some(Instant::now());
            }
            Behaviour::Huge(status) => {
                if self.read_request(&mut stream, &mut conn).await {
                    let head = format!(
                        "HTTP/1.1 {status} Whatever\r\ncontent-type: text/plain\r\ncontent-length: {HUGE}\r\nconnection: close\r\n\r\n"
                    );
                    let piece = vec![b'x'; 16 * 1024];
                    let mut sent = 0;
                    let mut ok = write(&mut stream, head.as_bytes(), &mut conn).await;
                    while ok && sent < HUGE {
                        ok = write(&mut stream, &piece, &mut conn).await;
                        sent += piece.len();
                    }
                    conn.completed = ok;
                }
                conn.client_gone_at = Some(Instant::now());
            }
            Behaviour::Redirect(status, location) => {
                // Keep-alive: a retry may come on the same connection.
                while self.read_request(&mut stream, &mut conn).await {
                    let head = format!(
                        "HTTP/1.1 {status} Moved\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n"
                    );
                    if !write(&mut stream, head.as_bytes(), &mut conn).await {
                        break;
                    }
                }
                conn.client_gone_at = Some(Instant::now());
            }
        }
        conn
    }

    /// Reads one whole request (headers and `content-length` body); false on EOF or error.
    async fn read_request(&self, stream: &mut TcpStream, conn: &mut Conn) -> bool {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .unwrap_or(0);
        while buf.len() < header_end + length {
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        }
        conn.request_at.get_or_insert_with(Instant::now);
        self.requests.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// Writes `bytes`, counting what the socket accepted; false once the client is gone.
async fn write(stream: &mut TcpStream, bytes: &[u8], conn: &mut Conn) -> bool {
    let mut rest = bytes;
    while !rest.is_empty() {
        match stream.write(rest).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                conn.written += n;
                rest = &rest[n..];
            }
        }
    }
    true
}

fn self_signed_acceptor() -> tokio_rustls::TlsAcceptor {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("self-signed certificate");
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key.into())
    .expect("server certificate");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[tokio::test]
async fn hostile_endpoints_each_fail_once_per_try_with_the_right_outcome_and_others_are_unaffected()
{
    let timeout = humantime::format_duration(TIMEOUT).to_string();
    // Two tries per delivery (one 100 ms retry): enough to see one attempt per try.
    let app = spawn_app_with(&["--delivery-timeout", &timeout, "--retry-delays", "100ms"]).await;

    let target = Receiver::start().await;
    let healthy = Receiver::start().await;
    app.subscribe("acct_healthy", &healthy.url, &["identify"])
        .await;

    // Failing cases: (account, server); each gets one `purchase` and ends in the delivery log.
    let failing = [
        ("acct_hang", Behaviour::Hang),
        ("acct_reset", Behaviour::Reset),
        ("acct_drip500", Behaviour::Drip(500)),
        ("acct_huge500", Behaviour::Huge(500)),
        ("acct_301", Behaviour::Redirect(301, target.url.clone())),
        ("acct_302", Behaviour::Redirect(302, target.url.clone())),
        ("acct_307", Behaviour::Redirect(307, target.url.clone())),
        ("acct_tls", Behaviour::SelfSignedTls),
    ];
    // 2xx cases, each on its own event so its attempt shows in the metrics alone.
    let succeeding = [
        ("acct_drip200", Behaviour::Drip(200), "goal_achieved"),
        ("acct_huge200", Behaviour::Huge(200), "visitor_enriched"),
    ];

    let mut servers = std::collections::HashMap::new();
    for (account, behaviour) in failing.iter().cloned() {
        let server = Hostile::start(behaviour).await;
        app.subscribe(account, &server.url, &["purchase"]).await;
        servers.insert(account, server);
    }
    for (account, behaviour, event) in succeeding.iter().cloned() {
        let server = Hostile::start(behaviour).await;
        app.subscribe(account, &server.url, &[event]).await;
        servers.insert(account, server);
    }
    for (account, _) in &failing {
        let body = fixture("purchase").replace("acct_acme", account);
        app.publish("purchase", body.as_bytes()).await;
    }
    for (account, _, event) in &succeeding {
        let body = fixture(event).replace("acct_acme", account);
        app.publish(event, body.as_bytes()).await;
    }

    // Others unaffected: once the hanging and dripping endpoints hold a request each, a healthy
    // account's event is delivered (and again every 200 ms until every hostile case is done).
    let holders = ["acct_hang", "acct_drip500", "acct_drip200"];
    wait_until(
        "the hang and drip endpoints to hold a request",
        PATIENCE,
        || async { holders.iter().all(|a| servers[a].requests() >= 1) },
    )
    .await;
    let healthy_body = fixture("identify").replace("acct_acme", "acct_healthy");
    let mut latencies = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let sent = Instant::now();
        app.publish("identify", healthy_body.as_bytes()).await;
        let got = healthy.wait_for(latencies.len() + 1, PATIENCE).await;
        latencies.push(got[latencies.len()].at - sent);
        let (_, logs) = app.get("/v1/delivery-logs?limit=100").await;
        let dead = logs["items"].as_array().unwrap().len();
        let metrics = app.metrics().await;
        let succeeded = succeeding.iter().all(|(_, _, event)| {
            metric_sum(
                &metrics,
                "webhook_delivery_attempts_total",
                &format!(r#"event="{event}",outcome="success""#),
            ) == 1.0
        });
        if dead >= failing.len() && succeeded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hostile cases not done: {dead} log records, 2xx cases done: {succeeded}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("healthy delivery latencies: {latencies:?}");
    // The first healthy delivery arrived while the hostile attempts were still hanging on.
    let first_healthy = healthy.received()[0].at;
    for account in holders {
        let gone = servers[account].wait_finished(1).await[0]
            .client_gone_at
            .unwrap();
        assert!(
            first_healthy < gone,
            "the healthy delivery waited for {account}'s first attempt to end"
        );
    }
    for latency in &latencies {
        assert!(
            *latency < TIMEOUT,
            "a healthy delivery took {latency:?}: {latencies:?}"
        );
    }

    // Each failing case: one delivery-log record with exactly one attempt per try (2 tries).
    let mut report = Vec::new();
    for (account, behaviour) in &failing {
        let logs = app.wait_for_logs(&format!("account_id={account}"), 1).await;
        assert_eq!(logs.len(), 1, "{account}: {logs:?}");
        assert_eq!(logs[0]["reason"], "exhausted", "{account}");
        let attempts = logs[0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{account}: {attempts:?}");
        let server = &servers[account];
        check_server(account, behaviour, server, 2).await;
        for (i, attempt) in attempts.iter().enumerate() {
            assert_eq!(attempt["attempt"], i + 1, "{account}");
            check_failed_attempt(account, behaviour, attempt);
            report.push(format!(
                "{account}: status={} error={} duration_ms={}",
                attempt["status"], attempt["error"], attempt["duration_ms"]
            ));
        }
    }
    assert_eq!(target.count(), 0, "a redirect was followed");

    // The 2xx cases: one successful attempt each, within the timeout, no log record.
    for (account, behaviour, _) in &succeeding {
        let logs = app
            .get(&format!("/v1/delivery-logs?account_id={account}"))
            .await
            .1;
        assert_eq!(
            logs["items"].as_array().unwrap().len(),
            0,
            "{account}: {logs}"
        );
        check_server(account, behaviour, &servers[account], 1).await;
    }

    let metrics = app.metrics().await;
    let count = |event: &str, outcome: &str| {
        metric_sum(
            &metrics,
            "webhook_delivery_attempts_total",
            &format!(r#"event="{event}",outcome="{outcome}""#),
        )
    };
    // hang ×2 | reset, tls ×2 | drip500, huge500, 301, 302, 307 ×2
    assert_eq!(count("purchase", "timeout"), 2.0, "{metrics}");
    assert_eq!(count("purchase", "connect_error"), 4.0, "{metrics}");
    assert_eq!(count("purchase", "http_error"), 10.0, "{metrics}");
    assert_eq!(count("purchase", "success"), 0.0, "{metrics}");
    for (_, behaviour, event) in &succeeding {
        assert_eq!(count(event, "success"), 1.0, "{metrics}");
        let seconds = metric_sum(
            &metrics,
            "webhook_delivery_duration_seconds_sum",
            &format!(r#"event="{event}""#),
        );
        report.push(format!("{behaviour:?}: success, duration {seconds:.3} s"));
        let limit = match behaviour {
            // The drip is cut off by the timeout: it ends no later than just past it.
            Behaviour::Drip(_) => TIMEOUT + LATE,
            // The huge body is cut off at the read cap: quickly, not by the timeout.
            _ => TIMEOUT / 2,
        };
        assert!(
            seconds < limit.as_secs_f64(),
            "{behaviour:?} attempt took {seconds} s"
        );
    }
    assert_eq!(count("identify", "success"), latencies.len() as f64);
    for (account, _) in failing.iter() {
        report.push(format!(
            "{account} server: {:?}",
            servers[account].finished()
        ));
    }
    for (account, _, _) in succeeding.iter() {
        report.push(format!(
            "{account} server: {:?}",
            servers[account].finished()
        ));
    }
    println!("{}", report.join("\n"));
    app.stop().await.unwrap();
}

/// The recorded attempt matches what the endpoint did.
fn check_failed_attempt(account: &str, behaviour: &Behaviour, attempt: &Value) {
    let status = attempt["status"].as_u64();
    let error = attempt["error"].as_str().unwrap_or_default();
    let duration = attempt["duration_ms"].as_u64().unwrap();
    let context = format!("{account}: {attempt}");
    match behaviour {
        Behaviour::Hang => {
            assert_eq!(status, None, "{context}");
            assert_eq!(
                error,
                format!(
                    "no complete answer within {}",
                    humantime::format_duration(TIMEOUT)
                ),
                "{context}"
            );
            assert!(duration >= ms(TIMEOUT) - 10, "{context}");
            assert!(duration < ms(TIMEOUT + LATE), "{context}");
        }
        Behaviour::Reset => {
            assert_eq!(status, None, "{context}");
            assert!(error.contains("reset"), "{context}");
            assert!(duration < ms(TIMEOUT / 2), "{context}");
        }
        Behaviour::Drip(code) => {
            // The status line came in time: classified by status. The body never ends, so
            // reading it is cut off by the timeout.
            assert_eq!(status, Some(u64::from(*code)), "{context}");
            assert_eq!(error, format!("endpoint answered HTTP {code}"), "{context}");
            assert!(duration >= ms(TIMEOUT) - 10, "{context}");
            assert!(duration < ms(TIMEOUT + LATE), "{context}");
        }
        Behaviour::Huge(code) => {
            assert_eq!(status, Some(u64::from(*code)), "{context}");
            assert_eq!(error, format!("endpoint answered HTTP {code}"), "{context}");
            assert!(duration < ms(TIMEOUT / 2), "{context}");
        }
        Behaviour::Redirect(code, _) => {
            assert_eq!(status, Some(u64::from(*code)), "{context}");
            assert_eq!(error, format!("endpoint answered HTTP {code}"), "{context}");
            assert!(duration < ms(TIMEOUT / 2), "{context}");
        }
        Behaviour::SelfSignedTls => {
            assert_eq!(status, None, "{context}");
            assert!(error.contains("certificate"), "{context}");
            assert!(duration < ms(TIMEOUT / 2), "{context}");
        }
    }
}

/// The server saw one request (or connection) per try and nothing more, and the client hung up
/// as it should.
async fn check_server(account: &str, behaviour: &Behaviour, server: &Hostile, tries: usize) {
    let conns = match behaviour {
        // A kept-alive connection stays open in the service's pool.
        Behaviour::Redirect(..) => Vec::new(),
        _ => server.wait_finished(tries).await,
    };
    let context = format!("{account}: {conns:?}");
    match behaviour {
        Behaviour::Reset => {
            assert_eq!(server.connections(), tries, "{context}");
            assert_eq!(server.requests(), 0, "{context}");
        }
        Behaviour::SelfSignedTls => {
            assert_eq!(server.connections(), tries, "{context}");
            assert_eq!(conns.len(), tries, "{context}");
            assert_eq!(server.requests(), 0, "{context}");
        }
        Behaviour::Redirect(..) => {
            // Connections may be reused: count requests.
            assert_eq!(server.requests(), tries, "{context}");
        }
        Behaviour::Hang | Behaviour::Drip(_) => {
            assert_eq!(server.requests(), tries, "{context}");
            assert_eq!(server.connections(), tries, "{context}");
            for conn in &conns {
                let held = conn.client_gone_at.unwrap() - conn.request_at.unwrap();
                // The client hung up at the timeout (a failed write can notice it up to two
                // drips later), not much after; and not early (the recorded duration shows
                // the attempt lasted the whole timeout).
                assert!(held >= TIMEOUT / 2, "{context}");
                assert!(held < TIMEOUT + LATE, "{context}");
            }
        }
        Behaviour::Huge(_) => {
            assert_eq!(server.requests(), tries, "{context}");
            assert_eq!(server.connections(), tries, "{context}");
            for conn in &conns {
                assert!(!conn.completed, "the whole 10 MB body was read: {context}");
                assert!(conn.written < HUGE_WRITTEN_LIMIT, "{context}");
            }
        }
    }
}
