//! What every test shares: unique names, free ports, bounded waits (the broker's and PostgreSQL's
//! URLs are `stand_in`'s).

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bound for any wait in a test that is not about timing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Fails fast with instructions when no broker answers, instead of hanging.
pub(crate) async fn require_broker(url: &str) {
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

/// A unique name for this test's queues and exchange.
pub fn unique(label: &str) -> String {
    format!("test-{label}-{}", uuid::Uuid::new_v4().simple())
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

/// Polls `check` every 20 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_every(what, limit, Duration::from_millis(20), check).await;
}

/// [`wait_until`], polling every `poll` (the benchmark times with a finer one).
pub async fn wait_until_every<F, Fut>(what: &str, limit: Duration, poll: Duration, mut check: F)
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
        tokio::time::sleep(poll).await;
    }
}
