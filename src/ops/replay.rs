//! Replay: a delivery-log record's delivery sent again from attempt 1 through the normal path.
//! One implementation for `POST /v1/delivery-logs/{id}/replay`, the bulk endpoint and
//! `webhook-dispatcher replay`. A record is replayed once: it is claimed in a store transaction
//! (a racing claim waits for the row, then finds it taken), the task is published with a
//! confirm, and only then is the claim committed. A failed publish or a process that dies in
//! between rolls the claim back, so a record never reads as replayed without having been sent.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, Publisher};
use crate::seal::Keyring;
use crate::store::{DeliveryLog, ReplaySelection, Store, StoreError};
use crate::time::now_rfc3339;
use crate::wire::{DeliveryTask, TaskKind};

/// Records read from the store at a time while a selection is worked through.
const PAGE: usize = 500;

/// Why a record is not replayed. [`code`](Skip::code) is the stable label (API error code,
/// `reason` of a skipped record); the `Display` text says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error(
        "rejected before matching ({0}); there is no delivery to replay: fix the message and publish it again"
    )]
    NotReplayable(String),
    #[error("subscription {0} no longer exists")]
    SubscriptionDeleted(String),
    #[error("subscription {0} is disabled; enable it, then replay")]
    SubscriptionDisabled(String),
    #[error("already replayed{}", .0.as_ref().map(|at| format!(" at {at}")).unwrap_or_default())]
    AlreadyReplayed(Option<String>),
    #[error(
        "its content was not verified as this service's own (forged, or stored by a version that \
         did not check): it is never replayed; if the event is genuine, publish it again"
    )]
    Untrusted,
}

impl Skip {
    pub fn code(&self) -> &'static str {
        match self {
            Skip::NotReplayable(_) => "not_replayable",
            Skip::SubscriptionDeleted(_) => "subscription_deleted",
            Skip::SubscriptionDisabled(_) => "subscription_disabled",
            Skip::AlreadyReplayed(_) => "already_replayed",
            Skip::Untrusted => "untrusted",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Skipped(#[from] Skip),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the record is no longer in the store")]
    Gone,
    #[error(
        "sent, but it could not be marked replayed ({0}): it reads as not replayed, and replaying \
         it again sends it a second time (same webhook-id)"
    )]
    NotMarked(StoreError),
}

/// A record that was skipped, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Skipped {
    pub id: String,
    /// `not_replayable`, `untrusted`, `subscription_deleted`, `subscription_disabled` or
    /// `already_replayed`.
    #[schema(value_type = String)]
    pub reason: &'static str,
    /// The whole explanation (not in the API's answer, which keeps to `{id, reason}`).
    #[serde(skip)]
    pub detail: String,
}

/// A record whose replay failed (it stays unreplayed: it can be replayed again later).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Failed {
    pub id: String,
    pub error: String,
}

/// What a replay run did, or (dry run) would do: `replayed` lists the ids replayed (or that
/// would be), oldest first.
#[derive(Debug, Default)]
pub struct Report {
    pub replayed: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
    /// More records matched than the limit let through.
    pub more: bool,
    /// With `more`: the last record looked at; pass it as `after` to go on from there.
    pub next_cursor: Option<String>,
    /// Stopped early (ctrl-c) before the records left; those were not touched.
    pub interrupted: bool,
    /// Stopped at the first record the broker did not take: the ones after it were not
    /// touched (each would wait out the confirm limit too, holding its claim meanwhile).
    pub broker_failed: bool,
}

impl Report {
    /// Records looked at: replayed, skipped and failed.
    pub fn matched(&self) -> usize {
        self.replayed.len() + self.skipped.len() + self.failed.len()
    }

    /// Files `id` under what `result` says; sets (and returns) [`broker_failed`] when the broker
    /// did not take it, after which a run stops.
    ///
    /// [`broker_failed`]: Report::broker_failed
    fn record(&mut self, id: &str, result: Result<(), ReplayError>) -> bool {
        self.broker_failed = matches!(result, Err(ReplayError::Broker(_)));
        match result {
            Ok(()) => self.replayed.push(id.to_string()),
            Err(ReplayError::Skipped(skip)) => self.skipped.push(Skipped {
                id: id.to_string(),
                reason: skip.code(),
                detail: skip.to_string(),
            }),
            Err(e) => self.failed.push(Failed {
                id: id.to_string(),
                error: e.to_string(),
            }),
        }
        self.broker_failed
    }
}

/// How far [`Replayer::run`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Every matching record, a page at a time.
    None,
    /// At most this many records looked at, skipped ones included (an API page: the cursor
    /// goes on after them).
    Looked(usize),
    /// At most this many records replayed (or, in a dry run, replayable); skipped ones do not
    /// count, so records that can never be replayed cannot use up the limit (the CLI, which
    /// has no cursor).
    Replayed(usize),
}

impl Limit {
    fn reached(self, report: &Report) -> bool {
        match self {
            Limit::None => false,
            Limit::Looked(n) => report.matched() >= n,
            Limit::Replayed(n) => report.replayed.len() >= n,
        }
    }
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
    /// (an id) when given, as far as `limit` lets it. A dry run
    /// only checks each record. `seen` is called with each record once it is handled (progress
    /// bars, listings).
    pub async fn run(
        &self,
        selection: &ReplaySelection,
        mut after: Option<String>,
        limit: Limit,
        dry_run: bool,
        seen: &mut (dyn FnMut(&DeliveryLog) + Send),
    ) -> Result<Report, StoreError> {
        let mut report = Report::default();
        let mut subscriptions = Subscriptions::new();
        loop {
            let page = self
                .store
                .replay_candidates(selection, after.as_deref(), PAGE as i64)
                .await?;
            let full = page.len() == PAGE;
            for log in page {
                if limit.reached(&report) {
                    report.more = true;
                    report.next_cursor = after;
                    return Ok(report);
                }
                let result = if dry_run {
                    self.check(&log, &mut subscriptions).await
                } else {
                    self.replay_cached(&log, &mut subscriptions).await.map(drop)
                };
                let broker_failed = report.record(&log.id, result);
                seen(&log);
                if broker_failed {
                    // The failed record stays unreplayed: the next page starts with it.
                    report.more = true;
                    report.next_cursor = after;
                    return Ok(report);
                }
                after = Some(log.id);
            }
            if !full {
                return Ok(report);
            }
        }
    }

    /// Replays the records `ids` (a dry run's answer, confirmed by an operator), in order,
    /// until `stop` fires (never between a claim and its publish).
    pub async fn replay_ids(
        &self,
        ids: &[String],
        stop: &CancellationToken,
        tick: &mut (dyn FnMut() + Send),
    ) -> Report {
        let mut report = Report::default();
        let mut subscriptions = Subscriptions::new();
        for id in ids {
            if stop.is_cancelled() {
                report.interrupted = true;
                break;
            }
            let result = match self.store.delivery_log(id).await {
                Ok(Some(log)) => self.replay_cached(&log, &mut subscriptions).await.map(drop),
                Ok(None) => Err(ReplayError::Gone),
                Err(e) => Err(e.into()),
            };
            let broker_failed = report.record(id, result);
            tick();
            if broker_failed {
                break;
            }
        }
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
