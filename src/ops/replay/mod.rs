//! Replay: a delivery-log record's delivery sent again from attempt 1 through the normal path.
//! One implementation for `POST /v1/delivery-logs/{id}/replay`, the bulk endpoint and
//! `webhook-dispatcher replay`. A record is replayed once: it is claimed in a store transaction
//! (a racing claim waits for the row, then finds it taken), the task is published with a
//! confirm, and only then is the claim committed. A failed publish or a process that dies in
//! between rolls the claim back, so a record never reads as replayed without having been sent.
//!
//! Many records go in batches ([`BATCH`]): one transaction claims the batch, every task is sent
//! with its confirm awaited together (a pipeline, not one round trip each), and the claims are
//! committed once the confirms are in, less those whose publish failed. A process that dies
//! before the commit leaves the whole batch unreplayed: at worst a batch is sent twice (same
//! `webhook-id`s), never one marked without having been sent. `Pace` spreads the sends at a
//! given rate, so a recovering endpoint is not flooded.

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::Publisher;
use crate::seal::Keyring;
use crate::store::{DeliveryLog, Store, Unreadable};
use crate::time::now_rfc3339;
use crate::wire::{DeliveryTask, TaskKind};

mod batch;
pub mod jobs;
mod pace;
mod report;
mod walk;

pub use pace::{Pace, RATES};
pub use report::{Failed, Limit, ReplayError, Report, Skip, Skipped};

/// Records read from the store at a time while a selection is worked through: two batches,
/// since a batch never spans pages.
const PAGE: usize = 2 * BATCH;

/// Records claimed and sent together: one transaction, their confirms in flight at once. A
/// batch pays one claim, one wait for the broker's confirms and one commit whatever its size;
/// 1,024 replayed 13–15 % faster than 256 on both stores once records of an account travel in
/// bundles (BENCHMARKS.md, "Anonymous placeholders"). On SQLite the claim holds the write lock
/// until the commit, for as long as the batch's confirms take; the DLQ logger waits it out.
pub const BATCH: usize = 1024;

/// A record waiting in a batch, with the id of the record looked at before it (where a run
/// that stops at it goes on from).
struct Queued {
    log: DeliveryLog,
    before: Option<String>,
}

/// A row a run has handled, as its `seen` callback gets it: the record, or the row that cannot
/// be read.
pub type Seen<'a> = Result<&'a DeliveryLog, &'a Unreadable>;

/// Subscription facts looked up once per run: `None` when the subscription is gone.
type Subscriptions = HashMap<String, Option<(String, bool)>>;

/// Replays records from `store` onto `events_queue` through `publisher` (a confirm channel).
#[derive(Clone)]
pub struct Replayer {
    pub store: Store,
    pub publisher: Publisher,
    pub events_queue: String,
    /// Seals the replayed tasks.
    pub keys: Arc<Keyring>,
    /// Whether consecutive records of one account may be sent as one message (`BUNDLES`).
    pub bundles: bool,
}

impl Replayer {
    /// Replays one record (see the module doc); returns its new `replayed_at`.
    pub async fn replay(&self, log: &DeliveryLog) -> Result<String, ReplayError> {
        self.replay_cached(log, &mut Subscriptions::new()).await
    }

    async fn replay_cached(
        &self,
        log: &DeliveryLog,
        subscriptions: &mut Subscriptions,
    ) -> Result<String, ReplayError> {
        self.check(log, subscriptions).await?;
        let id = &log.id;
        let at = now_rfc3339();
        let Some(claim) = self.store.claim_replay(id, &at).await? else {
            return Err(Skip::AlreadyReplayed(None).into());
        };
        // The claim becomes final only after the broker confirmed the task. A failed publish,
        // or the process dying in between, rolls it back: a record never reads as replayed
        // without having been sent (at worst, dying after the confirm sends it twice, under
        // the same webhook-id).
        let task = task_of(log).expect("checked: the record has a subscription");
        self.publisher
            .enqueue_task(&self.events_queue, &task, TaskKind::Replay, &self.keys)
            .await?;
        claim.commit().await.map_err(ReplayError::NotMarked)?;
        tracing::info!(delivery_log_id = %id, event_id = %log.event_id, "replay queued");
        Ok(at)
    }

    /// Whether `log` can be replayed now: it has a delivery, not replayed yet, and its
    /// subscription exists for its account and is enabled.
    async fn check(
        &self,
        log: &DeliveryLog,
        subscriptions: &mut Subscriptions,
    ) -> Result<(), ReplayError> {
        if log.trusted != Some(true) {
            return Err(Skip::Untrusted.into());
        }
        let Some(task) = task_of(log) else {
            return Err(Skip::NotReplayable(log.reason.clone()).into());
        };
        let sub_id = task.subscription_id;
        if !subscriptions.contains_key(&sub_id) {
            let found = self.store.subscription(&sub_id).await?;
            let facts = found.map(|s| (s.account_id, s.enabled));
            subscriptions.insert(sub_id.clone(), facts);
        }
        // A subscription of another account is as good as gone (the dispatcher sees it so too).
        match &subscriptions[&sub_id] {
            Some((account, enabled)) if *account == task.account_id => {
                if !enabled {
                    return Err(Skip::SubscriptionDisabled(sub_id).into());
                }
            }
            _ => return Err(Skip::SubscriptionDeleted(sub_id).into()),
        }
        if let Some(at) = &log.replayed_at {
            return Err(Skip::AlreadyReplayed(Some(at.clone())).into());
        }
        Ok(())
    }
}

/// Runs `work` on a task of its own and waits for it. Dropping the wait (an HTTP client that
/// went away cancels its handler) does not cancel the task, so a replay under way finishes
/// (confirmed, then marked) instead of rolling back the claim of a record already sent.
pub async fn detached<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    match tokio::spawn(work).await {
        Ok(out) => out,
        // A panic stays a panic; a task is only cancelled when the runtime shuts down.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The delivery task that sends `log` again from attempt 1; `None` for a message rejected
/// before matching (no subscription, nothing to deliver).
fn task_of(log: &DeliveryLog) -> Option<DeliveryTask> {
    let (Some(subscription_id), Some(account_id), Some(event)) =
        (&log.subscription_id, &log.account_id, &log.event)
    else {
        return None;
    };
    Some(DeliveryTask::first_attempt(
        &log.event_id,
        account_id,
        subscription_id,
        event,
        log.payload.get().to_string(),
    ))
}

#[cfg(test)]
mod tests;
