//! `spawn_app()`: the real service in-process on port 0, with its own prefix, exchange and
//! SQLite file, and the requests tests make to it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use clap::Parser;
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use webhook_dispatcher::{App, Config};

use super::{
    PATIENCE, amqp_url, confirm_channel, delete_topology, fixture, require_broker, unique,
    wait_until,
};

/// The SQLite file a [`TestApp`]'s store is in, in its own folder.
const DB_FILE: &str = "test.db";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    cfg: Config,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub prefix: String,
    pub exchange: String,
    pub queues: Vec<String>,
    publisher: lapin::Channel,
    _conn: Connection,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    cleaned: bool,
}

/// A config with test defaults: the given queue prefix and exchange, a SQLite file in `dir`,
/// port 0, private targets allowed (receivers are on loopback). `extra` are more `--flag value`
/// pairs; a flag given there replaces the default.
pub fn test_config(prefix: &str, exchange: &str, dir: &std::path::Path, extra: &[&str]) -> Config {
    try_test_config(prefix, exchange, dir, extra).unwrap_or_else(|e| panic!("{e}"))
}

/// [`test_config`], with clap's error when the arguments do not parse.
pub fn try_test_config(
    prefix: &str,
    exchange: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> Result<Config, clap::Error> {
    let defaults = [
        ("--amqp-url", amqp_url()),
        (
            "--database-url",
            format!("sqlite://{}", dir.join(DB_FILE).display()),
        ),
        ("--listen-addr", "127.0.0.1:0".into()),
        ("--queue-prefix", prefix.to_string()),
        ("--events-exchange", exchange.to_string()),
        ("--allow-private-targets", "true".into()),
        ("--log-format", "pretty".into()),
    ];
    let mut args = vec!["webhook-dispatcher".to_string()];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), value]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Cli::try_parse_from(args).map(|cli| cli.cfg)
}

/// The service with test defaults (see [`test_config`]): its own prefix/exchange/SQLite file, port 0, private targets
/// allowed (receivers are on loopback). `extra` are more `--flag value` arguments.
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let amqp = amqp_url();
    require_broker(&amqp).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = unique("q");
    let exchange = unique("x");
    let cfg = test_config(&prefix, &exchange, dir.path(), extra);
    // The names in use (`extra` may have chosen them).
    let prefix = cfg.queues.queue_prefix.clone();
    let exchange = cfg.exchange.events_exchange.clone();
    let queues: Vec<String> = {
        let topology = webhook_dispatcher::broker::Topology::new(&cfg);
        topology.queues().into_iter().map(String::from).collect()
    };
    let app = App::build(cfg).await.expect("app builds");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run(shutdown.clone()));

    let (conn, publisher) = confirm_channel(&amqp).await;
    let test = TestApp {
        addr,
        http: reqwest::Client::new(),
        prefix,
        exchange,
        queues,
        publisher,
        _conn: conn,
        shutdown,
        handle: Some(handle),
        _dir: dir,
        cleaned: false,
    };
    // Ready means connected, topology declared and consuming.
    wait_until("the service to be ready", PATIENCE, || async {
        test.http
            .get(test.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    test
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The service's SQLite store, for a test that edits a row by hand ([`super::edit_store`]).
    pub fn db_path(&self) -> std::path::PathBuf {
        self._dir.path().join(DB_FILE)
    }

    /// Publishes like a producer: persistent, to the exchange, routing key = `routing_key`,
    /// waiting for the broker's confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        self.publish_with(routing_key, body, BasicProperties::default())
            .await;
    }

    pub async fn publish_with(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        let confirm = self
            .publisher
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker did not confirm the test publish");
    }

    /// Publishes a fixture from `shared/fixtures/events/` (or the copy under `tests/fixtures/`).
    pub async fn publish_fixture(&self, name: &str) -> String {
        let body = fixture(name);
        self.publish(name, body.as_bytes()).await;
        body
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("API request");
        let status = resp.status();
        let text = resp.text().await.expect("API body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("API answers JSON")
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates a subscription and returns it (with its secret).
    pub async fn subscribe(&self, account: &str, url: &str, events: &[&str]) -> Value {
        let (status, sub) = self
            .post(
                "/v1/subscriptions",
                serde_json::json!({ "account_id": account, "url": url, "events": events }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{sub}");
        sub
    }

    /// Waits until the delivery log filtered by `query` holds at least `n` records.
    pub async fn wait_for_logs(&self, query: &str, n: usize) -> Vec<Value> {
        let path = format!("/v1/delivery-logs?{query}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (_, body) = self.get(&path).await;
            let items = body["items"].as_array().cloned().unwrap_or_default();
            if items.len() >= n {
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} delivery-log records for {query:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Graceful stop; returns what `App::run` returned. Deletes the test's queues and exchange.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let result = self.shut_down().await;
        self.cleanup().await;
        result
    }

    /// Graceful stop that leaves the queues and exchange for the test to inspect; the test
    /// deletes them with [`delete_topology`].
    pub async fn stop_keeping_topology(mut self) -> anyhow::Result<()> {
        let result = self.shut_down().await;
        self.cleaned = true;
        result
    }

    async fn shut_down(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.handle.take().expect("running"))
            .await
            .expect("the service stops within the patience window")
            .expect("the service task does not panic")
    }

    async fn cleanup(&mut self) {
        for queue in &self.queues {
            let _ = self
                .publisher
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let control = format!("{}.control", self.prefix);
        for exchange in [&self.exchange, &control] {
            let _ = self
                .publisher
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        self.cleaned = true;
    }
}

impl Drop for TestApp {
    /// A test that panicked still leaves nothing on the shared broker.
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self.cleaned {
            return;
        }
        let queues = self.queues.clone();
        let exchange = self.exchange.clone();
        delete_topology(queues, exchange);
    }
}
