//! Harness for fault injection: the real service binary as a child process that a test can
//! SIGTERM, SIGKILL and restart on the same store and queues, plus a load harness (a receiver
//! that counts deliveries per `webhook-id`, a confirmed bulk publisher, and the report line).

use std::collections::HashMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};

use crate::helpers::{
    PATIENCE, amqp_url, confirm_channel, delete_topology_at, free_port, metric_sum, serve_receiver,
    test_config, unique, wait_until,
};

/// Events per load test: `FAULT_EVENTS`, else 2000.
pub fn fault_events() -> usize {
    match std::env::var("FAULT_EVENTS") {
        Err(_) => 2000,
        Ok(raw) => raw
            .parse()
            .ok()
            .filter(|&n: &usize| n >= 24)
            .unwrap_or_else(|| {
                panic!("FAULT_EVENTS={raw:?}: expected a number of events, 24 or more")
            }),
    }
}

/// The service binary running as a child process with its own queue prefix, exchange, SQLite
/// file (in a temp dir) and admin port. Dropping it kills the process and deletes its queues and
/// exchange on its broker, also when the test panicked.
pub struct ServiceProcess {
    pub addr: SocketAddr,
    pub prefix: String,
    pub exchange: String,
    /// Every queue the service declares (events, delay queues, dead).
    pub queues: Vec<String>,
    pub http: reqwest::Client,
    /// The broker the queues live on, reached directly (the service's own `AMQP_URL` may be a
    /// proxy in front of it).
    broker_url: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    exited: Option<ExitStatus>,
    starts: u32,
    log_path: PathBuf,
    db_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts the service on the shared broker with test defaults overridden by `env`
    /// (`("MAX_IN_FLIGHT", "64")`, …) and waits until `/readyz` says 200.
    pub async fn start(env: &[(&str, &str)]) -> ServiceProcess {
        ServiceProcess::start_on(&amqp_url(), env).await
    }

    /// [`ServiceProcess::start`] on the broker at `broker_url` (a private node): the service's
    /// default `AMQP_URL`, and where `Drop` deletes its queues and exchange.
    pub async fn start_on(broker_url: &str, env: &[(&str, &str)]) -> ServiceProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_path = dir.path().join("service.db");
        let prefix = unique("fq");
        let exchange = unique("fx");
        let port = free_port();
        let mut vars: Vec<(String, String)> = [
            ("AMQP_URL", broker_url.to_string()),
            ("DATABASE_URL", sqlite_url(&db_path)),
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("QUEUE_PREFIX", prefix.clone()),
            ("EVENTS_EXCHANGE", exchange.clone()),
            ("ALLOW_PRIVATE_TARGETS", "true".into()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (key, value) in env {
            vars.retain(|(k, _)| k != key);
            vars.push((key.to_string(), value.to_string()));
        }
        // The queue names come from the service's own topology for the same settings (every
        // setting's flag is its variable's name in lower case with dashes).
        let flags: Vec<String> = vars
            .iter()
            .filter(|(k, _)| k != "RUST_LOG")
            .flat_map(|(k, v)| {
                [
                    format!("--{}", k.to_lowercase().replace('_', "-")),
                    v.clone(),
                ]
            })
            .collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let cfg = test_config(&prefix, &exchange, dir.path(), &flags);
        let queues = webhook_dispatcher::broker::Topology::new(&cfg)
            .queues()
            .into_iter()
            .map(String::from)
            .collect();
        let mut service = ServiceProcess {
            addr: cfg.listen_addr,
            prefix,
            exchange,
            queues,
            http: reqwest::Client::new(),
            broker_url: broker_url.to_string(),
            env: vars,
            child: None,
            exited: None,
            starts: 0,
            log_path: dir.path().join("service.log"),
            db_path,
            _dir: dir,
        };
        service.spawn();
        service.wait_ready(PATIENCE).await;
        service
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("service log file");
        writeln!(log, "{}", self.start_marker()).expect("log marker");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_webhook-dispatcher"));
        cmd.arg("serve")
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log));
        // If the test process dies without running `Drop` (killed by a harness timeout), the
        // service dies with it instead of consuming the test's queues forever. The signal follows
        // the spawning thread, which for a tokio test is the test's own thread.
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawning the service binary"));
        self.exited = None;
    }

    fn start_marker(&self) -> String {
        format!("===== test harness: start #{} =====", self.starts)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("spawned").id()
    }

    /// The SQLite file, shared by every start.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    pub fn events_queue(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Everything every start wrote to stdout and stderr.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// What the current (latest) start wrote.
    pub fn current_logs(&self) -> String {
        let all = self.logs();
        let marker = self.start_marker();
        match all.rfind(&marker) {
            Some(at) => all[at + marker.len()..].to_string(),
            None => all,
        }
    }

    /// The last lines of the log, for failure messages.
    fn log_tail(&self) -> String {
        let all = self.logs();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn signal(&self, signal: libc::c_int) {
        assert!(self.exited.is_none(), "the service already exited");
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits");
        // SAFETY: plain kill(2) on our own, not yet reaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.as_mut().expect("spawned").try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Ok(None) => true,
            Err(e) => panic!("waiting for the service: {e}"),
        }
    }

    /// Waits for the process to exit, panicking (with the log's tail) after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "the service did not exit within {limit:?}; its log ends:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.exited.expect("exited")
    }

    /// Waits until `/readyz` answers 200; panics if the process exits first.
    pub async fn wait_ready(&mut self, limit: Duration) {
        assert!(
            self.ready_within(limit).await.is_some(),
            "the service was not ready within {limit:?}; its log ends:\n{}",
            self.log_tail()
        );
    }

    /// Polls `/readyz` every 20 ms and returns when it first answered 200, or `None` if it did
    /// not within `limit`; panics if the process exits first.
    pub async fn ready_within(&mut self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if self.readyz_status().await == Some(200) {
                return Some(Instant::now());
            }
            if !self.running() {
                panic!(
                    "the service exited ({:?}) before it was ready; its log ends:\n{}",
                    self.exited,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the service again after it exited: same environment, SQLite file, queue prefix,
    /// exchange and port. Waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(
            !self.running(),
            "restart() needs the previous process to have exited (sigterm/sigkill, then wait_exit)"
        );
        self.spawn();
        self.wait_ready(PATIENCE).await;
    }

    /// SIGTERM, then asserts a clean exit (status 0) within `limit`.
    pub async fn stop(&mut self, limit: Duration) {
        self.sigterm();
        let status = self.wait_exit(limit).await;
        assert!(
            status.success(),
            "graceful stop exited with {status}; log ends:\n{}",
            self.log_tail()
        );
    }

    pub async fn readyz_status(&self) -> Option<u16> {
        self.http
            .get(self.url("/readyz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub async fn metrics(&self) -> String {
        let resp = self
            .http
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .expect("GET /metrics");
        resp.text().await.expect("metrics body")
    }

    /// The sum of every series of metric `name` whose labels contain `label` (`""` for all).
    pub async fn metric_sum(&self, name: &str, label: &str) -> f64 {
        metric_sum(&self.metrics().await, name, label)
    }

    /// Runs the operator CLI, `webhook-dispatcher ARGS`, with this service's settings (broker,
    /// prefix, exchange, store); `stdin` is piped, so the CLI is not on a terminal.
    pub async fn cli(&self, args: &[&str], stdin: &[u8]) -> CliRun {
        run_cli(&self.env, args, stdin).await
    }

    /// [`cli`](Self::cli) with `extra` environment variables added (or replaced).
    pub async fn cli_with(&self, extra: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> CliRun {
        let mut env = self.env.clone();
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        run_cli(&env, args, stdin).await
    }

    /// [`cli`](Self::cli) for a command expected to take longer than [`PATIENCE`].
    pub async fn cli_within(&self, limit: Duration, args: &[&str], stdin: &[u8]) -> CliRun {
        run_cli_within(limit, &self.env, args, stdin).await
    }

    /// The operator CLI as a command to spawn (stdin, stdout and stderr null), with this
    /// service's settings; for tests that signal it while it runs.
    pub fn cli_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_webhook-dispatcher"));
        command
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// [`cli`](Self::cli) on a terminal: run under `script(1)`, which gives it a pseudo-terminal
    /// for stdin, stdout and stderr and copies `typed` to it as if typed. What it printed (both
    /// streams, with `\r\n` line ends and any terminal drawing) comes back in `stdout`.
    pub async fn cli_on_terminal(&self, args: &[&str], typed: &[u8]) -> CliRun {
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let command = std::iter::once(env!("CARGO_BIN_EXE_webhook-dispatcher"))
            .chain(args.iter().copied())
            .map(quote)
            .collect::<Vec<_>>()
            .join(" ");
        let mut env = self.env.clone();
        // A size, so progress bars have a width to draw in.
        env.extend(
            [("COLUMNS", "100"), ("LINES", "30"), ("TERM", "xterm")]
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
        let script = [
            "script",
            "--quiet",
            "--return",
            "--command",
            &command,
            "/dev/null",
        ];
        run_program_within(PATIENCE, &env, &script, typed).await
    }

    /// `POST path` with a JSON body: the status and the JSON answer (null when there is none).
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The delivery-log records matching `query` (at most 500), through the API.
    pub async fn delivery_logs(&self, query: &str) -> Vec<serde_json::Value> {
        let body: serde_json::Value = self
            .http
            .get(self.url(&format!("/v1/delivery-logs?limit=500&{query}")))
            .send()
            .await
            .expect("GET /v1/delivery-logs")
            .json()
            .await
            .expect("delivery-log JSON");
        body["items"].as_array().expect("items").clone()
    }

    /// Waits until at least `n` delivery-log records match `query`, and returns them all.
    pub async fn wait_for_logs(&self, query: &str, n: usize) -> Vec<serde_json::Value> {
        wait_until(
            &format!("{n} delivery-log records for {query:?}"),
            PATIENCE,
            || async { self.delivery_logs(query).await.len() >= n },
        )
        .await;
        self.delivery_logs(query).await
    }

    /// Creates a subscription for every event of `account` and returns its id.
    pub async fn subscribe(&self, account: &str, url: &str) -> String {
        let resp = self
            .http
            .post(self.url("/v1/subscriptions"))
            .json(&serde_json::json!({ "account_id": account, "url": url, "events": ["*"] }))
            .send()
            .await
            .expect("POST /v1/subscriptions");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("subscription JSON");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("subscription id").to_string()
    }

    /// Waits until the service has nothing left to do for a fault test's load (one subscription):
    /// [`Self::drained`], and every event it consumed either attempted or deferred (a deferral is
    /// consumed and comes back later). The count only balances within one broker session: a
    /// delivery abandoned when its connection died is consumed but never attempted.
    pub async fn wait_idle(&self, broker: &Producer, limit: Duration) {
        wait_until("the service to be idle", limit, || async {
            if !self.drained(broker).await {
                return false;
            }
            let metrics = self.metrics().await;
            metric_sum(&metrics, "webhook_events_consumed_total", "")
                == metric_sum(&metrics, "webhook_delivery_attempts_total", "")
                    + metric_sum(&metrics, "webhook_deliveries_deferred_total", "")
        })
        .await;
    }

    /// Nothing ready in the service's queues (delay queues included) and nothing in flight.
    pub async fn drained(&self, broker: &Producer) -> bool {
        for queue in &self.queues {
            if broker.ready(queue).await != 0 {
                return false;
            }
        }
        metric_sum(&self.metrics().await, "webhook_deliveries_in_flight", "") == 0.0
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.as_mut().map(Child::kill);
            let _ = self.child.as_mut().map(Child::wait);
        }
        if std::thread::panicking() {
            // The temp dir goes with the test: keep the whole log where cargo keeps test files.
            let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", self.prefix));
            let kept = match std::fs::copy(&self.log_path, &kept) {
                Ok(_) => kept.display().to_string(),
                Err(e) => format!("not kept: {e}"),
            };
            eprintln!(
                "service log (whole log: {kept}), last lines:\n{}",
                self.log_tail()
            );
        }
        delete_topology_at(
            self.broker_url.clone(),
            self.queues.clone(),
            self.exchange.clone(),
        );
    }
}

/// How a run of the CLI ended and what it printed.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Asserts the exit code, showing everything printed when it differs.
    pub fn expect_code(&self, code: i32) -> &CliRun {
        assert_eq!(self.code, code, "exit code of the CLI; {self:#?}");
        self
    }
}

/// Runs the service binary with `args` and only the environment `env`, feeding it `stdin`;
/// fails the test if it has not exited within [`PATIENCE`].
pub async fn run_cli(env: &[(String, String)], args: &[&str], stdin: &[u8]) -> CliRun {
    run_cli_within(PATIENCE, env, args, stdin).await
}

/// [`run_cli`], failing the test if the CLI has not exited within `limit`.
pub async fn run_cli_within(
    limit: Duration,
    env: &[(String, String)],
    args: &[&str],
    stdin: &[u8],
) -> CliRun {
    let program = [env!("CARGO_BIN_EXE_webhook-dispatcher")];
    let command: Vec<&str> = program.iter().chain(args).copied().collect();
    run_program_within(limit, env, &command, stdin).await
}

/// Runs `command` (program and arguments) with only the environment `env`, feeding it `stdin`.
async fn run_program_within(
    limit: Duration,
    env: &[(String, String)],
    command: &[&str],
    stdin: &[u8],
) -> CliRun {
    use tokio::io::AsyncWriteExt;
    let (program, args) = command.split_first().expect("a program");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the CLI");
    let mut input = child.stdin.take().expect("piped stdin");
    // A CLI that exits before reading its input (bad flags, say) closes the pipe: not an error.
    if let Err(e) = input.write_all(stdin).await
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        panic!("writing the CLI's stdin: {e}");
    }
    drop(input);
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not exit within {limit:?}"))
        .expect("the CLI's output");
    CliRun {
        code: output.status.code().expect("the CLI exited by itself"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// An HTTP endpoint that counts deliveries per `webhook-id`, so duplicates show.
#[derive(Clone)]
pub struct CountingReceiver {
    pub url: String,
    state: Arc<Counts>,
}

struct Counts {
    per_id: Mutex<HashMap<String, u32>>,
    total: AtomicUsize,
    status: StatusCode,
    delay: Duration,
}

impl CountingReceiver {
    /// Answers every request with `status` after `delay`.
    pub async fn start(status: u16, delay: Duration) -> CountingReceiver {
        let state = Arc::new(Counts {
            per_id: Mutex::default(),
            total: AtomicUsize::new(0),
            status: StatusCode::from_u16(status).expect("status"),
            delay,
        });
        let app = axum::Router::new()
            .fallback(count)
            .with_state(state.clone());
        let url = serve_receiver(app).await;
        CountingReceiver { url, state }
    }

    /// Distinct `webhook-id`s received.
    pub fn distinct(&self) -> usize {
        self.state.per_id.lock().unwrap().len()
    }

    /// Requests received.
    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    pub fn counts(&self) -> HashMap<String, u32> {
        self.state.per_id.lock().unwrap().clone()
    }

    /// Waits until `n` distinct ids arrived.
    pub async fn wait_distinct(&self, n: usize, limit: Duration) {
        wait_until(
            &format!("{n} distinct deliveries at {}", self.url),
            limit,
            || async { self.distinct() >= n },
        )
        .await;
    }
}

async fn count(State(state): State<Arc<Counts>>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    *state.per_id.lock().unwrap().entry(id).or_default() += 1;
    state.total.fetch_add(1, Ordering::SeqCst);
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    state.status
}

/// `n` unique event ids for one test.
pub fn event_ids(label: &str, n: usize) -> Vec<String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    (0..n)
        .map(|i| format!("evt_{label}_{}_{i:05}", &run[..8]))
        .collect()
}

/// The account every load event belongs to.
pub const LOAD_ACCOUNT: &str = "acct_load";

/// A producer on its own direct broker connection (never through a test's proxy), publishing
/// with confirms; also reads queue depths.
pub struct Producer {
    conn: Connection,
    channel: lapin::Channel,
    exchange: String,
}

impl Producer {
    /// A producer on the shared broker.
    pub async fn connect(exchange: &str) -> Producer {
        Producer::connect_to(&amqp_url(), exchange).await
    }

    /// A producer on the broker at `url` (a private node).
    pub async fn connect_to(url: &str, exchange: &str) -> Producer {
        let (conn, channel) = confirm_channel(url).await;
        Producer {
            conn,
            channel,
            exchange: exchange.to_string(),
        }
    }

    /// Publishes one persistent `purchase` event per id (the id is the body's `id` and the
    /// AMQP `message_id`), 100 at a time, and returns how many the broker confirmed.
    pub async fn publish_events(&self, ids: &[String]) -> usize {
        let mut confirmed = 0;
        for batch in ids.chunks(100) {
            let mut pending = Vec::with_capacity(batch.len());
            for (i, id) in batch.iter().enumerate() {
                let body = format!(
                    r#"{{"id":"{id}","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"{LOAD_ACCOUNT}","data":{{"visitor_id":"v_{i}","amount":299.00}}}}"#
                );
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(id.as_str().into());
                let confirm = self
                    .channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        "purchase".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        props,
                    )
                    .await
                    .expect("publish");
                pending.push(confirm);
            }
            for confirm in pending {
                if confirm.await.expect("confirm").is_ack() {
                    confirmed += 1;
                }
            }
        }
        confirmed
    }

    /// Messages ready in `queue` (a passive declare; unacked messages are not counted).
    pub async fn ready(&self, queue: &str) -> u32 {
        // A channel per probe: a failed passive declare closes its channel.
        let channel = self.conn.create_channel().await.expect("probe channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
        let _ = channel.close(200, "probed".into()).await;
        q.message_count()
    }
}

/// What a fault test measured; printed as one line.
pub struct Report {
    pub fault: &'static str,
    pub sent: usize,
    /// Distinct event ids that arrived.
    pub delivered: usize,
    pub lost: usize,
    /// Arrivals beyond the first of each id.
    pub duplicates: usize,
    /// From the end of the fault (restart launched, connection restored, store unlocked) until
    /// the service works again (see each test).
    pub recover: Duration,
    /// From the end of the fault until every event was handled.
    pub drain: Duration,
    /// Figures of one test's own, printed after the others as `name=value`.
    pub extra: Vec<(&'static str, String)>,
}

impl Report {
    /// Counts `counts` (arrivals per id) against the `ids` that were sent. Panics on an id that
    /// was never sent.
    pub fn new(
        fault: &'static str,
        ids: &[String],
        counts: &HashMap<String, u32>,
        recover: Duration,
        drain: Duration,
    ) -> Report {
        let sent: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let strangers: Vec<&String> = counts
            .keys()
            .filter(|id| !sent.contains(id.as_str()))
            .collect();
        assert!(
            strangers.is_empty(),
            "ids that were never sent arrived: {strangers:?}"
        );
        let delivered = counts.len();
        let duplicates = counts.values().map(|&n| n as usize - 1).sum();
        Report {
            fault,
            sent: ids.len(),
            delivered,
            lost: ids.len() - delivered,
            duplicates,
            recover,
            drain,
            extra: Vec::new(),
        }
    }

    /// Adds a figure of the test's own to the line.
    pub fn with(mut self, name: &'static str, value: impl fmt::Display) -> Report {
        self.extra.push((name, value.to_string()));
        self
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fault={} sent={} delivered={} lost={} duplicates={} recover_ms={} drain_ms={}",
            self.fault,
            self.sent,
            self.delivered,
            self.lost,
            self.duplicates,
            self.recover.as_millis(),
            self.drain.as_millis()
        )?;
        for (name, value) in &self.extra {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

/// Whether the process was killed by `signal`.
pub fn killed_by(status: ExitStatus, signal: libc::c_int) -> bool {
    status.signal() == Some(signal)
}

/// The `DATABASE_URL` of a SQLite file, for a test's own connection to a service's store.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}
