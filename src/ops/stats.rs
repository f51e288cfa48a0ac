//! `dlq stats`: what waits in each queue (a passive declare: ready messages and consumers) and
//! what the delivery log holds, grouped by reason, event and account.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
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

/// One queue's counts; a channel per probe, since a failed passive declare closes its channel.
pub async fn queue_stats(broker: &Broker, name: &str) -> Result<QueueStats, OpsError> {
    let channel = broker.channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let stats = match channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
    {
        Ok(q) => QueueStats {
            queue: name.to_string(),
            ready: Some(q.message_count()),
            consumers: Some(q.consumer_count()),
        },
        Err(e) if is_not_found(&e) => QueueStats {
            queue: name.to_string(),
            ready: None,
            consumers: None,
        },
        Err(e) => return Err(OpsError::Broker(e.into())),
    };
    let _ = channel.close(200, "probed".into()).await;
    Ok(stats)
}

/// A 404 NOT_FOUND channel error: the queue or exchange does not exist.
pub fn is_not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}
