//! The broker and the PostgreSQL server every test shares, started by the tests themselves when
//! none answers: `cargo test` needs nothing started by hand.
//!
//! [`amqp_url`] is `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`) when a broker
//! there takes a connection; otherwise the first call boots a [`PrivateBroker`] for the whole
//! test process (one boot, ~7 s) and every test uses that. [`admin_url`] does the same for
//! `POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), with a cluster of its
//! own (`initdb`, trust authentication, no fsync) from the local PostgreSQL installation. Neither
//! is ever stopped by hand: each has a watchdog that kills it and removes its folder once this
//! process has exited, however it ended. What is not installed fails with the command that
//! installs it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection as _;

use super::private_broker::{CTL, PrivateBroker};
use super::private_node::spawn_watchdog;
use super::{closed, free_port};

/// How long a server already there gets to take a connection before the tests start their own.
const PROBE: Duration = Duration::from_secs(5);

/// The broker the tests share.
pub fn amqp_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let default = "amqp://guest:guest@127.0.0.1:5672/%2f";
        let probe = |url: String| async move {
            let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            closed(conn.close(200, "probe".into())).await;
            Ok(())
        };
        url_or_stand_in("RabbitMQ", "AMQP_URL", default, probe, || {
            BROKER
                .get_or_init(|| on_own_runtime(PrivateBroker::start()))
                .amqp_url()
        })
    })
    .clone()
}

/// The node the tests started in place of the shared broker, if they had to.
static BROKER: OnceLock<PrivateBroker> = OnceLock::new();

/// `rabbitmqctl` for the broker at [`amqp_url`]: the machine's node, or the one the tests
/// started (same user, cookie and environment as that node).
pub fn shared_rabbitmqctl() -> Command {
    let _ = amqp_url();
    match BROKER.get() {
        Some(broker) => {
            let mut cmd = Command::new(CTL);
            broker.prepare(&mut cmd);
            cmd.arg("-n").arg(broker.node());
            cmd
        }
        None => Command::new("rabbitmqctl"),
    }
}

/// `rabbitmqctl` against the shared node, failing with the command's output.
pub fn rabbitmqctl(args: &[&str]) -> Output {
    let out = shared_rabbitmqctl()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("rabbitmqctl could not run ({e}): this test needs the RabbitMQ CLI next to the shared broker")
        });
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `rabbitmqctl list_… --formatter json` as JSON rows.
pub fn rabbitmqctl_list(what: &str, vhost: &str, columns: &[&str]) -> Vec<Value> {
    let mut args = vec![what, "-p", vhost, "-q", "--formatter", "json"];
    args.extend_from_slice(columns);
    let out = rabbitmqctl(&args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rabbitmqctl {what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The PostgreSQL server the tests share: an admin connection URL.
pub fn admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let default = "postgres://postgres@127.0.0.1:5432/postgres";
        let probe = |url: String| async move {
            let conn = sqlx::PgConnection::connect(&url)
                .await
                .map_err(|e| e.to_string())?;
            let _ = conn.close().await;
            Ok(())
        };
        url_or_stand_in("PostgreSQL", "POSTGRES_URL", default, probe, || {
            static SERVER: OnceLock<PrivatePostgres> = OnceLock::new();
            SERVER.get_or_init(PrivatePostgres::start).url()
        })
    })
    .clone()
}

/// `var` (else `default`) when `probe` connects to it within [`PROBE`]; otherwise what `start`
/// returns, the URL of a server started for this test run.
fn url_or_stand_in<P, Fut>(
    what: &str,
    var: &str,
    default: &str,
    probe: P,
    start: impl FnOnce() -> String,
) -> String
where
    P: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let wanted = std::env::var(var).unwrap_or_else(|_| default.into());
    let probing = probe(wanted.clone());
    let answered = on_own_runtime(async move {
        tokio::time::timeout(PROBE, probing)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PROBE:?}")))
    });
    match answered {
        Ok(()) => wanted,
        Err(why) => {
            eprintln!("no {what} at {var}={wanted} ({why}); starting one for this test run");
            start()
        }
    }
}

/// Runs `work` to completion on a runtime of its own, on a thread of its own: the callers are
/// synchronous and often already inside a test's runtime, which must not be blocked in.
fn on_own_runtime<F>(work: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A PostgreSQL cluster of this test process's own: trust authentication on 127.0.0.1 and a
/// socket in its folder, run as the `postgres` user when the tests run as root (the server
/// refuses root).
struct PrivatePostgres {
    port: u16,
    _server: Child,
    _watchdog: Child,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let bin = postgres_bindir();
        let dir = std::env::temp_dir().join(format!(
            "wdtest-pg-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir(&dir).expect("private PostgreSQL folder");
        let user = postgres_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown");
        }
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
            cmd.env_remove("PGDATA").current_dir(&dir);
        };
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        as_user(&mut initdb);
        let out = initdb
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).expect("server.log");
        let mut server = Command::new(bin.join("postgres"));
        as_user(&mut server);
        let server = server
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server.log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("postgres starts");
        let watchdog = watchdog(server.id(), &dir);
        let started = PrivatePostgres {
            port,
            _server: server,
            _watchdog: watchdog,
        };
        let url = started.url();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = on_own_runtime({
                let url = url.clone();
                async move { sqlx::PgConnection::connect(&url).await.is_ok() }
            });
            if ready {
                return started;
            }
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL did not take connections within 60 s: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

/// Where `initdb` and `postgres` are: `PG_BINDIR`, Debian's newest
/// `/usr/lib/postgresql/N/bin`, or `pg_config --bindir`.
fn postgres_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return bin;
    }
    let configured = Command::new("pg_config").arg("--bindir").output();
    if let Ok(out) = configured
        && out.status.success()
    {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if bin.join("initdb").exists() {
            return bin;
        }
    }
    panic!(
        "no PostgreSQL answers at POSTGRES_URL and none is installed to start one: \
         apt-get install -y postgresql (or set POSTGRES_URL, or PG_BINDIR to the folder of initdb)"
    )
}

/// uid and gid of the `postgres` user when the tests run as root.
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail; getpwnam returns a pointer to static storage or null, read at
    // once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "the tests run as root and PostgreSQL refuses root: there is no `postgres` user to \
             run it as (apt-get install -y postgresql creates it)"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// Kills the server's process group and removes `dir` once this test process has exited.
fn watchdog(server: u32, dir: &Path) -> Child {
    const SCRIPT: &str = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        kill -TERM "-$2" 2>/dev/null
        sleep 2
        kill -KILL "-$2" 2>/dev/null
        rm -rf "$3"
    "#;
    spawn_watchdog(SCRIPT, &[server.to_string().as_ref(), dir.as_os_str()])
}
