//! The DLQ logger: consumes `P.dead` and commits each dead letter to the delivery log before
//! acking it. While the store is down it keeps retrying and holds the message unacked, so the
//! dead letters stay in `P.dead` until they are safely stored.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::event;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::wire::DeadLetter;

pub async fn run(
    mut consumer: lapin::Consumer,
    store: Store,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => persist(delivery, &store, &metrics, &stop).await,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "dead-letter consumer failed");
                return;
            }
            None => return,
        }
    }
}

async fn persist(delivery: Delivery, store: &Store, metrics: &Metrics, stop: &CancellationToken) {
    let dead = read(&delivery.data).sanitized();
    let mut wait = Duration::from_millis(100);
    loop {
        match store.insert_dead_letter(&dead).await {
            Ok(inserted) => {
                if inserted {
                    metrics.dead_letters_persisted.inc();
                    tracing::info!(id = %dead.id, event_id = %dead.event_id, reason = %dead.reason, "dead letter persisted");
                } else {
                    tracing::debug!(id = %dead.id, "dead letter already persisted");
                }
                if !broker::ack(&delivery.acker).await {
                    tracing::warn!(id = %dead.id, "ack of a persisted dead letter failed; its redelivery is stored once (same id)");
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, id = %dead.id, retry_in = ?wait, "cannot persist dead letter; keeping it in the queue");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A dead letter from the queue; anything else that landed there (an operator's hand-published
/// message, say) is kept too, under reason `unreadable`, with its raw bytes.
fn read(data: &[u8]) -> DeadLetter {
    match serde_json::from_slice::<DeadLetter>(data) {
        Ok(dead) => dead,
        Err(e) => {
            let detail = format!("message in the dead-letter queue is not a dead letter: {e}");
            DeadLetter::for_raw(data, event::derived_id(data), "unreadable", detail)
        }
    }
}
