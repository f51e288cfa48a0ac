//! End-to-end benchmark: the service (release binary, as a child process) against the ceiling of
//! the same machine and broker, measured in the same run.
//!
//! `cargo bench --bench pipeline [-- --events N] [-- --quick] [-- --classic]`
//!
//! Scenarios (one Markdown row each):
//! 1. ceiling    — a bare loop in this process: consume persistent messages, POST each body to
//!    the receiver, ack; same prefetch and concurrency as the service.
//! 2. throughput — the service: N preloaded events, one matching subscription each.
//! 3. latency    — the service: 2,000 events/s paced for 30 s, publish → receipt percentiles.
//! 4. fan-out    — the service: each event matches 50 subscriptions.
//! 5. isolation  — the service: 10 % of events go to an endpoint that hangs past the timeout;
//!    throughput to the healthy endpoint as a ratio of scenario 2.
//! 6. memory     — peak RSS (VmHWM) of the service process over scenarios 2 and 3.
//!
//! `--quick` runs everything small (under a minute) and only checks that every delivery arrives:
//! CI runs it as a smoke test.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

const MAX_IN_FLIGHT: usize = 512;
const FAN_OUT: usize = 50;
const HANG: Duration = Duration::from_secs(11);

struct Options {
    events: usize,
    quick: bool,
    classic: bool,
    latency_rate: u64,
    latency_secs: u64,
    /// Scenarios to run (`--only 1,2`); all by default. Memory needs 2 and 3.
    only: Vec<u32>,
    /// AMQP prefetch of the ceiling loop and the service (`--prefetch N`, default: the service's).
    prefetch: u16,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let quick = args.iter().any(|a| a == "--quick");
        let classic = args.iter().any(|a| a == "--classic");
        let default_events = if quick { 2_000 } else { 50_000 };
        let events = value("--events").map_or(default_events, |n| {
            n.parse().expect("--events takes a number")
        });
        let only = value("--only").map_or_else(
            || vec![1, 2, 3, 4, 5, 6],
            |list| {
                list.split(',')
                    .map(|n| n.trim().parse().expect("--only takes 1,2,…"))
                    .collect()
            },
        );
        let prefetch =
            value("--prefetch").map_or(512, |n| n.parse().expect("--prefetch takes a number"));
        let latency_secs = if quick { 3 } else { 30 };
        Options {
            events,
            quick,
            classic,
            latency_rate: 2_000,
            latency_secs,
            only,
            prefetch,
        }
    }

    fn runs(&self, scenario: u32) -> bool {
        self.only.contains(&scenario)
    }

    fn queue_type(&self) -> &'static str {
        if self.classic { "classic" } else { "quorum" }
    }
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A ~400-byte event shaped like `visitor_enriched.json`, carrying its sequence number and send time.
fn event(account: &str, seq: usize) -> Vec<u8> {
    format!(
        r#"{{"event":"visitor_enriched","timestamp":"2026-03-23T14:30:00Z","account_id":"{account}","data":{{"visitor_id":"v_{seq:08}","company":{{"name":"Acme Corp","domain":"acme.com","industry":"Software","size":"201-500","revenue":"$50M-$100M","location":"San Francisco, CA"}},"enterprise_score":75,"enrichment_source":"peopledatalabs","seq":{seq},"sent_us":{}}}}}"#,
        unix_micros()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Receiver: answers 200 at once on /ok (counting, and recording latency when asked), hangs on /hang.

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    hang: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    latencies: Mutex<Option<Vec<u64>>>,
}

impl Counters {
    fn reset(&self) {
        self.ok.store(0, Ordering::SeqCst);
        self.hang.store(0, Ordering::SeqCst);
        self.first_us.store(0, Ordering::SeqCst);
        self.last_us.store(0, Ordering::SeqCst);
        *self.latencies.lock().unwrap() = None;
    }

    /// Seconds between the first and the last `/ok` receipt.
    fn span_secs(&self) -> f64 {
        let (first, last) = (
            self.first_us.load(Ordering::SeqCst),
            self.last_us.load(Ordering::SeqCst),
        );
        (last.saturating_sub(first)) as f64 / 1e6
    }
}

async fn ok(State(c): State<Arc<Counters>>, body: Bytes) -> &'static str {
    let now = unix_micros();
    let _ = c
        .first_us
        .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    c.last_us.fetch_max(now, Ordering::SeqCst);
    c.ok.fetch_add(1, Ordering::SeqCst);
    if let Some(lat) = c.latencies.lock().unwrap().as_mut()
        && let Some(sent) = sent_us(&body)
    {
        lat.push(now.saturating_sub(sent));
    }
    "ok"
}

async fn hang(State(c): State<Arc<Counters>>) -> &'static str {
    c.hang.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(HANG).await;
    "late"
}

fn sent_us(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"sent_us\":")? + 10;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

async fn start_receiver() -> (SocketAddr, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let app = Router::new()
        .route("/ok", post(ok))
        .route("/hang", post(hang))
        .with_state(counters.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, counters)
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "benchmark timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Broker helpers.

async fn channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

/// Publishes persistent messages with confirms, pipelined in windows of 1,000.
async fn publish_all(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    bodies: impl Iterator<Item = Vec<u8>>,
) {
    let mut pending = Vec::with_capacity(1000);
    for body in bodies {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() == 1000 {
            for c in join_all(pending.drain(..)).await {
                assert!(c.unwrap().is_ack(), "broker refused a benchmark message");
            }
        }
    }
    for c in join_all(pending).await {
        assert!(c.unwrap().is_ack());
    }
}

fn queue_args(o: &Options) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(o.queue_type().as_bytes().to_vec().into()),
    );
    args
}

// ---------------------------------------------------------------------------------------------
// Scenario 1: the ceiling.

/// The bare loop: consume, POST the body, ack — the least any dispatcher must do per message.
/// Its HTTP pool keeps a connection per concurrent request, so it never reconnects mid-run.
/// Runs until its channel closes; counts acks in `acked`.
fn bare_loop(
    mut consumer: lapin::Consumer,
    url: String,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build()
        .unwrap();
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let permit = limit.clone().acquire_owned().await.unwrap();
            let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
            tokio::spawn(async move {
                let resp = client
                    .post(&url)
                    .body(delivery.data)
                    .send()
                    .await
                    .expect("receiver answers");
                assert!(resp.status().is_success());
                if delivery.acker.ack(BasicAckOptions::default()).await.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                drop(permit);
            });
        }
    })
}

/// A fresh queue for the bare loop, `preload` messages published into it, then a consumer on it
/// with the benchmark's prefetch.
async fn bare_queue(
    o: &Options,
    conn: &Connection,
    label: &str,
    preload: usize,
) -> (String, Channel, lapin::Consumer) {
    let queue = format!("bench-{}.{label}", uuid::Uuid::new_v4().simple());
    let ch = channel(conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, queue_args(o))
        .await
        .unwrap();
    publish_all(&ch, "", &queue, (0..preload).map(|i| event(label, i))).await;
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(o.prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            label.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (queue, consumer_ch, consumer)
}

async fn drop_queue(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// Scenario 1: the bare loop over N preloaded persistent messages.
async fn ceiling(
    o: &Options,
    conn: &Connection,
    receiver: SocketAddr,
    counters: &Arc<Counters>,
) -> f64 {
    let (queue, consumer_ch, consumer) = bare_queue(o, conn, "ceiling", o.events).await;
    counters.reset();
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let worker = bare_loop(consumer, format!("http://{receiver}/ok"), acked.clone());
    // Done when every message is acked, as for the service (which acks after the POST).
    wait_for("the ceiling loop", Duration::from_secs(600), || {
        acked.load(Ordering::SeqCst) as usize >= o.events
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(counters.ok.load(Ordering::SeqCst) as usize, o.events);
    let _ = consumer_ch.close(200, "done".into()).await;
    let _ = worker.await;
    drop_queue(conn, &queue).await;
    o.events as f64 / elapsed
}

// ---------------------------------------------------------------------------------------------
// The service as a child process.

struct Service {
    child: Option<Child>,
    api: String,
    prefix: String,
    exchange: String,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Service {
    async fn start_new(o: &Options) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("bench-{id}");
        let exchange = format!("bench-{id}.events");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let env = vec![
            ("AMQP_URL".into(), amqp_url()),
            (
                "DATABASE_URL".into(),
                format!("sqlite://{}", dir.path().join("bench.db").display()),
            ),
            ("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
            ("QUEUE_PREFIX".into(), prefix.clone()),
            ("EVENTS_EXCHANGE".into(), exchange.clone()),
            ("QUEUE_TYPE".into(), o.queue_type().into()),
            ("ALLOW_PRIVATE_TARGETS".into(), "true".into()),
            ("PREFETCH".into(), o.prefetch.to_string()),
            (
                "RUST_LOG".into(),
                std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        let mut service = Service {
            child: None,
            api: format!("http://127.0.0.1:{port}"),
            prefix,
            exchange,
            env,
            _dir: dir,
            http: reqwest::Client::new(),
        };
        service.start().await;
        service
    }

    async fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_webhook-dispatcher"))
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("service starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.api)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait: the queues stay for the next start.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The value of an unlabelled counter or gauge on the service's `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    async fn subscribe(&self, account: &str, url: &str) {
        let resp = self
            .http
            .post(format!("{}/v1/subscriptions", self.api))
            .json(&serde_json::json!({"account_id": account, "url": url, "events": ["*"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }

    async fn cleanup(mut self, conn: &Connection) {
        self.stop();
        let ch = conn.create_channel().await.unwrap();
        for q in ["events", "retry.2s", "retry.4s", "retry.8s", "dead"] {
            let _ = ch
                .queue_delete(
                    format!("{}.{q}", self.prefix).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
        let _ = ch
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Preloads `events` while the service is stopped, restarts it and measures deliveries/s over
/// the span between the first and the last receipt at `/ok`.
async fn preloaded_run(
    service: &mut Service,
    conn: &Connection,
    counters: &Arc<Counters>,
    bodies: Vec<Vec<u8>>,
    expected_ok: usize,
) -> f64 {
    service.stop();
    let ch = channel(conn).await;
    publish_all(
        &ch,
        &service.exchange,
        "visitor_enriched",
        bodies.into_iter(),
    )
    .await;
    counters.reset();
    service.start().await;
    wait_for("deliveries", Duration::from_secs(900), || {
        counters.ok.load(Ordering::SeqCst) as usize >= expected_ok
    })
    .await;
    expected_ok as f64 / counters.span_secs()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = Options::parse();
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL (docker compose up -d rabbitmq)");
    let (receiver, counters) = start_receiver().await;
    let ok_url = format!("http://{receiver}/ok");
    let n = o.events;

    println!(
        "\nwebhook-dispatcher pipeline benchmark — {} events, {} queues, prefetch {}{}\n",
        n,
        o.queue_type(),
        o.prefetch,
        if o.quick { ", quick" } else { "" }
    );
    println!("| scenario | measured | result | target |");
    println!("|---|---|---|---|");

    // 1. ceiling
    let mut ceiling_rate = f64::NAN;
    if o.runs(1) {
        ceiling_rate = ceiling(&o, &conn, receiver, &counters).await;
        println!(
            "| 1. ceiling (bare consume → POST → ack) | {n} messages | {ceiling_rate:.0} deliveries/s | — |"
        );
    }

    // 2. throughput, then 3 on the same service process (6 is its peak RSS over both)
    let mut service = Service::start_new(&o).await;
    service.subscribe("bench", &ok_url).await;
    let mut throughput = f64::NAN;
    if o.runs(2) {
        let bodies = (0..n).map(|i| event("bench", i)).collect();
        throughput = preloaded_run(&mut service, &conn, &counters, bodies, n).await;
        let deferred = service.metric("webhook_deliveries_deferred_total").await;
        println!(
            "| 2. throughput | {n} events → 1 subscription | {throughput:.0} deliveries/s = {:.2} × ceiling (deferred {deferred}) | ≥ 0.8 × ceiling |",
            throughput / ceiling_rate
        );
    }
    if o.runs(3) {
        latency(&o, &service, &conn, &counters, receiver).await;
    }
    let peak_kib = service.peak_rss_kib();
    service.cleanup(&conn).await;

    if o.runs(4) {
        fan_out(&o, &conn, &counters, &ok_url, ceiling_rate).await;
    }
    if o.runs(5) {
        isolation(&o, &conn, &counters, receiver, throughput).await;
    }
    if o.runs(6) {
        println!(
            "| 6. memory | peak RSS of the service over scenarios 2–3 | {:.1} MiB | ≤ 64 MiB |",
            peak_kib as f64 / 1024.0
        );
    }
    println!();
    let _ = conn.close(200, "done".into()).await;
}

/// Scenario 3: paced publishing, publish → receipt percentiles.
/// Publishes `rate` events/s for `secs` seconds to `exchange`/`routing_key` and returns the
/// publish → receipt latencies (µs), sorted.
async fn paced(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    exchange: &str,
    routing_key: &str,
) -> Vec<u64> {
    counters.reset();
    *counters.latencies.lock().unwrap() = Some(Vec::new());
    let total = (o.latency_rate * o.latency_secs) as usize;
    let ch = channel(conn).await;
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / o.latency_rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &event("bench", i),
                props,
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() >= 500 {
            let batch = std::mem::take(&mut pending);
            tokio::spawn(async move { join_all(batch).await });
        }
    }
    join_all(pending).await;
    wait_for("paced deliveries", Duration::from_secs(120), || {
        counters.ok.load(Ordering::SeqCst) as usize >= total
    })
    .await;
    let mut lat = counters.latencies.lock().unwrap().take().unwrap();
    lat.sort_unstable();
    lat
}

fn latency_cells(lat: &[u64]) -> String {
    format!(
        "p50 {:.1} ms · p95 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
        percentile(lat, 0.50),
        percentile(lat, 0.95),
        percentile(lat, 0.99),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0
    )
}

/// Scenario 3: the service under a paced load, with the bare loop under the same load for
/// reference (what the broker and this machine add on their own).
async fn latency(
    o: &Options,
    service: &Service,
    conn: &Connection,
    counters: &Arc<Counters>,
    receiver: SocketAddr,
) {
    let (queue, consumer_ch, consumer) = bare_queue(o, conn, "latency", 0).await;
    let worker = bare_loop(consumer, format!("http://{receiver}/ok"), Arc::default());
    let reference = paced(o, conn, counters, "", &queue).await;
    let _ = consumer_ch.close(200, "done".into()).await;
    let _ = worker.await;
    drop_queue(conn, &queue).await;

    let lat = paced(o, conn, counters, &service.exchange, "visitor_enriched").await;
    let total = lat.len();
    println!(
        "| 3. latency | {} events/s for {} s ({total} events) | {} (bare loop, same load: {}) | p99 ≤ 25 ms |",
        o.latency_rate,
        o.latency_secs,
        latency_cells(&lat),
        latency_cells(&reference)
    );
}

async fn fan_out(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    ok_url: &str,
    ceiling_rate: f64,
) {
    let n = o.events;
    let mut service = Service::start_new(o).await;
    for _ in 0..FAN_OUT {
        service.subscribe("fan", ok_url).await;
    }
    let fan_events = (n / FAN_OUT).max(1);
    let bodies = (0..fan_events).map(|i| event("fan", i)).collect();
    let fan_rate = preloaded_run(&mut service, conn, counters, bodies, fan_events * FAN_OUT).await;
    let deferred = service.metric("webhook_deliveries_deferred_total").await;
    println!(
        "| 4. fan-out | {fan_events} events → {FAN_OUT} subscriptions ({} deliveries) | {fan_rate:.0} deliveries/s = {:.2} × ceiling (deferred {deferred}) | ≥ 0.8 × ceiling |",
        fan_events * FAN_OUT,
        fan_rate / ceiling_rate
    );
    service.cleanup(conn).await;
}

async fn isolation(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    receiver: SocketAddr,
    throughput: f64,
) {
    let n = o.events;
    let mut service = Service::start_new(o).await;
    service
        .subscribe("healthy", &format!("http://{receiver}/ok"))
        .await;
    service
        .subscribe("hanging", &format!("http://{receiver}/hang"))
        .await;
    let healthy = n - n / 10;
    let bodies = (0..n)
        .map(|i| {
            if i % 10 == 9 {
                event("hanging", i)
            } else {
                event("healthy", i)
            }
        })
        .collect();
    let iso_rate = preloaded_run(&mut service, conn, counters, bodies, healthy).await;
    let deferred = service.metric("webhook_deliveries_deferred_total").await;
    println!(
        "| 5. isolation | {healthy} healthy + {} to an endpoint hanging past the 10 s timeout | {iso_rate:.0} healthy deliveries/s = {:.2} × scenario 2 (deferred {deferred}) | ≥ 0.9 × scenario 2 |",
        n - healthy,
        iso_rate / throughput
    );
    service.cleanup(conn).await;
}
