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

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::{confirm_channel, free_port};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
/// Boot is ~7 s on an idle machine; two cores shared with parallel builds make it 15 s or more.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// A graceful stop takes ~1 s; past this the node's process group is killed.
const STOP_LIMIT: Duration = Duration::from_secs(30);

pub struct PrivateBroker {
    node: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    /// uid, gid and home of the `rabbitmq` user when the tests run as root.
    user: Option<(u32, u32, PathBuf)>,
    /// The `rabbitmq-server` script: leader of the node's process group, parent of `beam.smp`.
    server: Option<Child>,
    watchdog: Option<Child>,
    boot_time: Duration,
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
                let _ = conn.close(200, "ready".into()).await;
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

    /// Config files of the node's own, everything owned by the user the node runs as.
    fn write_files(&self, plugins: &[&str], conf: &str) {
        for sub in ["", "mnesia", "log"] {
            fs::create_dir(self.dir.join(sub)).expect("private broker folder");
        }
        let files = [
            (
                "rabbitmq.conf",
                format!(
                    "listeners.tcp.default = 127.0.0.1:{}\nlog.console = false\nlog.file.level = info\n{conf}",
                    self.port
                ),
            ),
            ("advanced.config", "[].\n".into()),
            ("enabled_plugins", format!("[{}].\n", plugins.join(","))),
            // Replaces /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost, ...).
            ("rabbitmq-env.conf", "# private test node\n".into()),
        ];
        for (name, text) in files {
            fs::write(self.dir.join(name), text).expect("private broker file");
        }
        if let Some((uid, gid, _)) = self.user {
            for entry in ["", "mnesia", "log"]
                .iter()
                .map(|s| self.dir.join(s))
                .chain(files_in(&self.dir))
            {
                std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).expect("chown");
            }
        }
    }

    /// The environment the node and `rabbitmqctl` share: nothing inherited that could point at
    /// the shared node.
    fn prepare(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("RABBITMQ_") || key.starts_with("ERL_") {
                cmd.env_remove(key.as_ref());
            }
        }
        let d = |name: &str| self.dir.join(name).into_os_string();
        let env: [(&str, OsString); 14] = [
            ("RABBITMQ_NODENAME", self.node.clone().into()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", self.port.to_string().into()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string().into()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
            ("RABBITMQ_PID_FILE", d("node.pid")),
            ("ERL_CRASH_DUMP", d("erl_crash.dump")),
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
            ("LANG", "C.UTF-8".into()),
        ];
        cmd.envs(env).current_dir(&self.dir);
        if let Some((uid, gid, home)) = &self.user {
            // The rabbitmq user's home holds the Erlang cookie both sides need.
            cmd.uid(*uid).gid(*gid).env("HOME", home);
        }
    }

    fn spawn_server(&self) -> Child {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .expect("server.out");
        if let Some((uid, gid, _)) = self.user {
            let _ = std::os::unix::fs::chown(self.dir.join("server.out"), Some(uid), Some(gid));
        }
        let mut cmd = Command::new(SERVER);
        self.prepare(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("server.out"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server starts")
    }

    /// Kills the node and removes its folder if this test process dies without `Drop`. In a
    /// process group of its own so a ctrl-c on the terminal does not take it down as well.
    fn spawn_watchdog(&self) -> Child {
        const SCRIPT: &str = r#"
            while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done
            [ -d "$2" ] || exit 0
            pg=$(cat "$2/server.pgid" 2>/dev/null) && [ -n "$pg" ] && kill -KILL "-$pg" 2>/dev/null
            sleep 2
            rm -rf "$2"
        "#;
        Command::new("/bin/sh")
            .args(["-c", SCRIPT, "wdtest-watchdog"])
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("watchdog starts")
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

fn signal_group(group: i32, signal: i32) {
    // SAFETY: plain syscall; the group is one this process created and has not reaped yet.
    unsafe { libc::kill(-group, signal) };
}

/// Whether any process of the group is still there.
fn group_alive(group: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(-group, 0) == 0 }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// The `rabbitmq` user to run the node as, when the tests run as root.
fn rabbitmq_user() -> Option<(u32, u32, PathBuf)> {
    // SAFETY: geteuid cannot fail; getpwnam returns a pointer to static storage or null, read
    // at once (tests that race on getpwnam read the same entry).
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"rabbitmq".as_ptr());
        if pw.is_null() {
            return None;
        }
        let home = std::ffi::CStr::from_ptr((*pw).pw_dir)
            .to_string_lossy()
            .into_owned();
        Some(((*pw).pw_uid, (*pw).pw_gid, PathBuf::from(home)))
    }
}

/// Declares a durable quorum queue on `channel`.
async fn declare_quorum(channel: &lapin::Channel, name: &str) -> lapin::Queue {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("quorum queue declared")
}

#[tokio::test]
async fn a_private_node_keeps_durable_messages_across_a_restart() {
    let mut broker = PrivateBroker::start().await;
    println!(
        "private_broker node={} port={} boot_ms={}",
        broker.node(),
        broker.port(),
        broker.boot_time().as_millis()
    );
    let ctl = broker.ctl(&["await_startup"]).await;
    assert!(
        ctl.status.success(),
        "rabbitmqctl cannot talk to {}: {}{}",
        broker.node(),
        String::from_utf8_lossy(&ctl.stdout),
        String::from_utf8_lossy(&ctl.stderr)
    );

    let messages: Vec<String> = (0..20).map(|i| format!("message-{i}")).collect();
    let (conn, channel) = confirm_channel(&broker.amqp_url()).await;
    declare_quorum(&channel, "wdtest.durable").await;
    for body in &messages {
        let confirm = channel
            .basic_publish(
                "".into(),
                "wdtest.durable".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the node confirms {body}");
    }
    let _ = conn.close(200, "bye".into()).await;

    broker.stop().await;
    assert!(
        Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
            .await
            .is_err(),
        "a stopped node refuses connections"
    );
    broker.start_again().await;
    println!(
        "private_broker node={} restart_boot_ms={}",
        broker.node(),
        broker.boot_time().as_millis()
    );

    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connects after the restart");
    let channel = conn.create_channel().await.unwrap();
    let queue = declare_quorum(&channel, "wdtest.durable").await;
    assert_eq!(queue.message_count() as usize, messages.len());
    let mut got = Vec::new();
    while let Some(msg) = channel
        .basic_get("wdtest.durable".into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        got.push(String::from_utf8(msg.delivery.data.clone()).unwrap());
        msg.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(got, messages, "every confirmed message is back, in order");
    let _ = conn.close(200, "bye".into()).await;

    let dir = broker.dir().to_path_buf();
    let pid_file = dir.join("node.pid");
    let beam: i32 = fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .unwrap();
    drop(broker);
    assert!(!dir.exists(), "{} is removed", dir.display());
    // SAFETY: existence check only.
    assert!(
        unsafe { libc::kill(beam, 0) } != 0,
        "beam {beam} is gone after drop"
    );
}
