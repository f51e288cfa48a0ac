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

use tokio_util::sync::CancellationToken;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use crate::broker::{BrokerError, Pending, Publisher, TASK_CONFIRM_TIMEOUT};
use crate::seal::Keyring;
use crate::store::{DeliveryLog, ReplaySelection, Store, StoreError};
use crate::time::now_rfc3339;
use crate::wire::{DeliveryTask, TaskKind};

pub mod jobs;
mod pace;
mod report;

pub use pace::{Pace, RATES};
pub use report::{Failed, Limit, ReplayError, Report, Skip, Skipped};

/// Records read from the store at a time while a selection is worked through.
const PAGE: usize = 500;

/// Records claimed and sent together: one transaction, their confirms in flight at once.
pub const BATCH: usize = 256;

/// Publishes of a batch handed to the AMQP client at once: each waits for its frames to be
/// written, and one at a time that was a round through the client's I/O thread per record.
const SENDING: usize = 64;

/// A record waiting in a batch, with the id of the record looked at before it (where a run
/// that stops at it goes on from).
struct Queued {
    log: DeliveryLog,
    before: Option<String>,
}

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
}

impl Replayer {
    /// Replays one record (see the module doc); returns its new `replayed_at`.
    pub async fn replay(&self, log: &DeliveryLog) -> Result<String, ReplayError> {
        self.replay_cached(log, &mut Subscriptions::new()).await
    }

    /// Works through the records `selection` matches, oldest first, after the record `after`
    /// (an id) when given, as far as `limit` lets it, in batches sent at `pace` (and until it
    /// says stop: then `interrupted`). A dry run only checks each record. `seen` is called with each record once it is handled (progress
    /// bars, listings).
    pub async fn run(
        &self,
        selection: &ReplaySelection,
        mut after: Option<String>,
        limit: Limit,
        dry_run: bool,
        pace: &mut Pace,
        seen: &mut (dyn FnMut(&DeliveryLog) + Send),
    ) -> Result<Report, StoreError> {
        let mut report = Report::default();
        let mut subscriptions = Subscriptions::new();
        let mut batch: Vec<Queued> = Vec::new();
        loop {
            let page = self
                .store
                .replay_candidates(selection, after.as_deref(), PAGE as i64)
                .await?;
            let full = page.len() == PAGE;
            for log in page {
                // Stopped: only between batches, so every record looked at is filed and the
                // rest untouched.
                if batch.is_empty() && pace.stopped() {
                    report.interrupted = true;
                    report.more = true;
                    report.next_cursor = after;
                    return Ok(report);
                }
                if limit.reached(&report, batch.len()) {
                    if let Some(stopped_at) = self.send(&mut batch, &mut report, pace, seen).await {
                        after = stopped_at;
                    }
                    report.more = true;
                    report.next_cursor = after;
                    return Ok(report);
                }
                let id = log.id.clone();
                match self.check(&log, &mut subscriptions).await {
                    Ok(()) if !dry_run => batch.push(Queued {
                        log,
                        before: after.clone(),
                    }),
                    checked => {
                        report.record(&log.id, checked);
                        seen(&log);
                    }
                }
                after = Some(id);
                if batch.len() >= pace.batch()
                    && let Some(stopped_at) = self.send(&mut batch, &mut report, pace, seen).await
                {
                    // The record the broker did not take stays unreplayed: the next page
                    // starts with it.
                    report.more = true;
                    report.next_cursor = stopped_at;
                    return Ok(report);
                }
            }
            if let Some(stopped_at) = self.send(&mut batch, &mut report, pace, seen).await {
                report.more = true;
                report.next_cursor = stopped_at;
                return Ok(report);
            }
            if !full {
                return Ok(report);
            }
        }
    }

    /// Replays the records `ids` (a dry run's answer, confirmed by an operator), in order and
    /// in batches sent at `pace`, until `stop` fires (never between a claim and its publish).
    pub async fn replay_ids(
        &self,
        ids: &[String],
        stop: &CancellationToken,
        pace: &mut Pace,
        tick: &mut (dyn FnMut() + Send),
    ) -> Report {
        let mut report = Report::default();
        let mut subscriptions = Subscriptions::new();
        let mut next = 0;
        while next < ids.len() {
            if stop.is_cancelled() {
                report.interrupted = true;
                break;
            }
            let chunk = &ids[next..(next + pace.batch()).min(ids.len())];
            next += chunk.len();
            let found = match self.store.delivery_logs_by_id(chunk).await {
                Ok(found) => found,
                Err(e) => {
                    for id in chunk {
                        report.failed.push(Failed {
                            id: id.clone(),
                            error: e.to_string(),
                        });
                        tick();
                    }
                    continue;
                }
            };
            let mut by_id: HashMap<String, DeliveryLog> =
                found.into_iter().map(|log| (log.id.clone(), log)).collect();
            let mut batch = Vec::new();
            for id in chunk {
                let checked = match by_id.remove(id) {
                    None => Err(ReplayError::Gone),
                    Some(log) => match self.check(&log, &mut subscriptions).await {
                        Ok(()) => {
                            batch.push(Queued { log, before: None });
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                };
                report.record(id, checked);
                tick();
            }
            let mut seen = |_: &DeliveryLog| tick();
            if self
                .send(&mut batch, &mut report, pace, &mut seen)
                .await
                .is_some()
            {
                break;
            }
        }
        report
    }

    /// Claims, sends and commits `batch` (emptying it), filing each record in `report` and
    /// calling `seen` with it. When the broker did not take a record, the records after it are
    /// left untouched (released, not filed) and this returns `Some` with where a run goes on
    /// from: the record looked at before the first one not taken.
    async fn send(
        &self,
        batch: &mut Vec<Queued>,
        report: &mut Report,
        pace: &mut Pace,
        seen: &mut (dyn FnMut(&DeliveryLog) + Send),
    ) -> Option<Option<String>> {
        if batch.is_empty() {
            return None;
        }
        let queued = std::mem::take(batch);
        let ids: Vec<String> = queued.iter().map(|q| q.log.id.clone()).collect();
        let at = now_rfc3339();
        let mut claim = match self.store.claim_replays(&ids, &at).await {
            Ok(claim) => claim,
            Err(e) => {
                for q in &queued {
                    report.failed.push(Failed {
                        id: q.log.id.clone(),
                        error: e.to_string(),
                    });
                    seen(&q.log);
                }
                return None;
            }
        };
        // Sent in order (lapin queues a publish's frames when it is first polled), up to
        // SENDING at once, confirms awaited together; the first refusal ends the sending. The
        // whole batch gets one confirm limit: a broker that blocks publishers (a resource
        // alarm) holds the claims, on SQLite the store's write lock, no longer than that.
        let deadline = tokio::time::Instant::now() + TASK_CONFIRM_TIMEOUT;
        let late = || BrokerError::ConfirmTimeout(TASK_CONFIRM_TIMEOUT);
        let mut outcomes: Vec<Option<Result<(), ReplayError>>> = Vec::new();
        let mut pending = Vec::new();
        let mut sending = FuturesOrdered::new();
        let mut refused = false;
        for q in &queued {
            // Take in the publishes written so far (with SENDING under way, wait for the oldest):
            // once one is refused, nothing more is sent.
            while let Some(Some((n, written))) = if sending.len() >= SENDING {
                Some(sending.next().await)
            } else {
                sending.next().now_or_never()
            } {
                refused |= took(&mut outcomes, &mut pending, n, written);
            }
            if refused {
                outcomes.push(None);
                continue;
            }
            if !claim.holds(&q.log.id) {
                outcomes.push(Some(Err(Skip::AlreadyReplayed(None).into())));
                continue;
            }
            pace.turn().await;
            let task = task_of(&q.log).expect("checked: the record has a subscription");
            let n = outcomes.len();
            outcomes.push(Some(Ok(())));
            let (publisher, queue, keys) = (&self.publisher, &self.events_queue, &self.keys);
            let send = async move {
                let written = publisher.send_task(queue, &task, TaskKind::Replay, keys);
                let written = tokio::time::timeout_at(deadline, written)
                    .await
                    .unwrap_or_else(|_| Err(late()));
                (n, written)
            };
            sending.push_back(send);
            // First poll: its frames are queued now, behind the ones before it.
            if let Some(Some((n, written))) = sending.next().now_or_never() {
                refused |= took(&mut outcomes, &mut pending, n, written);
            }
        }
        while let Some((n, written)) = sending.next().await {
            took(&mut outcomes, &mut pending, n, written);
        }
        let confirms =
            futures_util::future::join_all(pending.into_iter().map(|(n, sent)| async move {
                let confirmed = tokio::time::timeout_at(deadline, sent.confirmed())
                    .await
                    .unwrap_or_else(|_| Err(late()));
                (n, confirmed)
            }))
            .await;
        for (n, confirmed) in confirms {
            if let Err(e) = confirmed {
                outcomes[n] = Some(Err(e.into()));
            }
        }
        // Everything not confirmed reads as not replayed; the rest is final.
        let first_refused = outcomes
            .iter()
            .position(|o| matches!(o, Some(Err(ReplayError::Broker(_)))));
        for (q, outcome) in queued.iter().zip(&outcomes) {
            if !matches!(outcome, Some(Ok(()))) {
                claim.release(&q.log.id);
            }
        }
        let committed = claim.commit().await;
        for (n, (q, outcome)) in queued.iter().zip(outcomes).enumerate() {
            if first_refused.is_some_and(|first| n > first) {
                continue; // untouched: the run goes on from before the first refusal
            }
            let Some(outcome) = outcome else { continue };
            let outcome = match (&committed, outcome) {
                (Err(e), Ok(())) => Err(ReplayError::NotMarked(StoreError::Shared(e.to_string()))),
                (_, outcome) => outcome,
            };
            if outcome.is_ok() {
                tracing::debug!(delivery_log_id = %q.log.id, event_id = %q.log.event_id, "replay queued");
            }
            report.record(&q.log.id, outcome);
            seen(&q.log);
        }
        first_refused.map(|first| queued[first].before.clone())
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

/// Files the publish of record `n`: written, its confirm joins `pending`; refused, its outcome
/// says why. True when refused.
fn took(
    outcomes: &mut [Option<Result<(), ReplayError>>],
    pending: &mut Vec<(usize, Pending)>,
    n: usize,
    written: Result<Pending, BrokerError>,
) -> bool {
    match written {
        Ok(sent) => {
            pending.push((n, sent));
            false
        }
        Err(e) => {
            outcomes[n] = Some(Err(e.into()));
            true
        }
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
