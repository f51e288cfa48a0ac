//! `dlq stats`: what waits in each queue (a passive declare: ready messages and consumers) and
//! what the delivery log holds, grouped by reason, event and account.

use serde::Serialize;

use super::OpsError;
use crate::broker::Broker;
use crate::store::{GroupBy, LogGroup, Store};

/// Groups shown per column.
pub const TOP: i64 = 20;

#[derive(Debug, Serialize)]
pub struct QueueStats {
    pub queue: String,
    /// `None`: the queue does not exist (the service never started with these settings).
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct LogStats {
    pub total: i64,
    pub not_replayed: i64,
    pub by_reason: Vec<LogGroup>,
    pub by_event: Vec<LogGroup>,
    /// The [`TOP`] accounts with the most records.
    pub by_account: Vec<LogGroup>,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub queues: Vec<QueueStats>,
    pub delivery_log: LogStats,
}

pub async fn collect(broker: &Broker, store: &Store) -> Result<Stats, OpsError> {
    let mut queues = Vec::new();
    for name in broker.topology.queues() {
        queues.push(queue_stats(broker, name).await?);
    }
    let all = store.count_delivery_logs().await?;
    let delivery_log = LogStats {
        total: all.total,
        not_replayed: all.not_replayed,
        by_reason: store.count_delivery_logs_by(GroupBy::Reason, TOP).await?,
        by_event: store.count_delivery_logs_by(GroupBy::Event, TOP).await?,
        by_account: store.count_delivery_logs_by(GroupBy::Account, TOP).await?,
    };
    Ok(Stats {
        queues,
        delivery_log,
    })
}

/// One queue's counts (`None` when it does not exist).
pub async fn queue_stats(broker: &Broker, name: &str) -> Result<QueueStats, OpsError> {
    let counts = broker.queue_counts(name).await?;
    Ok(QueueStats {
        queue: name.to_string(),
        ready: counts.map(|c| c.ready),
        consumers: counts.map(|c| c.consumers),
    })
}
