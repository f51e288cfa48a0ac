//! The app's background loops: queue sampling, the periodic refresh and the delivery log's
//! retention purge.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::seal::Keyring;
use crate::store::Store;
use crate::subscriptions::Directory;
use crate::time::rfc3339;

/// How often queues are sampled into `webhook_queue_messages` and `webhook_queue_consumers`.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples every queue's ready messages and consumers. The consumer count is the broker's, so
/// it includes other instances: 0 on the events queue means nobody delivers.
pub(super) async fn sample_queues(broker: Broker, metrics: Metrics) {
    loop {
        for queue in broker.topology.queues() {
            match broker.queue_counts(queue).await {
                Ok(Some(counts)) => metrics.queue_sampled(queue, counts.ready, counts.consumers),
                Ok(None) => tracing::warn!(queue, "queue sampling: the queue does not exist"),
                Err(e) => tracing::warn!(error = %e, queue, "queue sampling failed"),
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Reloads the subscription index and the message keys periodically, picking up changes made by
/// other instances.
pub(super) async fn refresh(
    directory: Arc<Directory>,
    keys: Arc<Keyring>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = directory.refresh().await {
            tracing::warn!(error = %e, "subscription refresh failed; keeping the last index");
        }
        if let Err(e) = keys.reload().await {
            tracing::warn!(error = %e, "message key refresh failed; keeping the last keys");
        }
    }
}

/// The first purge pass comes this long after the start, then every [`PURGE_EVERY`].
const FIRST_PURGE: Duration = Duration::from_secs(5);
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Records deleted per statement, and the pause between two: the DLQ logger's writes get the
/// store in between (on SQLite, its one writer), so a purge of millions never stalls it.
const PURGE_BATCH: i64 = 1000;
const PURGE_PAUSE: Duration = Duration::from_millis(50);

/// Deletes delivery-log records older than `retention` (see `DELIVERY_LOG_RETENTION`), a batch
/// at a time, until none is left, then waits for the next pass.
pub(super) async fn purge_delivery_logs(
    store: Store,
    retention: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut wait = FIRST_PURGE;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = PURGE_EVERY;
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return; // beyond any date: nothing is ever old enough
        };
        let before = rfc3339(chrono::Utc::now() - retention);
        let mut purged = 0;
        loop {
            match store.purge_delivery_logs(&before, PURGE_BATCH).await {
                Ok(n) => {
                    purged += n;
                    metrics.delivery_logs_purged(n);
                    if n < PURGE_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delivery-log purge failed; trying again at the next pass");
                    break;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PURGE_PAUSE) => {}
            }
        }
        if purged > 0 {
            tracing::info!(purged, before = %before, "delivery-log records past DELIVERY_LOG_RETENTION deleted");
        }
    }
}
