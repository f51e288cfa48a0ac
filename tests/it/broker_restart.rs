//! Fault test: the broker node is stopped mid-load and started again. The real service binary
//! runs against a [`PrivateBroker`]; nothing published with a confirm may be lost, and the
//! service must be consuming again soon after the node accepts connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::private_broker::{PrivateBroker, free_port};

/// How soon after the node accepts connections the service must be consuming again.
const RECONNECT_LIMIT: Duration = Duration::from_secs(5);

/// The service binary as a child process (killed on drop), with its log in a temp folder.
struct ServiceProcess {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServiceProcess {
    async fn spawn(amqp_url: &str) -> ServiceProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.path().join("service.log");
        let out = std::fs::File::create(&log).expect("service log");
        let db = format!("sqlite://{}", dir.path().join("service.db").display());
        let child = Command::new(env!("CARGO_BIN_EXE_webhook-dispatcher"))
            .arg("serve")
            .env_clear()
            .envs([
                ("AMQP_URL", amqp_url),
                ("QUEUE_PREFIX", "wdfault"),
                ("EVENTS_EXCHANGE", "wdfault.events"),
                ("DATABASE_URL", db.as_str()),
                ("LISTEN_ADDR", addr.to_string().as_str()),
                ("ALLOW_PRIVATE_TARGETS", "true"),
                ("LOG_FORMAT", "json"),
                ("RUST_LOG", "info"),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("service log"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("the service binary starts");
        let service = ServiceProcess {
            child,
            addr,
            http: reqwest::Client::new(),
            log,
            _dir: dir,
        };
        let ready = service.wait_ready(PATIENCE).await;
        assert!(
            ready.is_some(),
            "the service never got ready:\n{}",
            service.log_tail()
        );
        service
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn ready(&self) -> Option<bool> {
        let resp = self.http.get(self.url("/readyz")).send().await.ok()?;
        Some(resp.status() == 200)
    }

    /// Polls `/readyz` every 10 ms; when it says 200 within `limit`.
    async fn wait_ready(&self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.ready().await == Some(true) {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    async fn metrics(&self) -> String {
        let resp = self.http.get(self.url("/metrics")).send().await;
        match resp {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, then wait for a graceful exit.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain syscall on our own child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the service stops on SIGTERM")
            .expect("wait");
        assert!(
            status.success(),
            "service exit {status}:\n{}",
            self.log_tail()
        );
    }
}

/// Requests per `webhook-id`.
fn count_by_id(received: &[Received]) -> HashMap<String, usize> {
    let mut by_id = HashMap::new();
    for r in received {
        *by_id.entry(r.header("webhook-id").to_string()).or_default() += 1;
    }
    by_id
}

fn event_body(i: usize) -> String {
    format!(
        r#"{{"id":"evt_fault_{i:05}","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"acct_fault","data":{{"visitor_id":"v_{i}","amount":{i}}}}}"#
    )
}

// Multi-threaded so the in-process receiver answers promptly while the test polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_load_loses_nothing() {
    let n: usize = std::env::var("FAULT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut broker = PrivateBroker::start().await;
    let service = ServiceProcess::spawn(&broker.amqp_url()).await;
    let receiver = Receiver::start().await;
    let created = service
        .http
        .post(service.url("/v1/subscriptions"))
        .json(&serde_json::json!({
            "account_id": "acct_fault", "url": receiver.url, "events": ["*"]
        }))
        .send()
        .await
        .expect("subscription request");
    assert_eq!(created.status(), 201);

    // Publish everything with confirms (pipelined), before the fault.
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("publisher connects");
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(n);
    for i in 0..n {
        let confirm = channel
            .basic_publish(
                "wdfault.events".into(),
                "purchase".into(),
                BasicPublishOptions::default(),
                event_body(i).as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirm").is_ack(), "broker nacked");
    }
    let _ = conn.close(200, "published".into()).await;

    // Stop the node while deliveries are in full swing.
    wait_until("a quarter of the events delivered", PATIENCE, || async {
        receiver.count() >= n / 4
    })
    .await;
    let delivered_at_stop = receiver.count();
    let stop_began = Instant::now();
    broker.stop().await;
    let stop_ms = stop_began.elapsed().as_millis();
    wait_until("/readyz to say 503", PATIENCE, || async {
        service.ready().await == Some(false)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    broker.start_again().await;
    let accepting = Instant::now();
    let ready_at = service.wait_ready(Duration::from_secs(60)).await;
    let reconnect = ready_at.map(|t| t.saturating_duration_since(accepting));

    // Every event at least once: wait for the stragglers (redeliveries, retries).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let by_id = count_by_id(&receiver.received());
        if by_id.len() >= n || Instant::now() > deadline || ready_at.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let late duplicates land before counting them.
    let drain_ms = accepting.elapsed().as_millis();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = service.metrics().await;
    let deferred = metrics
        .lines()
        .find_map(|l| l.strip_prefix("webhook_deliveries_deferred_total "))
        .unwrap_or("?")
        .to_string();
    // FAULT_KEEP_LOG=FILE keeps the service's log for a look afterwards.
    if let Ok(keep) = std::env::var("FAULT_KEEP_LOG") {
        let _ = std::fs::copy(&service.log, keep);
    }
    let received = receiver.received();
    let by_id = count_by_id(&received);
    let expected: Vec<String> = (0..n).map(|i| format!("evt_fault_{i:05}")).collect();
    let lost: Vec<&String> = expected
        .iter()
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    let duplicates = received.len() - by_id.len();
    println!(
        "fault=broker_restart sent={n} delivered={} lost={} duplicates={duplicates} reconnect_ms={} \
         delivered_at_stop={delivered_at_stop} stop_ms={stop_ms} restart_boot_ms={} drain_ms={drain_ms} deferred={deferred}",
        by_id.len(),
        lost.len(),
        reconnect.map_or("none".to_string(), |d| d.as_millis().to_string()),
        broker.boot_time().as_millis(),
    );

    let reconnect = reconnect.unwrap_or_else(|| {
        panic!(
            "the service did not reconnect within 60 s of the node accepting connections:\n{}",
            service.log_tail()
        )
    });
    assert!(
        reconnect <= RECONNECT_LIMIT,
        "the service took {reconnect:?} to reconnect (limit {RECONNECT_LIMIT:?}):\n{}",
        service.log_tail()
    );
    // The gauge follows the broker loop, a moment after /readyz.
    wait_until("webhook_broker_connected 1", RECONNECT_LIMIT, || async {
        service
            .metrics()
            .await
            .contains("webhook_broker_connected 1")
    })
    .await;
    assert!(
        lost.is_empty(),
        "{} events never delivered, e.g. {:?}:\n{}",
        lost.len(),
        &lost[..lost.len().min(5)],
        service.log_tail()
    );
    assert!(
        by_id.keys().all(|id| id.starts_with("evt_fault_")),
        "only the published events arrive"
    );
    service.stop().await;
}
