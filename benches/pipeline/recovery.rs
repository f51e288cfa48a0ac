//! Scenarios 9 and 10: recovery after a customer's outage, on SQLite and on PostgreSQL.
//! 9. outage — N preloaded events to an endpoint that refuses connections: every delivery fails
//!    its first attempt, waits out the 2/4/8 s delay queues, fails again and is dead-lettered
//!    into the delivery log. Measured from the service's own counters, sampled every 20 ms:
//!    first attempts handed to the first delay queue per second, and dead letters persisted per
//!    second (each over the span from the first to the last), and the deepest `P.dead` got.
//!    Then the logger alone: N sealed dead letters preloaded into a stopped service's `P.dead`,
//!    persisted per second once it starts ([`logger_alone`]).
//! 10. replay — the endpoint back (the subscription pointed at the receiver), `replay --all
//!    --yes` of those N records: records replayed per second while the command ran, and until
//!    the last delivery arrived; each delivered exactly once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use webhook_dispatcher::broker::frame::dead_letter_message;
use webhook_dispatcher::seal::Keyring;
use webhook_dispatcher::store::Store;
use webhook_dispatcher::wire::{DeadLetter, new_dead_letter_id};

use crate::ceiling::{channel, publish_all, publish_all_with};
use crate::receiver::Counters;
use crate::replicas::StoreKind;
use crate::scenarios::start_service_env;
use crate::support::{PATIENCE, ServiceProcess, TempDatabase, closed, free_port, sqlite_url};
use crate::{Options, event};

pub struct Recovery {
    /// First attempts failed and handed to the first delay queue, per second.
    pub handed_off: f64,
    /// Dead letters committed to the delivery log, per second.
    pub persisted: f64,
    /// The most messages `P.dead` held ready at once during the outage.
    pub dead_peak: u32,
    /// The longest the persisted count stood still while `P.dead` held messages ready, in
    /// seconds: a stall of the logger, where a peak comes from.
    pub longest_pause: f64,
    /// Records replayed per second, while the replay command ran.
    pub replayed: f64,
    /// Records replayed per second, until the last delivery arrived.
    pub replayed_delivered: f64,
    /// When each stage began and ended (seconds since the service started): the hand-offs to
    /// each delay queue, in order, then the dead letters persisted. Where the spans stretch
    /// shows which stage holds the others back.
    pub stages: Vec<(String, Option<(f64, f64)>)>,
}

/// The span from the first sample above zero to the first that reached `n`.
fn span(samples: &[(f64, f64)], n: usize) -> Option<(f64, f64)> {
    let first = samples.iter().find(|(_, v)| *v > 0.0)?.0;
    let last = samples.iter().find(|(_, v)| *v >= n as f64)?.0;
    Some((first, last))
}

/// `(seconds since start, value)` samples of one counter: the rate over the span from the first
/// sample above zero to the first that reached `n`.
fn span_rate(samples: &[(f64, f64)], n: usize) -> f64 {
    match span(samples, n) {
        Some((a, b)) if b > a => n as f64 / (b - a),
        _ => f64::NAN,
    }
}

/// The longest span over which the `persisted` count did not change while every `ready`
/// sample in it (`P.dead`'s depth, sampled at the same times) was above zero.
fn longest_pause(persisted: &[(f64, f64)], ready: &[(f64, u32)]) -> f64 {
    let mut longest: f64 = 0.0;
    let mut since: Option<(f64, f64)> = None;
    for (&(t, count), &(_, depth)) in persisted.iter().zip(ready) {
        since = match since {
            Some((start, at)) if at == count && depth > 0 => {
                longest = longest.max(t - start);
                Some((start, at))
            }
            _ if depth > 0 => Some((t, count)),
            _ => None,
        };
    }
    longest
}

/// A service on `store`: a SQLite file of its own, or a fresh PostgreSQL database (returned,
/// dropped with it).
async fn service_on(o: &Options, store: StoreKind) -> (ServiceProcess, Option<TempDatabase>) {
    let pg = store.fresh_database().await;
    let extra: Vec<(&str, &str)> = pg
        .as_ref()
        .map(|db| vec![("DATABASE_URL", db.url.as_str())])
        .unwrap_or_default();
    (start_service_env(o, &extra).await, pg)
}

pub async fn run(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    ok_url: &str,
    store: StoreKind,
) -> Recovery {
    let n = o.events;
    let (mut service, pg) = service_on(o, store).await;
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
    let delays = ["2s", "4s", "8s"];
    let mut later: Vec<Vec<(f64, f64)>> = vec![Vec::new(); delays.len() - 1];
    let mut waiting = Vec::new();
    loop {
        let page = service.metrics().await;
        let t = start.elapsed().as_secs_f64();
        handed.push((
            t,
            crate::support::metric_sum(&page, "webhook_retries_scheduled_total", "delay=\"2s\""),
        ));
        for (samples, delay) in later.iter_mut().zip(&delays[1..]) {
            let label = format!("delay=\"{delay}\"");
            let v = crate::support::metric_sum(&page, "webhook_retries_scheduled_total", &label);
            samples.push((t, v));
        }
        let stored = crate::support::metric_sum(&page, "webhook_dead_letters_persisted_total", "");
        persisted.push((t, stored));
        let depth = probe
            .queue_declare(dead_queue.as_str().into(), passive, FieldTable::default())
            .await
            .map_or(0, |q| q.message_count());
        dead_peak = dead_peak.max(depth);
        waiting.push((t, depth));
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
    let mut stages = vec![(delays[0].to_string(), span(&handed, n))];
    for (samples, delay) in later.iter().zip(&delays[1..]) {
        stages.push((delay.to_string(), span(samples, n)));
    }
    stages.push(("stored".to_string(), span(&persisted, n)));
    Recovery {
        stages,
        handed_off: span_rate(&handed, n),
        persisted: span_rate(&persisted, n),
        dead_peak,
        longest_pause: longest_pause(&persisted, &waiting),
        replayed: n as f64 / command,
        replayed_delivered: n as f64 / delivered,
    }
}

/// Scenario 9's logger alone: `n` dead letters the service sealed (as its dispatcher makes
/// them after a fourth failed attempt) preloaded into a stopped service's `P.dead`, then the
/// service started: dead letters persisted per second, over the span from the first to the
/// last. What the DLQ logger can take; during an outage `P.dead` grows only if what the broker
/// brings into it is more.
pub async fn logger_alone(o: &Options, conn: &Connection, store: StoreKind) -> f64 {
    let n = o.events;
    let (mut service, pg) = service_on(o, store).await;
    let subscription = service.subscribe("outage", "http://127.0.0.1:9/gone").await;
    service.stop(PATIENCE).await;
    let url = match &pg {
        Some(db) => db.url.clone(),
        None => sqlite_url(service.db_path()),
    };
    let keys = {
        let store = Store::open_existing(&url)
            .await
            .expect("the service's store");
        let keys = Keyring::load(Arc::new(store.clone()))
            .await
            .expect("the service's keys");
        store.close().await;
        keys
    };
    let ch = channel(conn).await;
    let letters = (0..n).map(|i| dead_letter_message(&exhausted(i, &subscription), &keys));
    publish_all_with(&ch, "", &service.dead_queue(), letters).await;
    closed(ch.close(200, "done".into())).await;

    service.restart().await;
    let start = Instant::now();
    let mut persisted = Vec::new();
    loop {
        let page = service.metrics().await;
        let stored = crate::support::metric_sum(&page, "webhook_dead_letters_persisted_total", "");
        persisted.push((start.elapsed().as_secs_f64(), stored));
        if stored as usize >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "logger alone: {stored} of {n} dead letters persisted after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(service);
    drop(pg);
    span_rate(&persisted, n)
}

/// Dead letter `i` of an outage as the dispatcher makes it: a delivery exhausted after four
/// refused attempts, its payload the benchmark's event.
fn exhausted(i: usize, subscription: &str) -> DeadLetter {
    let attempts: Vec<serde_json::Value> = (1..=4)
        .map(|attempt| {
            serde_json::json!({
                "attempt": attempt,
                "started_at": "2026-03-23T14:30:00.000Z",
                "duration_ms": 1,
                "status": null,
                "error": "connection error: Connection refused (os error 111)",
            })
        })
        .collect();
    let letter = serde_json::json!({
        "id": new_dead_letter_id(),
        "event_id": format!("evt_dead_{i:08}"),
        "account_id": "outage",
        "subscription_id": subscription,
        "url": "http://127.0.0.1:9/gone",
        "event": "visitor_enriched",
        "payload": serde_json::from_slice::<serde_json::Value>(&event("outage", i)).unwrap(),
        "reason": "exhausted",
        "detail": "4 attempts failed",
        "attempts": attempts,
        "dead_lettered_at": webhook_dispatcher::time::now_rfc3339(),
    });
    serde_json::from_value(letter).expect("a dead letter")
}
