//! The app's background loops: queue sampling and the periodic refresh.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::seal::Keyring;
use crate::subscriptions::Directory;

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
