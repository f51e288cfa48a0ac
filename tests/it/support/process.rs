//! [`ServiceProcess`]: the real service binary as a child process that a test can SIGTERM,
//! SIGKILL and restart on the same store, queues and port.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{PATIENCE, amqp_url, delete_topology_at, free_port, sqlite_url, test_config, unique};

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
    pub(super) env: Vec<(String, String)>,
    child: Option<Child>,
    exited: Option<ExitStatus>,
    starts: u32,
    /// Whether dropping it deletes its queues and exchange (not a replica's: see
    /// [`ServiceProcess::shares_topology`]).
    owns_topology: bool,
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
        // Replicas of one service share a prefix and an exchange the test passes in `env`.
        let var = |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .expect("set above")
        };
        let (prefix, exchange) = (var("QUEUE_PREFIX"), var("EVENTS_EXCHANGE"));
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
            owns_topology: true,
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
        // `WEBHOOK_DISPATCHER_BIN` runs another build (the benchmark's before/after comparisons).
        let bin = std::env::var_os("WEBHOOK_DISPATCHER_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_webhook-dispatcher").into());
        let mut cmd = Command::new(&bin);
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
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawning the service binary {}: {e}",
                Path::new(&bin).display()
            )
        });
        self.child = Some(child);
        self.exited = None;
    }

    fn start_marker(&self) -> String {
        format!("===== test harness: start #{} =====", self.starts)
    }

    /// Leaves its queues and exchange in place when it is dropped: a replica shares them with
    /// others, and deleting a quorum queue with at-least-once dead-lettering while another
    /// replica declares it again crashes RabbitMQ 3.10's dead-letter supervisor for good (every
    /// later such queue then fails). Whoever owns the replicas deletes the topology once all are
    /// gone.
    pub fn shares_topology(&mut self) {
        self.owns_topology = false;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("spawned").id()
    }

    /// The process's peak resident memory (`VmHWM`), in KiB; 0 if it cannot be read.
    #[allow(dead_code)] // the benchmark's
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time (user + system) the process has used so far, in seconds; 0 if it cannot be read.
    #[allow(dead_code)] // the benchmark's
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at state; utime and stime
        // are the 14th and 15th fields overall, in clock ticks (100 a second on Linux).
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return 0.0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
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
        // Never spawned (the binary could not be started): nothing runs, nothing to reap.
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
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
        if self.owns_topology {
            delete_topology_at(
                self.broker_url.clone(),
                self.queues.clone(),
                self.exchange.clone(),
            );
        }
    }
}
