//! `spawn_app()` and friends: the real service in-process on port 0, a real broker, real HTTP
//! receivers whose answers can change mid-test, and bounded waits everywhere.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Parser;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use webhook_dispatcher::{App, Config};

/// Upper bound for any wait in a test that is not about timing.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Fails fast with instructions when no broker answers, instead of hanging.
async fn require_broker(url: &str) {
    let parsed = url::Url::parse(url).expect("AMQP_URL is a URL");
    let addr = format!(
        "{}:{}",
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port().unwrap_or(5672)
    );
    let reachable = matches!(
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(&addr)
        )
        .await,
        Ok(Ok(_))
    );
    assert!(
        reachable,
        "no RabbitMQ answers at {addr} (AMQP_URL={url}). The tests need a real broker: start one with \
         `docker compose up -d rabbitmq` (or `rabbitmq-server -detached` where RabbitMQ is installed), then run `cargo test` again."
    );
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    cfg: Config,
}

/// A unique name for this test's queues and exchange.
pub fn unique(label: &str) -> String {
    format!("test-{label}-{}", uuid::Uuid::new_v4().simple())
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
    let defaults = [
        ("--amqp-url", amqp_url()),
        (
            "--database-url",
            format!("sqlite://{}", dir.join("test.db").display()),
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
    Cli::parse_from(args).cfg
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
        let _ = self
            .publisher
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
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

/// Deletes queues and an exchange, from a thread with its own runtime so it works in `Drop`
/// and in async code alike.
pub fn delete_topology(queues: Vec<String>, exchange: String) {
    delete_topology_at(amqp_url(), queues, exchange);
}

/// [`delete_topology`] on the broker at `url`. Gives up after 10 s (a broker that is down or
/// stuck in its boot), and ignores queues and exchanges that do not exist.
pub fn delete_topology_at(url: String, queues: Vec<String>, exchange: String) {
    let _ = std::thread::spawn(move || delete_topology_now(url, queues, exchange)).join();
}

fn delete_topology_now(url: String, queues: Vec<String>, exchange: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let delete = async move {
        let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
            return;
        };
        let Ok(ch) = conn.create_channel().await else {
            return;
        };
        for queue in queues {
            let _ = ch
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = ch
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        let _ = conn.close(200, "bye".into()).await;
    };
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), delete).await });
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text of a fixture event, as shipped in `shared/fixtures/events/`.
pub fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/events/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_string()
}

/// What a receiver gets for a fixture: the producer's text without `account_id`.
pub fn expected_body(fixture_text: &str) -> String {
    let without = fixture_text.replacen(r#""account_id":"acct_acme","#, "", 1);
    assert_ne!(without, fixture_text, "fixture has the expected account_id");
    without
}

pub const EVENTS: [&str; 6] = [
    "purchase",
    "identify",
    "goal_achieved",
    "enterprise_alert",
    "visitor_enriched",
    "high_intent_visitor",
];

/// How a receiver answers.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// Sleep, then answer with the status.
    Slow(Duration, u16),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    script: VecDeque<Reply>,
    default: Option<Reply>,
}

/// Serves `app` on a free loopback port; returns the URL receivers give out (`…/hooks`).
pub async fn serve_receiver(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver port");
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A real HTTP endpoint on 127.0.0.1:0 that records every request. It answers from its script
/// first, then with its default (200 unless changed).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let url = serve_receiver(app).await;
        Receiver { url, state }
    }

    /// Answers every later request with `reply`.
    pub fn always(&self, reply: Reply) {
        let mut state = self.state.lock().unwrap();
        state.default = Some(reply);
        state.script.clear();
    }

    /// Answers the next requests with `replies`, in order, then with the default.
    pub fn script(&self, replies: &[Reply]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(replies.iter().copied());
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// Waits until at least `n` requests arrived, within `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        wait_until(&format!("{n} requests at {}", self.url), limit, || async {
            self.count() >= n
        })
        .await;
        self.received()
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let reply = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            at: Instant::now(),
            headers,
            body,
        });
        s.script
            .pop_front()
            .or(s.default)
            .unwrap_or(Reply::Status(200))
    };
    let status = match reply {
        Reply::Status(code) => code,
        Reply::Slow(pause, code) => {
            tokio::time::sleep(pause).await;
            code
        }
    };
    StatusCode::from_u16(status).expect("valid status")
}

/// Whether `secret` verifies `received` the way a receiver would, with the stock Standard
/// Webhooks library.
pub fn signature_verifies(secret: &str, received: &Received) -> bool {
    let wh = standardwebhooks::Webhook::new(secret).expect("secret parses");
    let mut headers = HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, received.header(name).parse().expect("header value"));
    }
    wh.verify(&received.body, &headers).is_ok()
}

/// Verifies a request the way a receiver would, with the stock Standard Webhooks library.
pub fn verify_signature(secret: &str, received: &Received) {
    assert!(
        signature_verifies(secret, received),
        "signature verifies with the standardwebhooks crate"
    );
}

/// Sum of the series of `name` in a Prometheus text page whose labels contain `label` (`""`
/// for all); 0 when there is none.
pub fn metric_sum(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels),
                None => (series, ""),
            };
            (metric == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Publishes each (body, properties) pair (persistent, confirmed) to `exchange` with `routing_key`.
pub async fn publish_messages(
    exchange: &str,
    routing_key: &str,
    messages: &[(Vec<u8>, lapin::BasicProperties)],
) {
    let (_conn, channel) = confirm_channel(&amqp_url()).await;
    for (body, props) in messages {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                Default::default(),
                body,
                props.clone().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker took the message");
    }
}

/// A port nothing listens on, below the ephemeral range so no outgoing connection takes it
/// while its owner is down (a broker node being restarted), and never handed out twice by this
/// process.
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(20000);
    let mut taken = TAKEN.lock().unwrap();
    loop {
        let port = rand::random_range(10000..ephemeral_low);
        if port % 10000 == 5672 || port % 10000 == 4369 || taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
}

/// A connection to the broker at `url` and a channel on it in publisher-confirm mode.
pub async fn confirm_channel(url: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("test connection to the broker");
    let channel = conn.create_channel().await.expect("test channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    (conn, channel)
}

/// A TCP proxy in front of the broker that can cut every connection and refuse new ones.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// A proxy to the broker at [`amqp_url`].
    pub async fn to_broker() -> Proxy {
        let broker = url::Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
        let upstream = format!(
            "{}:{}",
            broker.host_str().expect("AMQP_URL has a host"),
            broker.port().unwrap_or(5672)
        );
        Proxy::start(upstream).await
    }

    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, l) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let upstream = upstream.clone();
                l.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy { addr, open, links }
    }

    /// [`amqp_url`] with its port pointed at this proxy.
    pub fn amqp_url(&self) -> String {
        let mut url = url::Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
        url.set_port(Some(self.addr.port()))
            .expect("port is settable");
        url.to_string()
    }

    /// Drops every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// A dead letter as the dispatcher writes one for an exhausted `purchase` delivery of
/// `event_id` to `subscription_id` of `account`, dead-lettered now.
pub fn exhausted_purchase(
    event_id: &str,
    account: &str,
    subscription_id: &str,
) -> webhook_dispatcher::wire::DeadLetter {
    webhook_dispatcher::wire::DeadLetter {
        id: webhook_dispatcher::wire::new_dead_letter_id(),
        event_id: event_id.to_string(),
        account_id: Some(account.into()),
        subscription_id: Some(subscription_id.into()),
        url: Some("https://example.com/hooks".into()),
        event: Some("purchase".into()),
        payload: webhook_dispatcher::wire::raw_payload(
            br#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","data":{"visitor_id":"v"}}"#,
        ),
        reason: "exhausted".into(),
        detail: None,
        attempts: Vec::new(),
        dead_lettered_at: webhook_dispatcher::time::now_rfc3339(),
    }
}
