//! The README's operations walkthrough, run as written: every ```` ```sh ```` block between
//! `<!-- walkthrough:begin -->` and `<!-- walkthrough:end -->`, in order, with bash. A block whose
//! first line says "leave it running" is started in the background (the reader's second
//! terminal) and the next block waits until it is ready (a service: `/readyz`; a receiver: its
//! port). Only what keeps parallel tests apart is
//! changed: `cargo run -q --` becomes the built binary, the queue prefix, exchange and admin port
//! come from the environment, ports 8080 and 9999 become free ones, and the current folder (where
//! the default SQLite store is created) is a temp dir.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{PATIENCE, amqp_url, delete_topology, free_port, test_config, unique};

const BEGIN: &str = "<!-- walkthrough:begin -->";
const END: &str = "<!-- walkthrough:end -->";

/// The shell blocks of the README's walkthrough.
fn walkthrough_blocks(readme: &str) -> Vec<String> {
    let start = readme
        .find(BEGIN)
        .expect("README has a walkthrough:begin marker");
    let end = readme[start..]
        .find(END)
        .map(|i| start + i)
        .expect("README has a walkthrough:end marker after the begin marker");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme[start..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().expect("open block")),
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        current.is_none(),
        "a ```sh block in the walkthrough is not closed"
    );
    blocks
}

/// A background block's process group, killed on drop.
struct Background {
    child: Child,
    log: std::path::PathBuf,
}

impl Background {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: signalling a process group this test started; no memory is involved.
        unsafe { libc::killpg(group, libc::SIGTERM) };
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::killpg(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

struct Topology {
    queues: Vec<String>,
    exchange: String,
}

impl Drop for Topology {
    fn drop(&mut self) {
        delete_topology(std::mem::take(&mut self.queues), self.exchange.clone());
    }
}

/// Waits until the service at `port` says it is ready (connected, queues declared and bound):
/// listening is not enough, a publish before the binding exists is unroutable.
async fn wait_for_ready(port: u16, background: &Background) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let url = format!("http://127.0.0.1:{port}/readyz");
    while !matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service was not ready within {PATIENCE:?}; its output:\n{}",
            background.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_port(port: u16, what: &str, background: &Background) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not listen on port {port} within {PATIENCE:?}; its output:\n{}",
            background.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_readme_outage_and_replay_walkthrough_works_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let blocks = walkthrough_blocks(&readme);
    assert!(
        blocks.len() >= 5,
        "the walkthrough has its steps: {blocks:?}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = unique("walk");
    let exchange = unique("walkx");
    let api_port = free_port();
    let hook_port = free_port();
    let cfg = test_config(&prefix, &exchange, dir.path(), &[]);
    let _topology = Topology {
        queues: webhook_dispatcher::broker::Topology::new(&cfg)
            .queues()
            .into_iter()
            .map(String::from)
            .collect(),
        exchange: exchange.clone(),
    };
    let bin = env!("CARGO_BIN_EXE_webhook-dispatcher");
    let env = [
        ("AMQP_URL", amqp_url()),
        ("QUEUE_PREFIX", prefix.clone()),
        ("EVENTS_EXCHANGE", exchange.clone()),
        ("LISTEN_ADDR", format!("127.0.0.1:{api_port}")),
        ("LOG_FORMAT", "pretty".to_string()),
    ];
    let localize = |block: &str| {
        block
            .replace("cargo run -q --", &format!("'{bin}'"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{api_port}"))
            .replace("9999", &hook_port.to_string())
    };
    let command = |script: &str| {
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", script])
            .current_dir(dir.path())
            .env_remove("ADMIN_TOKEN")
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    };

    let mut background: Vec<Background> = Vec::new();
    let mut receiver: Option<usize> = None;
    let mut published: Vec<String> = Vec::new();
    let mut replay_output = String::new();
    for (n, block) in blocks.iter().enumerate() {
        let script = localize(block);
        if block
            .lines()
            .next()
            .unwrap_or("")
            .contains("leave it running")
        {
            let log = dir.path().join(format!("background-{n}.log"));
            let out = std::fs::File::create(&log).expect("log file");
            let child = command(&script)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log file"))
                .stderr(out)
                .process_group(0)
                .spawn()
                .expect("bash runs");
            let started = Background { child, log };
            if script.contains(" serve") {
                wait_for_ready(api_port, &started).await;
            } else {
                wait_for_port(hook_port, "the receiver", &started).await;
                receiver = Some(background.len());
            }
            background.push(started);
            continue;
        }
        let out = tokio::task::spawn_blocking({
            let mut cmd = command(&script);
            move || cmd.stdin(Stdio::null()).output().expect("bash runs")
        })
        .await
        .expect("block ran");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "walkthrough block {n} failed ({}):\n{block}\nstdout:\n{stdout}\nstderr:\n{}\nservice:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            background
                .iter()
                .map(Background::output)
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        if block.contains(" publish ") {
            published.extend(stdout.lines().map(|l| l.trim().to_string()));
        }
        if block.contains(" replay ") && !block.contains("--dry-run") {
            replay_output.push_str(&stdout);
        }
    }

    assert!(
        !published.is_empty(),
        "the walkthrough publishes events and prints their ids"
    );
    assert!(
        replay_output.contains(&format!(
            "replayed {}, skipped 0, failed 0",
            published.len()
        )),
        "the replay step replayed every published event: {replay_output}"
    );
    // The receiver printed one line per delivery, starting with its webhook-id.
    let receiver = receiver.expect("the walkthrough starts a receiver");
    let receiver = &background[receiver];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut received: Vec<String>;
    loop {
        received = receiver
            .output()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect();
        if received.len() >= published.len() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut expected = published.clone();
    expected.sort();
    received.sort();
    assert_eq!(
        received, expected,
        "the receiver got each published event once, after the replay, under its own id"
    );

    // The delivery log shows every record replayed.
    let logs: Value = reqwest::get(format!(
        "http://127.0.0.1:{api_port}/v1/delivery-logs?account_id=acct_acme"
    ))
    .await
    .expect("API answers")
    .json()
    .await
    .expect("JSON");
    let items = logs["items"].as_array().expect("items");
    assert_eq!(items.len(), published.len(), "one record per event: {logs}");
    assert!(
        items.iter().all(|r| r["replayed_at"].is_string()),
        "every record is marked replayed: {logs}"
    );
}
