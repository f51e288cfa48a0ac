//! Working through many records: a selection page by page (`run`: the CLI's `--yes`, the bulk
//! endpoint, background jobs), or a list of ids an operator confirmed (`replay_ids`), in
//! batches ([`batch`](super::batch)).

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::batch::{Ahead, held};
use super::{
    Failed, Limit, PAGE, Pace, Queued, ReplayError, Replayer, Report, Seen, Subscriptions,
};
use crate::store::{Read, ReplaySelection, StoreError, id_of};

impl Replayer {
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
}
