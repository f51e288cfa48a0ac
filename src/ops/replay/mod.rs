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
use tokio_util::task::AbortOnDropHandle;

use crate::broker::Publisher;
use crate::seal::Keyring;
use crate::store::{DeliveryLog, Read, ReplaySelection, Store, StoreError, Unreadable, id_of};
use crate::time::now_rfc3339;
use crate::wire::{DeliveryTask, TaskKind};
use batch::{Ahead, held};

mod batch;
pub mod jobs;
mod pace;
mod report;

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

    /// Works through the records `selection` matches, oldest first, after the record `after`
    /// (an id) when given, as far as `limit` lets it, in batches sent at `pace` (and until it
    /// says stop: then `interrupted`). A dry run only checks each record. `seen` is called with
    /// each row once it is handled (progress bars, listings): the record, or the row that cannot
    /// be read (it is in the report's `failed`), so a count of the selection is reached.
    pub async fn run(
        &self,
        selection: &ReplaySelection,
        after: Option<String>,
        limit: Limit,
        dry_run: bool,
        pace: &mut Pace,
        seen: &mut (dyn FnMut(Seen<'_>) + Send),
    ) -> Result<Report, StoreError> {
        let mut report = Report::default();
        match self.store.refresh_log_statistics().await {
            Ok(true) => tracing::info!(
                "the delivery log's planner statistics were refreshed before a replay"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the delivery log's planner statistics could not be refreshed; the replay goes on")
            }
        }
        let mut ahead: Ahead = None;
        let walked = self
            .walk(
                selection,
                after,
                limit,
                dry_run,
                pace,
                seen,
                &mut report,
                &mut ahead,
            )
            .await;
        // However the walk ended, a batch still held is sent (a stop comes between batches,
        // never between a claim and its publish); one the broker refused ends the run there.
        if let Some(stopped_at) = self.flush(&mut ahead, &mut report, seen).await {
            report.more = true;
            report.next_cursor = stopped_at;
        }
        walked.map(|()| report)
    }

    /// The body of [`run`](Self::run): files what it did in `report`, and may end with a batch
    /// held in `ahead`, not sent yet ([`Ahead`]), that `run` finishes.
    #[allow(clippy::too_many_arguments)]
    async fn walk(
        &self,
        selection: &ReplaySelection,
        mut after: Option<String>,
        limit: Limit,
        dry_run: bool,
        pace: &mut Pace,
        seen: &mut (dyn FnMut(Seen<'_>) + Send),
        report: &mut Report,
        ahead: &mut Ahead,
    ) -> Result<(), StoreError> {
        let mut subscriptions = Subscriptions::new();
        let mut batch: Vec<Queued> = Vec::new();
        // Records on their way: in the batch being filled and in the one held, if any; neither
        // filed in `report` yet.
        let queued = |batch: &Vec<Queued>, ahead: &Ahead| batch.len() + held(ahead);
        // The next page, read while this one's batches are claimed, sent and committed: a read
        // only (what it finds is claimed later, as any page's records are), dropped unread when
        // the run stops first. Only when a page's size does not hang on how the run goes.
        let read_ahead = matches!(limit, Limit::None | Limit::Replayed(_));
        let mut next_page: Option<AbortOnDropHandle<Result<Vec<Read>, StoreError>>> = None;
        loop {
            let wanted = limit.page(report, queued(&batch, ahead), PAGE);
            let read = match next_page.take() {
                Some(reading) => reading
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Shared(e.to_string()))),
                None => {
                    self.store
                        .replay_candidates(selection, after.as_deref(), wanted as i64)
                        .await
                }
            };
            let page = match read {
                Ok(page) => page,
                // Nothing done yet: the run failed. Past the first page, what was done is
                // worth reporting (a request's thousands of replays, a job's counts): it
                // stops there, as at a broker refusal, with where to go on from.
                Err(e) if report.matched() + queued(&batch, ahead) == 0 => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, handled = report.matched(), "the store failed during a replay; it stops with what it did");
                    report.store_failed = Some(e.to_string());
                    report.more = true;
                    report.next_cursor = after;
                    return Ok(());
                }
            };
            let full = page.len() == wanted;
            if read_ahead
                && full
                && let Some(last) = page.last()
            {
                let (store, selection, last) = (
                    self.store.clone(),
                    selection.clone(),
                    id_of(last).to_string(),
                );
                next_page = Some(AbortOnDropHandle::new(tokio::spawn(async move {
                    store
                        .replay_candidates(&selection, Some(&last), PAGE as i64)
                        .await
                })));
            }
            for read in page {
                // Stopped: only between batches, so every record looked at is filed and the
                // rest untouched.
                if batch.is_empty() && pace.stopped() {
                    report.interrupted = true;
                    report.more = true;
                    report.next_cursor = after;
                    return Ok(());
                }
                if limit.reached(report, queued(&batch, ahead)) {
                    if let Some(stopped_at) = self.send(&mut batch, ahead, report, pace, seen).await
                    {
                        after = stopped_at;
                    }
                    report.more = true;
                    report.next_cursor = after;
                    return Ok(());
                }
                let log = match read {
                    Ok(log) => log,
                    // A row that cannot be read fails alone (it stays unreplayed, named in the
                    // report) and the run goes on past it.
                    Err(unreadable) => {
                        tracing::error!(error = %unreadable, "a delivery-log record cannot be replayed");
                        after = Some(unreadable.id.clone());
                        seen(Err(&unreadable));
                        report.unreadable(unreadable);
                        continue;
                    }
                };
                let id = log.id.clone();
                match self.check(&log, &mut subscriptions).await {
                    Ok(()) if !dry_run => batch.push(Queued {
                        log,
                        before: after.clone(),
                    }),
                    checked => {
                        report.record(&log.id, checked);
                        seen(Ok(&log));
                    }
                }
                after = Some(id);
                if batch.len() >= pace.batch()
                    && let Some(stopped_at) = self.send(&mut batch, ahead, report, pace, seen).await
                {
                    // The record the broker did not take stays unreplayed: the next page
                    // starts with it.
                    report.more = true;
                    report.next_cursor = stopped_at;
                    return Ok(());
                }
            }
            if let Some(stopped_at) = self.send(&mut batch, ahead, report, pace, seen).await {
                report.more = true;
                report.next_cursor = stopped_at;
                return Ok(());
            }
            if !full {
                return Ok(());
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
        let mut ahead: Ahead = None;
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
            let mut by_id: HashMap<String, Read> = found
                .into_iter()
                .map(|read| (id_of(&read).to_string(), read))
                .collect();
            let mut batch = Vec::new();
            for id in chunk {
                let checked = match by_id.remove(id) {
                    None => Err(ReplayError::Gone),
                    Some(Err(unreadable)) => {
                        report.unreadable(unreadable);
                        tick();
                        continue;
                    }
                    Some(Ok(log)) => match self.check(&log, &mut subscriptions).await {
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
            let mut seen = |_: Seen<'_>| tick();
            if self
                .send(&mut batch, &mut ahead, &mut report, pace, &mut seen)
                .await
                .is_some()
            {
                break;
            }
        }
        self.flush(&mut ahead, &mut report, &mut |_| tick()).await;
        report
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
