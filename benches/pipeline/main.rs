//! End-to-end benchmark: the service (release binary, as a child process) against the ceiling of
//! the same machine and broker, measured in the same run.
//!
//! `cargo bench --bench pipeline [-- --events N] [-- --quick] [-- --classic] [-- --prefetch N]
//! [-- --only 1,2,…] [-- --timeline]` (`--timeline` prints each preloaded run's receipts per
//! 50 ms, where a stall shows).
//!
//! The service runs through the tests' own harness (`tests/it/support`: the child process, the
//! broker helpers, bounded waits); what is here is only what measures.
//!
//! Scenarios (one Markdown row each):
//! 1. ceiling    — a bare loop in this process: consume persistent messages, POST each body to
//!    the receiver, ack; same prefetch as the service, at several concurrencies, each acking
//!    every message on its own and gathering its acks (one `multiple` ack every 2 ms, as the
//!    service does), the best kept, timed like the service (deliveries over the span from the
//!    first to the last receipt).
//! 2. throughput — the service: N preloaded events, one matching subscription each.
//! 3. latency    — the service: 2,000 events/s paced for 30 s, publish → receipt percentiles.
//! 4. fan-out    — the service: each event matches 50 subscriptions, against a bare fan-out
//!    loop (one consume, 50 POSTs, one ack) as its own ceiling.
//! 5. isolation  — the service: 10 % of events go to an endpoint that hangs past the timeout;
//!    throughput to the healthy endpoint as a ratio of scenario 2.
//! 6. memory     — peak RSS (VmHWM) of the service process over scenarios 2 and 3.
//! 7. replicas   — scenario 2 with 1, 2 and 3 replicas sharing the queues (the first runs every
//!    role, the others only the dispatcher), on one SQLite file and on PostgreSQL (the server at
//!    `POSTGRES_URL`). On a machine with two cores more replicas cannot go faster; the target is
//!    that none goes much slower.
//! 8. noisy neighbour — account A publishes a 20,000-event burst (2,000 with `--quick`) as fast
//!    as the broker takes it, to an endpoint 50 ms away, while account B publishes 100 events/s
//!    to a near one: B's publish → receipt latency over A's whole burst, with the service's own settings (its default `PREFETCH`).
//!    `WEBHOOK_DISPATCHER_BIN=path` runs another build of the service (an earlier commit's, for
//!    a before/after comparison in one session).
//! 9. outage — N events to an endpoint that refuses connections, on SQLite and on PostgreSQL:
//!    first attempts handed to the delay queues per second, dead letters persisted per second,
//!    and the deepest `P.dead` got; then the DLQ logger alone, draining N sealed dead letters
//!    preloaded into `P.dead` (see `recovery.rs`).
//! 10. replay — then `replay --all --yes` of those N records to the endpoint come back:
//!     records replayed per second, each delivered exactly once.
//!
//! Every scenario checks that each event arrived exactly as often as it should (once, or 50 times
//! in the fan-out) after a settle. `--quick` runs everything small (a minute or two) and checks
//! only that: CI runs it as a smoke test, in the test build (`cargo test --bench pipeline --
//! --quick`). A full run exits 1 when a target is missed.

mod ceiling;
mod noisy;
mod receiver;
mod recovery;
mod replicas;
mod retry_ceiling;
mod scenarios;
// The benchmark uses part of the tests' harness.
#[allow(dead_code, unused_imports)]
#[path = "../../tests/it/support/mod.rs"]
mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::{Connection, ConnectionProperties};

use receiver::start_receiver;
use scenarios::{
    fan_events, fan_out, isolation, latency, latency_cells, preloaded_run, start_service,
};
use support::closed;

const FAN_OUT: usize = 50;

pub struct Options {
    pub events: usize,
    pub quick: bool,
    pub classic: bool,
    pub latency_rate: u64,
    pub latency_secs: u64,
    /// Scenarios to run (`--only 1,2`); all by default. Memory needs 2 and 3.
    pub only: Vec<u32>,
    /// AMQP prefetch of the ceiling loop and the service (`--prefetch N`, default: the service's).
    pub prefetch: u16,
    /// Print each preloaded run's receipts per 50 ms (`--timeline`).
    pub timeline: bool,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let quick = args.iter().any(|a| a == "--quick");
        let classic = args.iter().any(|a| a == "--classic");
        let timeline = args.iter().any(|a| a == "--timeline");
        let default_events = if quick { 2_000 } else { 50_000 };
        let events = value("--events").map_or(default_events, |n| {
            n.parse().expect("--events takes a number")
        });
        let only = value("--only").map_or_else(
            || vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            |list| {
                list.split(',')
                    .map(|n| n.trim().parse().expect("--only takes 1,2,…"))
                    .collect()
            },
        );
        let prefetch = value("--prefetch")
            .map_or(webhook_dispatcher::config::DEFAULT_PREFETCH, |n| {
                n.parse().expect("--prefetch takes a number")
            });
        let latency_secs = if quick { 3 } else { 30 };
        Options {
            events,
            quick,
            classic,
            latency_rate: 2_000,
            latency_secs,
            only,
            prefetch,
            timeline,
        }
    }

    pub fn runs(&self, scenario: u32) -> bool {
        self.only.contains(&scenario)
    }

    pub fn queue_type(&self) -> &'static str {
        if self.classic { "classic" } else { "quorum" }
    }
}

/// CPU time (user + system) this benchmark process has used, in seconds.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A ~400-byte event shaped like `visitor_enriched.json`, carrying its sequence number and send time.
pub fn event(account: &str, seq: usize) -> Vec<u8> {
    format!(
        r#"{{"event":"visitor_enriched","timestamp":"2026-03-23T14:30:00Z","account_id":"{account}","data":{{"visitor_id":"v_{seq:08}","company":{{"name":"Acme Corp","domain":"acme.com","industry":"Software","size":"201-500","revenue":"$50M-$100M","location":"San Francisco, CA"}},"enterprise_score":75,"enrichment_source":"peopledatalabs","seq":{seq},"sent_us":{}}}}}"#,
        unix_micros()
    )
    .into_bytes()
}

/// The table, and the targets missed (outside `--quick`, a miss fails the run).
struct Table {
    misses: Vec<String>,
}

impl Table {
    fn row(&self, cells: [&str; 4]) {
        println!("| {} |", cells.join(" | "));
    }

    /// A row with a target: `met` says whether the result meets it.
    fn target(&mut self, cells: [&str; 4], met: bool) {
        self.row(cells);
        if !met {
            self.misses
                .push(format!("{}: {} (target {})", cells[0], cells[2], cells[3]));
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = Options::parse();
    receiver::TIMELINE.store(o.timeline, std::sync::atomic::Ordering::Relaxed);
    let conn = Connection::connect(&support::amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL (docker compose up -d rabbitmq)");
    let (receiver, counters) = start_receiver().await;
    let ok_url = format!("http://{receiver}/ok");
    let n = o.events;

    println!(
        "\nwebhook-dispatcher pipeline benchmark — {} events, {} queues, prefetch {}{}\n",
        n,
        o.queue_type(),
        o.prefetch,
        if o.quick { ", quick" } else { "" }
    );
    let mut table = Table { misses: Vec::new() };
    table.row(["scenario", "measured", "result", "target"]);
    table.row(["---", "---", "---", "---"]);

    // 1. ceiling: the best bare loop, timed like the service
    let mut best = None;
    if o.runs(1) {
        let c = ceiling::ceiling(&o, &conn, receiver, &counters, n, 1).await;
        table.row([
            "1. ceiling (bare consume → POST → ack, best concurrency and acking)",
            &format!("{n} messages"),
            &format!("{:.0} deliveries/s (tried {})", c.rate, c.tried()),
            "—",
        ]);
        best = Some(c);
    }
    let ceiling_rate = best.as_ref().map_or(f64::NAN, |c| c.rate);

    // 2. throughput, then 3 on the same service process (6 is its peak RSS over both)
    let mut service = start_service(&o).await;
    service.subscribe("bench", &ok_url).await;
    let mut throughput = f64::NAN;
    if o.runs(2) {
        let bodies = (0..n).map(|i| event("bench", i)).collect();
        throughput = preloaded_run(&mut service, &conn, &counters, bodies, n).await;
        counters.assert_exactly("throughput", 0..n as u64, 1);
        let cpu_us = scenarios::LAST_CPU_PER_DELIVERY_US.load(std::sync::atomic::Ordering::SeqCst);
        // The bare loop's own CPU: this process's during the ceiling, less the receiver's share
        // (this process's during the service's run, when it only receives).
        let receiver_us =
            scenarios::LAST_RECEIVER_CPU_PER_DELIVERY_US.load(std::sync::atomic::Ordering::SeqCst);
        let bare_us = best
            .as_ref()
            .map_or(f64::NAN, |c| c.cpu_us - receiver_us as f64);
        let deferred = service
            .metric_sum("webhook_deliveries_deferred_total", "")
            .await;
        table.target(
            [
                "2. throughput",
                &format!("{n} events → 1 subscription"),
                &format!(
                    "{throughput:.0} deliveries/s = {:.2} × ceiling (deferred {deferred}; service CPU {cpu_us} µs a delivery = {:.2} × the bare loop's {bare_us:.0} µs)",
                    throughput / ceiling_rate,
                    cpu_us as f64 / bare_us
                ),
                "≥ 0.8 × ceiling",
            ],
            throughput / ceiling_rate >= 0.8,
        );
    }
    if o.runs(3) {
        let concurrency = best.as_ref().map_or(64, |c| c.concurrency);
        let acking = best.as_ref().map_or(ceiling::Acking::Each, |c| c.acking);
        let (lat, reference) = latency(
            &o,
            &service,
            &conn,
            &counters,
            receiver,
            concurrency,
            acking,
        )
        .await;
        table.target(
            [
                "3. latency",
                &format!(
                    "{} events/s for {} s ({} events)",
                    o.latency_rate,
                    o.latency_secs,
                    lat.len()
                ),
                &format!(
                    "{} (bare loop at concurrency {concurrency}, acks {acking:?}, same load: {})",
                    latency_cells(&lat),
                    latency_cells(&reference)
                ),
                "p99 ≤ 10 ms",
            ],
            scenarios::percentile(&lat, 0.99) <= 10.0,
        );
    }
    let peak_kib = service.peak_rss_kib();
    drop(service);

    if o.runs(4) {
        let events = fan_events(&o);
        let fan_ceiling = ceiling::ceiling(&o, &conn, receiver, &counters, events, FAN_OUT).await;
        let (rate, deferred) = fan_out(&o, &conn, &counters, &ok_url).await;
        table.target(
            [
                "4. fan-out",
                &format!(
                    "{events} events → {FAN_OUT} subscriptions ({} deliveries)",
                    events * FAN_OUT
                ),
                &format!(
                    "{rate:.0} deliveries/s = {:.2} × the bare fan-out loop's {:.0}/s (tried {}; deferred {deferred})",
                    rate / fan_ceiling.rate,
                    fan_ceiling.rate,
                    fan_ceiling.tried()
                ),
                "≥ 0.8 × bare fan-out",
            ],
            rate / fan_ceiling.rate >= 0.8,
        );
    }
    if o.runs(5) {
        let (rate, deferred) = isolation(&o, &conn, &counters, receiver).await;
        table.target(
            [
                "5. isolation",
                &format!(
                    "{} healthy + {} to an endpoint hanging past the 10 s timeout",
                    n - n / 10,
                    n / 10
                ),
                &format!(
                    "{rate:.0} healthy deliveries/s = {:.2} × scenario 2 (deferred {deferred})",
                    rate / throughput
                ),
                "≥ 0.9 × scenario 2",
            ],
            rate / throughput >= 0.9,
        );
    }
    if o.runs(6) {
        let mib = peak_kib as f64 / 1024.0;
        table.target(
            [
                "6. memory",
                "peak RSS of the service over scenarios 2–3",
                &format!("{mib:.1} MiB"),
                "≤ 64 MiB",
            ],
            mib <= 64.0,
        );
    }
    if o.runs(7) {
        for store in [replicas::StoreKind::Sqlite, replicas::StoreKind::Postgres] {
            let mut rates = Vec::new();
            for count in 1..=3 {
                rates.push(replicas::run(&o, &conn, &counters, &ok_url, store, count).await);
            }
            let worst = rates[1..].iter().fold(f64::INFINITY, |a, &b| a.min(b)) / rates[0];
            table.target(
                [
                    &format!("7. replicas ({})", store.name()),
                    &format!("{n} events → 1 subscription, 1 / 2 / 3 replicas"),
                    &format!(
                        "{:.0} / {:.0} / {:.0} deliveries/s (2–3 replicas ≥ {worst:.2} × one)",
                        rates[0], rates[1], rates[2]
                    ),
                    "≥ 0.8 × one replica",
                ],
                worst >= 0.8,
            );
        }
    }
    if o.runs(8) {
        let burst = if o.quick { 2_000 } else { 20_000 };
        let r = noisy::run(&o, &conn, &counters, &ok_url, burst, &[("PREFETCH", "")]).await;
        table.target(
            [
                "8. noisy neighbour",
                &format!(
                    "A: {burst}-event burst; B: 100 events/s during it ({} events)",
                    r.quiet.len()
                ),
                &format!(
                    "B: {}; A's burst {:.0} deliveries/s ({} parked)",
                    latency_cells(&r.quiet),
                    r.noisy_rate,
                    r.parked
                ),
                "B's p99 ≤ 100 ms",
            ],
            scenarios::percentile(&r.quiet, 0.99) <= 100.0,
        );
    }
    if o.runs(9) || o.runs(10) {
        let dead_limit = 2 * u32::from(webhook_dispatcher::broker::DEAD_PREFETCH);
        // The broker's share of the retry path alone, for reading scenario 9 against.
        let broker = retry_ceiling::retry_ceiling(&o, &conn).await;
        table.row([
            "9. broker alone",
            &format!("{n} events through the same queues: consume, publish with a confirm, ack; no HTTP, no store"),
            &format!(
                "into P.dead {:.0}/s = {:.2} × ceiling; first rounds handed off {:.0}/s = {:.2} ×",
                broker.dead,
                broker.dead / ceiling_rate,
                broker.handed_off,
                broker.handed_off / ceiling_rate
            ),
            "— (what a dispatcher sending a message per delivery could reach)",
        ]);
        for store in [replicas::StoreKind::Sqlite, replicas::StoreKind::Postgres] {
            let r = recovery::run(&o, &conn, &counters, &ok_url, store).await;
            table.target(
                [
                    &format!("9. outage ({})", store.name()),
                    &format!("{n} events to an endpoint refusing connections"),
                    &format!(
                        "dead letters persisted {:.0}/s = {:.2} × ceiling ({:.2} × the broker alone); first attempts handed off {:.0}/s = {:.2} × ({:.2} ×); P.dead at most {} ready; the logger's longest pause with P.dead not empty {:.0} ms; stages (first–last, s) {}",
                        r.persisted,
                        r.persisted / ceiling_rate,
                        r.persisted / broker.dead,
                        r.handed_off,
                        r.handed_off / ceiling_rate,
                        r.handed_off / broker.handed_off,
                        r.dead_peak,
                        r.longest_pause * 1000.0,
                        r.stages
                            .iter()
                            .map(|(stage, span)| match span {
                                Some((a, b)) => format!("{stage} {a:.2}–{b:.2}"),
                                None => format!("{stage} –"),
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    &format!("≥ 0.8 × ceiling; P.dead < {dead_limit}"),
                ],
                r.persisted / ceiling_rate >= 0.8
                    && r.handed_off / ceiling_rate >= 0.8
                    && r.dead_peak < dead_limit,
            );
            let alone = recovery::logger_alone(&o, &conn, store).await;
            table.target(
                [
                    &format!("9. logger alone ({})", store.name()),
                    &format!("{n} sealed dead letters preloaded into P.dead, the service started"),
                    &format!(
                        "dead letters persisted {alone:.0}/s = {:.2} × the broker alone into P.dead",
                        alone / broker.dead
                    ),
                    "≥ 1 × the broker alone (P.dead cannot grow)",
                ],
                alone >= broker.dead,
            );
            table.target(
                [
                    &format!("10. replay ({})", store.name()),
                    &format!("replay --all of those {n} records, endpoint back"),
                    &format!(
                        "{:.0} replayed/s = {:.2} × ceiling ({:.0}/s until the last delivery); each delivered once",
                        r.replayed,
                        r.replayed / ceiling_rate,
                        r.replayed_delivered
                    ),
                    "≥ 0.8 × ceiling, 0 duplicates",
                ],
                r.replayed / ceiling_rate >= 0.8,
            );
        }
    }
    println!();
    closed(conn.close(200, "done".into())).await;
    // `--quick` checks that everything arrives exactly once (the asserts above), on a load too
    // small for its figures to mean anything; a full run must meet its targets.
    if !o.quick && !table.misses.is_empty() {
        eprintln!("targets missed:\n  {}", table.misses.join("\n  "));
        std::process::exit(1);
    }
}
