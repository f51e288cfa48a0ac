//! Scenario 8: a noisy neighbour. Account A publishes a burst as fast as the broker takes it, to
//! an endpoint 50 ms away (so it takes a while to deliver: 64 in flight at 50 ms is ~1,300/s),
//! while account B publishes 100 events/s to a near one; B's publish → receipt latency is timed
//! over A's whole burst (B starts with it and stops when A's last event has arrived).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection};

use crate::ceiling::{channel, publish_all};
use crate::receiver::Counters;
use crate::scenarios::start_service_env;
use crate::support::wait_until_every;
use crate::{Options, event};

/// B's events are numbered from here (A's from 0), so the receiver tells them apart.
const QUIET_FROM: usize = 1_000_000;
/// B's rate.
const QUIET_RATE: f64 = 100.0;

pub struct Noisy {
    /// B's latencies (µs, sorted), every one of its events sent during A's burst.
    pub quiet: Vec<u64>,
    /// A's burst from its first publish to its last receipt, in deliveries/s.
    pub noisy_rate: f64,
    pub parked: f64,
}

/// Runs the scenario against a service started with `env` (on top of the benchmark's), with a
/// burst of `burst` events.
pub async fn run(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    ok_url: &str,
    burst: usize,
    env: &[(&str, &str)],
) -> Noisy {
    let service = start_service_env(o, env).await;
    service
        .subscribe("noisy", &ok_url.replace("/ok", "/slow"))
        .await;
    service.subscribe("quiet", ok_url).await;
    counters.reset();
    counters
        .quiet_from
        .store(QUIET_FROM as u64, Ordering::SeqCst);
    *counters.latencies.lock().unwrap() = Some(Vec::new());

    let done = Arc::new(AtomicBool::new(false));
    let quiet = {
        let ch = channel(conn).await;
        let exchange = service.exchange.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut pending = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::SeqCst) {
                let due = start + Duration::from_secs_f64(i as f64 / QUIET_RATE);
                tokio::time::sleep_until(due.into()).await;
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        "visitor_enriched".into(),
                        BasicPublishOptions::default(),
                        &event("quiet", QUIET_FROM + i),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap();
                pending.push(confirm);
                i += 1;
            }
            for c in join_all(pending).await {
                assert!(c.unwrap().is_ack());
            }
            i
        })
    };
    // A's burst starts with B's stream.
    let started = Instant::now();
    let ch = channel(conn).await;
    publish_all(
        &ch,
        &service.exchange,
        "visitor_enriched",
        (0..burst).map(|i| event("noisy", i)),
    )
    .await;
    wait_until_every(
        "the noisy burst to be delivered",
        Duration::from_secs(600),
        Duration::from_millis(5),
        || async { counters.ok_noisy.load(Ordering::SeqCst) as usize >= burst },
    )
    .await;
    let noisy_rate = burst as f64 / started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let sent = quiet.await.unwrap();
    wait_until_every(
        "the quiet events to be delivered",
        Duration::from_secs(60),
        Duration::from_millis(5),
        || async { counters.ok.load(Ordering::SeqCst) as usize >= burst + sent },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    counters.assert_exactly(
        "noisy neighbour",
        (0..burst as u64).chain(QUIET_FROM as u64..(QUIET_FROM + sent) as u64),
        1,
    );
    let mut lat = counters.latencies.lock().unwrap().take().unwrap();
    lat.sort_unstable();
    let parked = service.metric_sum("webhook_events_parked_total", "").await;
    Noisy {
        quiet: lat,
        noisy_rate,
        parked,
    }
}
