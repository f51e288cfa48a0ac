//! How a subscription change made through one replica reaches every replica within a second.
//!
//! After the store commits a change, the replica that made it applies it to its own index at
//! once and announces it on the control exchange (`P.control`, fanout); every replica hears it
//! on an exclusive queue of its own and reads that subscription again from the store. The
//! message names the subscription only ([`Change`]): the store stays the source of truth, so a
//! message someone else published can at most cause a read. Hints are applied in batches — what
//! arrived while the last batch was being applied — with each subscription read once per batch,
//! and a batch of more than [`MAX_ONE_BY_ONE`] distinct ones becomes one full reload, so a flood
//! costs no more than the periodic refresh does.
//!
//! Nothing depends on a hint arriving: the periodic full refresh (`SUBSCRIPTION_REFRESH`) stays
//! as the safety net, and a replica that reconnects to the broker (and so may have missed hints)
//! reloads everything.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, Consumer, Publisher};
use crate::metrics::Metrics;
use crate::subscriptions::Directory;
use crate::wire::control::Change;

/// Longest wait for the broker to confirm an announcement; the change is committed already, so
/// a late or failed announcement only means others see it at their periodic refresh.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most distinct subscriptions a batch reads one by one; more, and the batch reloads everything.
pub const MAX_ONE_BY_ONE: usize = 64;

/// Announces changes on the control exchange.
#[derive(Clone)]
pub struct Announcer {
    pub publisher: Publisher,
    /// The control exchange.
    pub exchange: String,
    pub metrics: Metrics,
}

impl Announcer {
    /// Tells every replica (this one included) that `change` happened. Never fails the change:
    /// a failure is logged and counted.
    pub async fn announce(&self, change: Change) {
        let body = change.encode();
        let sent = tokio::time::timeout(
            ANNOUNCE_TIMEOUT,
            self.publisher.publish_control(&self.exchange, &body),
        )
        .await;
        match sent {
            // No queue bound: no replica is listening (not even this one, disconnected since).
            Ok(Ok(())) | Ok(Err(BrokerError::Unroutable(_))) => {
                self.metrics.control_message("announced");
            }
            Ok(Err(e)) => self.failed(&change, &e.to_string()),
            Err(_) => self.failed(&change, "no confirm in time"),
        }
    }

    fn failed(&self, change: &Change, error: &str) {
        self.metrics.control_message("announce_failed");
        tracing::warn!(
            ?change,
            error,
            "could not announce a subscription change; other replicas apply it at their next periodic refresh"
        );
    }
}

/// Applies the changes `consumer` hears to `directory` until `stop` fires or the consumer ends.
pub async fn follow(
    mut consumer: Consumer,
    directory: Arc<Directory>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    while let Some(first) = consumer.next_until(&stop, "control").await {
        let mut batch = vec![first];
        // Whatever else has arrived already joins this batch.
        while batch.len() <= MAX_ONE_BY_ONE {
            match consumer.next().now_or_never() {
                Some(Some(Ok(message))) => batch.push(message),
                _ => break,
            }
        }
        let mut ids = BTreeSet::new();
        let mut everything = false;
        for message in &batch {
            match Change::read(message.body()) {
                Ok(Change::Subscription(id)) => {
                    ids.insert(id);
                }
                Ok(Change::Everything) => everything = true,
                Err(reason) => {
                    metrics.control_message("invalid");
                    tracing::warn!(
                        reason,
                        "ignored a message on the control exchange that is not a control message"
                    );
                }
            }
        }
        apply(&directory, &metrics, ids, everything).await;
    }
}

async fn apply(directory: &Directory, metrics: &Metrics, ids: BTreeSet<String>, everything: bool) {
    if everything || ids.len() > MAX_ONE_BY_ONE {
        match directory.refresh().await {
            Ok(_) => {
                for _ in 0..ids.len().max(1) {
                    metrics.control_message("applied");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reloading subscriptions after a change failed; the periodic refresh retries")
            }
        }
        return;
    }
    for id in ids {
        match directory.reload(&id).await {
            Ok(()) => metrics.control_message("applied"),
            Err(e) => {
                tracing::warn!(error = %e, subscription_id = %id, "reading a changed subscription failed; the periodic refresh retries")
            }
        }
    }
}
