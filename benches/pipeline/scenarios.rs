//! Scenarios 2–5: the service (release binary, through the tests' `ServiceProcess`) over
//! preloaded or paced events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection};

use crate::ceiling::{Acking, bare_loop, bare_queue, channel, drop_queue, publish_all};
use crate::receiver::Counters;
use crate::support::{PATIENCE, ServiceProcess, closed, wait_until_every};
use crate::{FAN_OUT, Options, event};

/// The service for one scenario: its own prefix, exchange and store; `QUEUE_TYPE` and
/// `PREFETCH` from the options, `RUST_LOG` from `BENCH_RUST_LOG` (default `info`), and every
/// other service setting set in this environment passed on (`MAX_IN_FLIGHT_PER_ENDPOINT`, …).
pub async fn start_service(o: &Options) -> ServiceProcess {
    start_service_env(o, &[]).await
}

/// [`start_service`] with `extra` on top: a pair sets a variable, an empty value unsets it (so
/// `("PREFETCH", "")` runs the service with its own default).
pub async fn start_service_env(o: &Options, extra: &[(&str, &str)]) -> ServiceProcess {
    use clap::CommandFactory;
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        _config: webhook_dispatcher::Config,
    }
    let mut env: Vec<(String, String)> = Serve::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env()?.to_str().map(str::to_string))
        .filter_map(|name| Some((name.clone(), std::env::var(&name).ok()?)))
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "AMQP_URL" | "DATABASE_URL" | "LISTEN_ADDR" | "QUEUE_PREFIX" | "EVENTS_EXCHANGE"
            )
        })
        .collect();
    env.push(("QUEUE_TYPE".into(), o.queue_type().into()));
    env.push(("PREFETCH".into(), o.prefetch.to_string()));
    env.push((
        "RUST_LOG".into(),
        std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
    ));
    for (name, value) in extra {
        env.retain(|(k, _)| k != name);
        if !value.is_empty() {
            env.push((name.to_string(), value.to_string()));
        }
    }
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ServiceProcess::start(&pairs).await
}

/// Waits (polling every 5 ms) until `done`.
async fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    wait_until_every(what, limit, Duration::from_millis(5), || async { done() }).await;
}

/// Preloads `events` while the service is stopped, restarts it and measures deliveries/s over
/// the span between the first and the last receipt at `/ok` (as the ceiling is timed).
pub async fn preloaded_run(
    service: &mut ServiceProcess,
    conn: &Connection,
    counters: &Arc<Counters>,
    bodies: Vec<Vec<u8>>,
    expected_ok: usize,
) -> f64 {
    service.stop(PATIENCE).await;
    let ch = channel(conn).await;
    publish_all(
        &ch,
        &service.exchange,
        "visitor_enriched",
        bodies.into_iter(),
    )
    .await;
    counters.reset();
    service.restart().await;
    let cpu_before = service.cpu_seconds();
    let own_before = crate::own_cpu_seconds();
    wait_for("deliveries", Duration::from_secs(900), || {
        counters.ok.load(Ordering::SeqCst) as usize >= expected_ok
    })
    .await;
    let rate = expected_ok as f64 / counters.span_secs();
    LAST_CPU_PER_DELIVERY_US.store(
        ((service.cpu_seconds() - cpu_before) * 1e6 / expected_ok as f64) as u64,
        Ordering::SeqCst,
    );
    LAST_RECEIVER_CPU_PER_DELIVERY_US.store(
        ((crate::own_cpu_seconds() - own_before) * 1e6 / expected_ok as f64) as u64,
        Ordering::SeqCst,
    );
    // Settle: a duplicate would arrive after the count was reached.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(steps) = counters.timeline() {
        println!("  receipts per 50 ms: {steps:?}");
    }
    rate
}

/// The service's CPU time per delivery (µs) in the last [`preloaded_run`]: what a core buys.
pub static LAST_CPU_PER_DELIVERY_US: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// This process's CPU time per delivery (µs) in the last [`preloaded_run`]: the receiver's
/// share (it does nothing else meanwhile), taken off the ceiling's to get the bare loop's own.
pub static LAST_RECEIVER_CPU_PER_DELIVERY_US: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

/// Scenario 3: paced publishing, publish → receipt percentiles.
/// Publishes `rate` events/s for `secs` seconds to `exchange`/`routing_key` and returns the
/// publish → receipt latencies (µs), sorted.
async fn paced(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    exchange: &str,
    routing_key: &str,
) -> Vec<u64> {
    counters.reset();
    *counters.latencies.lock().unwrap() = Some(Vec::new());
    let total = (o.latency_rate * o.latency_secs) as usize;
    let ch = channel(conn).await;
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / o.latency_rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &event("bench", i),
                props,
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() >= 500 {
            let batch = std::mem::take(&mut pending);
            tokio::spawn(async move { join_all(batch).await });
        }
    }
    join_all(pending).await;
    wait_for("paced deliveries", Duration::from_secs(120), || {
        counters.ok.load(Ordering::SeqCst) as usize >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    counters.assert_exactly("paced", 0..total as u64, 1);
    let mut lat = counters.latencies.lock().unwrap().take().unwrap();
    lat.sort_unstable();
    lat
}

pub fn latency_cells(lat: &[u64]) -> String {
    format!(
        "p50 {:.1} ms · p95 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
        percentile(lat, 0.50),
        percentile(lat, 0.95),
        percentile(lat, 0.99),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0
    )
}

/// Scenario 3: the service under a paced load, with the bare loop (at the ceiling's best
/// concurrency) under the same load for reference: what the broker and this machine add on
/// their own. Returns the service's latencies and the reference's (µs, sorted).
pub async fn latency(
    o: &Options,
    service: &ServiceProcess,
    conn: &Connection,
    counters: &Arc<Counters>,
    receiver: SocketAddr,
    concurrency: usize,
    acking: Acking,
) -> (Vec<u64>, Vec<u64>) {
    let (queue, consumer_ch, consumer) = bare_queue(o, conn, "latency", 0).await;
    let worker = bare_loop(
        consumer,
        format!("http://{receiver}/ok"),
        1,
        concurrency,
        acking,
        Arc::default(),
    );
    let reference = paced(o, conn, counters, "", &queue).await;
    closed(consumer_ch.close(200, "done".into())).await;
    let _ = worker.await;
    drop_queue(conn, &queue).await;
    let lat = paced(o, conn, counters, &service.exchange, "visitor_enriched").await;
    (lat, reference)
}

/// Scenario 4: each event matches [`FAN_OUT`] subscriptions; deliveries/s and deferrals.
pub async fn fan_out(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    ok_url: &str,
) -> (f64, f64) {
    let mut service = start_service(o).await;
    for _ in 0..FAN_OUT {
        service.subscribe("fan", ok_url).await;
    }
    let events = fan_events(o);
    let bodies = (0..events).map(|i| event("fan", i)).collect();
    let rate = preloaded_run(&mut service, conn, counters, bodies, events * FAN_OUT).await;
    counters.assert_exactly("fan-out", 0..events as u64, FAN_OUT as u32);
    let deferred = service
        .metric_sum("webhook_deliveries_deferred_total", "")
        .await;
    (rate, deferred)
}

/// Events of the fan-out scenario (each delivered [`FAN_OUT`] times).
pub fn fan_events(o: &Options) -> usize {
    (o.events / FAN_OUT).max(1)
}

/// Scenario 5: every tenth event to an endpoint that hangs past the delivery timeout; the
/// healthy deliveries/s and deferrals.
pub async fn isolation(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    receiver: SocketAddr,
) -> (f64, f64) {
    let n = o.events;
    let mut service = start_service(o).await;
    service
        .subscribe("healthy", &format!("http://{receiver}/ok"))
        .await;
    service
        .subscribe("hanging", &format!("http://{receiver}/hang"))
        .await;
    let hanging = |i: usize| i % 10 == 9;
    let bodies = (0..n)
        .map(|i| {
            if hanging(i) {
                event("hanging", i)
            } else {
                event("healthy", i)
            }
        })
        .collect();
    let healthy = (0..n).filter(|&i| !hanging(i)).count();
    let rate = preloaded_run(&mut service, conn, counters, bodies, healthy).await;
    let healthy_seqs = (0..n).filter(|&i| !hanging(i)).map(|i| i as u64);
    counters.assert_exactly("isolation (healthy)", healthy_seqs, 1);
    let deferred = service
        .metric_sum("webhook_deliveries_deferred_total", "")
        .await;
    (rate, deferred)
}
