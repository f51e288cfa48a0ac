//! Scenarios 9 and 10: recovery after a customer's outage, on SQLite and on PostgreSQL.
//! 9. outage — N preloaded events to an endpoint that refuses connections: every delivery fails
//!    its first attempt, waits out the 2/4/8 s delay queues, fails again and is dead-lettered
//!    into the delivery log. Measured from the service's own counters, sampled every 20 ms:
//!    first attempts handed to the first delay queue per second, and dead letters persisted per
//!    second (each over the span from the first to the last), and the deepest `P.dead` got.
//! 10. replay — the endpoint back (the subscription pointed at the receiver), `replay --all
//!    --yes` of those N records: records replayed per second while the command ran, and until
//!    the last delivery arrived; each delivered exactly once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::ceiling::{channel, publish_all};
use crate::receiver::Counters;
use crate::replicas::StoreKind;
use crate::scenarios::start_service_env;
use crate::support::{PATIENCE, TempDatabase, closed, free_port};
use crate::{Options, event};

pub struct Recovery {
    /// First attempts failed and handed to the first delay queue, per second.
    pub handed_off: f64,
    /// Dead letters committed to the delivery log, per second.
    pub persisted: f64,
    /// The most messages `P.dead` held ready at once during the outage.
    pub dead_peak: u32,
    /// Records replayed per second, while the replay command ran.
    pub replayed: f64,
    /// Records replayed per second, until the last delivery arrived.
    pub replayed_delivered: f64,
}

/// `(seconds since start, value)` samples of one counter: the rate over the span from the first
/// sample above zero to the first that reached `n`.
fn span_rate(samples: &[(f64, f64)], n: usize) -> f64 {
    let first = samples.iter().find(|(_, v)| *v > 0.0).map(|(t, _)| *t);
    let last = samples
        .iter()
        .find(|(_, v)| *v >= n as f64)
        .map(|(t, _)| *t);
    match (first, last) {
        (Some(a), Some(b)) if b > a => n as f64 / (b - a),
        _ => f64::NAN,
    }
}

pub async fn run(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    ok_url: &str,
    store: StoreKind,
) -> Recovery {
    let n = o.events;
    let pg = match store {
        StoreKind::Postgres => Some(TempDatabase::create().await),
        StoreKind::Sqlite => None,
    };
    let extra: Vec<(&str, &str)> = pg
        .as_ref()
        .map(|db| vec![("DATABASE_URL", db.url.as_str())])
        .unwrap_or_default();
    let mut service = start_service_env(o, &extra).await;
    // Nothing listens there: every attempt is refused at once.
    let refusing = format!("http://127.0.0.1:{}/gone", free_port());
    let subscription = service.subscribe("outage", &refusing).await;
    service.stop(PATIENCE).await;
    let ch = channel(conn).await;
    publish_all(
        &ch,
        &service.exchange,
        "visitor_enriched",
        (0..n).map(|i| event("outage", i)),
    )
    .await;
    service.restart().await;

    // 9. The outage, sampled.
    let start = Instant::now();
    let probe = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let dead_queue = service.dead_queue();
    let (mut handed, mut persisted, mut dead_peak) = (Vec::new(), Vec::new(), 0);
    loop {
        let page = service.metrics().await;
        let t = start.elapsed().as_secs_f64();
        handed.push((
            t,
            crate::support::metric_sum(&page, "webhook_retries_scheduled_total", "delay=\"2s\""),
        ));
        let stored = crate::support::metric_sum(&page, "webhook_dead_letters_persisted_total", "");
        persisted.push((t, stored));
        if let Ok(q) = probe
            .queue_declare(dead_queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            dead_peak = dead_peak.max(q.message_count());
        }
        if stored as usize >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "outage: {stored} of {n} dead letters persisted after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    closed(probe.close(200, "done".into())).await;

    // 10. The endpoint is back: replay everything.
    let patched = service
        .http
        .patch(service.url(&format!("/v1/subscriptions/{subscription}")))
        .json(&serde_json::json!({ "url": ok_url }))
        .send()
        .await
        .expect("PATCH the subscription");
    assert_eq!(
        patched.status(),
        200,
        "pointing the subscription at the receiver"
    );
    counters.reset();
    let started = Instant::now();
    let out = service
        .cli_command(&["replay", "--all", "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .expect("the replay command runs");
    let command = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("replayed {n}, skipped 0")),
        "replay: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::support::wait_until_every(
        "replayed deliveries",
        Duration::from_secs(900),
        Duration::from_millis(5),
        || async { counters.ok.load(Ordering::SeqCst) as usize >= n },
    )
    .await;
    let delivered = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    counters.assert_exactly(&format!("replay on {}", store.name()), 0..n as u64, 1);
    drop(service);
    drop(pg);
    Recovery {
        handed_off: span_rate(&handed, n),
        persisted: span_rate(&persisted, n),
        dead_peak,
        replayed: n as f64 / command,
        replayed_delivered: n as f64 / delivered,
    }
}
