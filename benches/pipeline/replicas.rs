//! Scenario 7: throughput with 1, 2 and 3 dispatcher replicas sharing one queue set, on SQLite
//! (one file, one machine) and on PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::Connection;

use crate::ceiling::{channel, publish_all};
use crate::receiver::Counters;
use crate::support::{
    PATIENCE, ServiceProcess, TempDatabase, delete_topology, sqlite_url, unique, wait_until,
    wait_until_every,
};
use crate::{Options, event};

/// The stores scenario 7 runs on.
#[derive(Clone, Copy)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    /// A fresh PostgreSQL database (dropped with it) for `Postgres`; `None` for SQLite, whose
    /// file each caller places.
    pub async fn fresh_database(self) -> Option<TempDatabase> {
        match self {
            StoreKind::Postgres => Some(TempDatabase::create().await),
            StoreKind::Sqlite => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "SQLite",
            StoreKind::Postgres => "PostgreSQL",
        }
    }
}

/// Deliveries/s of `n` preloaded events with `replicas` replicas: the first runs every role, the
/// others only the dispatcher.
pub async fn run(
    o: &Options,
    conn: &Connection,
    counters: &Arc<Counters>,
    ok_url: &str,
    store: StoreKind,
    replicas: usize,
) -> f64 {
    let n = o.events;
    let prefix = unique("bq");
    let exchange = unique("bx");
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = store.fresh_database().await;
    let database = match &pg {
        Some(db) => db.url.clone(),
        None => sqlite_url(&dir.path().join("shared.db")),
    };
    let prefetch = o.prefetch.to_string();
    let mut group = Vec::new();
    for i in 0..replicas {
        let roles = if i == 0 { "all" } else { "dispatcher" };
        let env = [
            ("QUEUE_PREFIX", prefix.as_str()),
            ("EVENTS_EXCHANGE", exchange.as_str()),
            ("DATABASE_URL", database.as_str()),
            ("QUEUE_TYPE", o.queue_type()),
            ("PREFETCH", prefetch.as_str()),
            ("ROLES", roles),
            ("RUST_LOG", "warn"),
        ];
        let mut replica = ServiceProcess::start(&env).await;
        replica.shares_topology();
        group.push(replica);
    }
    group[0].subscribe("bench", ok_url).await;
    for replica in &group[1..] {
        wait_until(
            "the subscription to reach every replica",
            PATIENCE,
            || async {
                replica
                    .metric_sum("webhook_control_messages_total", "result=\"applied\"")
                    .await
                    >= 1.0
            },
        )
        .await;
    }
    for replica in &mut group {
        replica.stop(PATIENCE).await;
    }
    let ch = channel(conn).await;
    publish_all(
        &ch,
        &exchange,
        "visitor_enriched",
        (0..n).map(|i| event("bench", i)),
    )
    .await;
    counters.reset();
    join_all(group.iter_mut().map(|r| r.restart())).await;
    wait_until_every(
        "deliveries",
        Duration::from_secs(900),
        Duration::from_millis(5),
        || async { counters.ok.load(Ordering::SeqCst) as usize >= n },
    )
    .await;
    let rate = n as f64 / counters.span_secs();
    tokio::time::sleep(Duration::from_millis(500)).await;
    counters.assert_exactly(
        &format!("{replicas} replicas on {}", store.name()),
        0..n as u64,
        1,
    );
    let queues = group[0].queues.clone();
    drop(group);
    delete_topology(queues, exchange);
    rate
}
