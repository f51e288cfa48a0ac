//! [`PrivateBroker`]: a RabbitMQ node of the test's own, which it can stop and start again
//! mid-test without touching the shared broker.
//!
//! Each node has its own name (`wdtest-<pid>-<n>@localhost`), AMQP and distribution ports, data
//! and log folders, config, advanced config, plugins file (empty unless `start_with` names
//! plugins), env file and pid file, so several run side by side and next to the shared node. It
//! runs as the `rabbitmq` user when the tests run as root (the server refuses nothing as root, but
//! the shared cookie in `/var/lib/rabbitmq` then works for `rabbitmqctl` too), in a process group
//! of its own, so stopping it can never reach another process. A small watchdog kills the node and
//! removes its folder if the test process dies without running `Drop` (SIGKILL, ctrl-c).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};

use super::private_node::{group_alive, rabbitmq_user, signal_group};
use super::{closed, free_port};

pub(super) const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
pub(super) const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
/// Boot is ~7 s on an idle machine; two cores shared with parallel builds make it 15 s or more.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// A graceful stop takes ~1 s; past this the node's process group is killed.
const STOP_LIMIT: Duration = Duration::from_secs(30);

pub struct PrivateBroker {
    pub(super) node: String,
    pub(super) port: u16,
    pub(super) dist_port: u16,
    pub(super) dir: PathBuf,
    /// uid, gid and home of the `rabbitmq` user when the tests run as root.
    pub(super) user: Option<(u32, u32, PathBuf)>,
    /// The `rabbitmq-server` script: leader of the node's process group, parent of `beam.smp`.
    pub(super) server: Option<Child>,
    pub(super) watchdog: Option<Child>,
    pub(super) boot_time: Duration,
}

impl PrivateBroker {
    /// Boots a fresh node and returns once it accepts AMQP connections.
    pub async fn start() -> PrivateBroker {
        PrivateBroker::start_with(&[], "").await
    }

    /// [`PrivateBroker::start`] with `plugins` enabled and `conf` appended to its
    /// `rabbitmq.conf` (e.g. a plugin's listener port).
    pub async fn start_with(plugins: &[&str], conf: &str) -> PrivateBroker {
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: these tests need a local RabbitMQ install (apt-get install rabbitmq-server)"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "wdtest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!(
            "{id}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let port = free_port();
        let mut broker = PrivateBroker {
            node: format!("{id}@localhost"),
            port,
            dist_port: free_port(),
            dir,
            user: rabbitmq_user(),
            server: None,
            watchdog: None,
            boot_time: Duration::ZERO,
        };
        broker.write_files(plugins, conf);
        broker.watchdog = Some(broker.spawn_watchdog());
        broker.boot().await;
        broker
    }

    /// Boots the node again on the same name, ports and data folder: durable queues and their
    /// persistent messages are back.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "{} is already running", self.node);
        self.boot().await;
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the node runs (it was not stopped).
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// How long the last (re)start took until the node accepted an AMQP connection.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Stops the node gracefully (SIGTERM to its own `rabbitmq-server`, which relays it to the
    /// VM) and returns once every process of the node has exited and the port is closed.
    pub async fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let group = server.id() as i32;
        signal_group(group, libc::SIGTERM);
        let deadline = Instant::now() + STOP_LIMIT;
        while group_alive(group) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = server.try_wait(); // reap the script as soon as it exits
        }
        if group_alive(group) {
            eprintln!(
                "{} did not stop within {STOP_LIMIT:?}; killing it",
                self.node
            );
            signal_group(group, libc::SIGKILL);
        }
        let _ = server.wait();
        let _ = fs::remove_file(self.dir.join("server.pgid"));
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_err(),
            "port {} still open after {} stopped",
            self.port,
            self.node
        );
    }

    /// Runs `rabbitmqctl -n NODE args` the way the node runs (same user, cookie and env).
    pub async fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(CTL);
        self.prepare(&mut cmd);
        cmd.arg("-n").arg(&self.node).args(args);
        tokio::process::Command::from(cmd)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("rabbitmqctl runs")
    }

    /// The last lines of the node's console output and log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        let log = self.dir.join("log").join(format!("{}.log", self.node));
        for file in [self.dir.join("server.out"), log] {
            let text = fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            tail += &format!("--- {}\n", file.display());
            for line in &lines[lines.len().saturating_sub(30)..] {
                tail += line;
                tail.push('\n');
            }
        }
        tail
    }

    async fn boot(&mut self) {
        let started = Instant::now();
        let server = self.spawn_server();
        fs::write(self.dir.join("server.pgid"), server.id().to_string()).expect("pgid file");
        self.server = Some(server);
        let url = self.amqp_url();
        loop {
            let exited = self
                .server
                .as_mut()
                .and_then(|s| s.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.server = None;
                panic!(
                    "{} exited during boot ({status}):\n{}",
                    self.node,
                    self.log_tail()
                );
            }
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                Connection::connect(&url, ConnectionProperties::default()),
            )
            .await;
            if let Ok(Ok(conn)) = attempt {
                closed(conn.close(200, "ready".into())).await;
                break;
            }
            assert!(
                started.elapsed() < BOOT_LIMIT,
                "{} did not accept connections within {BOOT_LIMIT:?}:\n{}",
                self.node,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.boot_time = started.elapsed();
    }
}

impl Drop for PrivateBroker {
    /// Kills what is left of the node (no grace needed: its data goes too) and removes its
    /// folder, also when the test panicked.
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let group = server.id() as i32;
            signal_group(group, libc::SIGKILL);
            let _ = server.wait();
            let deadline = Instant::now() + Duration::from_secs(10);
            while group_alive(group) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            signal_group(watchdog.id() as i32, libc::SIGKILL);
            let _ = watchdog.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
