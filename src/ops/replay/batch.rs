//! One batch of a replay: claimed in one transaction, sent (consecutive records of one account
//! as one message), committed once confirmed. On PostgreSQL a batch is claimed while the one
//! before it is sent ([`Ahead`]).

use std::ops::Range;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio_util::task::AbortOnDropHandle;

use super::{Failed, Pace, Queued, ReplayError, Replayer, Report, Seen, Skip, task_of};
use crate::broker::{BrokerError, Pending, TASK_CONFIRM_TIMEOUT};
use crate::store::{BatchClaim, StoreError};
use crate::time::now_rfc3339;
use crate::wire::DeliveryTask;
use crate::wire::TaskKind;
use crate::wire::bundle::{MAX_ITEMS, bundle_len, task_size};

/// Publishes of a batch handed to the AMQP client at once: each waits for its frames to be
/// written, and one at a time that was a round through the client's I/O thread per record.
const SENDING: usize = 64;

/// A batch whose claim is under way or done, not sent yet.
pub(super) struct Claimed {
    queued: Vec<Queued>,
    claim: AbortOnDropHandle<Result<BatchClaim, StoreError>>,
}

/// The batch handed on and not sent yet, if any. Only on PostgreSQL, and only for a replay at
/// full speed: there a batch's claim runs while the batch before it is sent, confirmed and
/// committed (claims of different records do not wait for each other), instead of the two
/// taking turns. On SQLite a claim holds the write lock until its commit, so a batch is sent as
/// soon as it is claimed; at a set rate the batch waits for its turn before its claim, and one
/// held ahead would wait that turn out claimed. Dropped unsent, its claim is rolled back.
pub(super) type Ahead = Option<Claimed>;

/// How many records the batch held in `ahead` has.
pub(super) fn held(ahead: &Ahead) -> usize {
    ahead.as_ref().map_or(0, |claimed| claimed.queued.len())
}

impl Replayer {
    /// Hands `batch` on (emptying it): claimed at its turn of `pace`, then sent and committed
    /// ([`finish`](Self::finish)) — at once, or, held in `ahead`, once the next batch is handed
    /// on or the run ends ([`flush`](Self::flush)); the batch held before it is finished now.
    /// Each record is filed in `report` and given to `seen` when its batch is finished. `Some`:
    /// the broker did not take a record, and nothing more is sent (a batch held is dropped,
    /// its claim rolled back): where a run goes on from, as [`finish`](Self::finish) says.
    pub(super) async fn send(
        &self,
        batch: &mut Vec<Queued>,
        ahead: &mut Ahead,
        report: &mut Report,
        pace: &mut Pace,
        seen: &mut (dyn FnMut(Seen<'_>) + Send),
    ) -> Option<Option<String>> {
        if batch.is_empty() {
            return None;
        }
        let queued = std::mem::take(batch);
        // The same for every batch of a run: `ahead` stays empty when it is false.
        let held = self.store.may_claim_ahead() && !pace.paced();
        pace.turn(queued.len()).await;
        let ids: Vec<String> = queued.iter().map(|q| q.log.id.clone()).collect();
        let store = self.store.clone();
        let claim = AbortOnDropHandle::new(tokio::spawn(async move {
            store.claim_replays(&ids, &now_rfc3339()).await
        }));
        let claimed = Claimed { queued, claim };
        if !held {
            return self.finish(claimed, report, seen).await;
        }
        let before = ahead.replace(claimed);
        let stopped = match before {
            Some(before) => self.finish(before, report, seen).await,
            None => None,
        };
        if stopped.is_some() {
            *ahead = None;
        }
        stopped
    }

    /// Finishes the batch held in `ahead`, if any (see [`send`](Self::send)).
    pub(super) async fn flush(
        &self,
        ahead: &mut Ahead,
        report: &mut Report,
        seen: &mut (dyn FnMut(Seen<'_>) + Send),
    ) -> Option<Option<String>> {
        match ahead.take() {
            Some(claimed) => self.finish(claimed, report, seen).await,
            None => None,
        }
    }

    /// Sends and commits a claimed batch, filing each record in `report` and calling `seen`
    /// with it. When the broker did not take a record, nothing more is sent: the records not
    /// sent yet are left untouched (released, not filed; those already sent are filed as they
    /// went) and this returns `Some` with where a run goes on from: the record looked at before
    /// the first one not taken.
    async fn finish(
        &self,
        claimed: Claimed,
        report: &mut Report,
        seen: &mut (dyn FnMut(Seen<'_>) + Send),
    ) -> Option<Option<String>> {
        let Claimed { queued, claim } = claimed;
        let claimed = match claim.await {
            Ok(claimed) => claimed,
            // A panic stays a panic; the task is only cancelled by dropping its handle.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let mut claim = match claimed {
            Ok(claim) => claim,
            Err(e) => {
                for q in &queued {
                    report.failed.push(Failed {
                        id: q.log.id.clone(),
                        error: e.to_string(),
                    });
                    seen(Ok(&q.log));
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
        let mut next = 0;
        while next < queued.len() {
            // Take in the publishes written so far (with SENDING under way, wait for the oldest):
            // once one is refused, nothing more is sent.
            while let Some(Some((places, written))) = if sending.len() >= SENDING {
                Some(sending.next().await)
            } else {
                sending.next().now_or_never()
            } {
                refused |= took(&mut outcomes, &mut pending, places, written);
            }
            let q = &queued[next];
            next += 1;
            if refused {
                outcomes.push(None);
                continue;
            }
            if !claim.holds(&q.log.id) {
                outcomes.push(Some(Err(Skip::AlreadyReplayed(None).into())));
                continue;
            }
            // The records after it of the same account, held too, go in the same message (a
            // bundle, as the dispatcher hands on retries): the broker's cost is per message.
            let task = task_of(&q.log).expect("checked: the record has a subscription");
            let most = if self.bundles { MAX_ITEMS } else { 1 };
            let account = task.account_id.clone();
            let mut tasks: Vec<DeliveryTask> = std::iter::once(task)
                .chain(queued[next..].iter().map_while(|more| {
                    let held = claim.holds(&more.log.id);
                    held.then(|| task_of(&more.log))
                        .flatten()
                        .filter(|t| t.account_id == account)
                }))
                .take(most)
                .collect();
            tasks.truncate(bundle_len(tasks.iter().map(task_size), most));
            next += tasks.len() - 1;
            let places = outcomes.len()..outcomes.len() + tasks.len();
            outcomes.extend(tasks.iter().map(|_| Some(Ok(()))));
            let (publisher, queue, keys) = (&self.publisher, &self.events_queue, &self.keys);
            let send = async move {
                let written = async {
                    match tasks.as_slice() {
                        [one] => {
                            publisher
                                .send_task(queue, one, TaskKind::Replay, keys)
                                .await
                        }
                        many => {
                            let account = &many[0].account_id;
                            publisher.send_task_bundle(queue, account, many, keys).await
                        }
                    }
                };
                let written = tokio::time::timeout_at(deadline, written)
                    .await
                    .unwrap_or_else(|_| Err(late()));
                (places, written)
            };
            sending.push_back(send);
            // First poll: its frames are queued now, behind the ones before it.
            if let Some(Some((places, written))) = sending.next().now_or_never() {
                refused |= took(&mut outcomes, &mut pending, places, written);
            }
        }
        while let Some((places, written)) = sending.next().await {
            took(&mut outcomes, &mut pending, places, written);
        }
        let confirms =
            futures_util::future::join_all(pending.into_iter().map(|(places, sent)| async move {
                let confirmed = tokio::time::timeout_at(deadline, sent.confirmed())
                    .await
                    .unwrap_or_else(|_| Err(late()));
                (places, confirmed)
            }))
            .await;
        for (places, confirmed) in confirms {
            if let Err(e) = confirmed {
                for n in places {
                    outcomes[n] = Some(Err(e.clone().into()));
                }
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
        // Filed: every record sent, those after the first refusal too (up to SENDING of them
        // were under way when it came; the confirmed ones are replayed and stay so). Only the
        // ones never sent are untouched; the run goes on from before the first refusal, where a
        // later run finds the replayed ones already replayed.
        for (q, outcome) in queued.iter().zip(outcomes) {
            let Some(outcome) = outcome else { continue };
            let outcome = match (&committed, outcome) {
                (Err(e), Ok(())) => Err(ReplayError::NotMarked(StoreError::Shared(e.to_string()))),
                (_, outcome) => outcome,
            };
            if outcome.is_ok() {
                tracing::debug!(delivery_log_id = %q.log.id, event_id = %q.log.event_id, "replay queued");
            }
            report.record(&q.log.id, outcome);
            seen(Ok(&q.log));
        }
        first_refused.map(|first| queued[first].before.clone())
    }
}

/// Files the publish of the records at `places` (one message): written, its confirm joins
/// `pending`; refused, their outcomes say why. True when refused.
fn took(
    outcomes: &mut [Option<Result<(), ReplayError>>],
    pending: &mut Vec<(Range<usize>, Pending)>,
    places: Range<usize>,
    written: Result<Pending, BrokerError>,
) -> bool {
    match written {
        Ok(sent) => {
            pending.push((places, sent));
            false
        }
        Err(e) => {
            for n in places {
                outcomes[n] = Some(Err(e.clone().into()));
            }
            true
        }
    }
}
