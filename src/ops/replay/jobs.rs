//! Bulk replays in the background (`POST /v1/replay-jobs`): the selection is worked through in
//! chunks by the same [`Replayer`] as every other replay, the job's row in the store holds its
//! state and progress (written after every chunk, so any replica answers `GET`), and a cancel
//! set by any replica stops it after the chunk under way. A chunk is about a second of sending,
//! so progress stays fresh and a cancel is quick; what a stopped job did not reach
//! stays replayable.

use tokio_util::sync::CancellationToken;

use super::{Limit, Pace, Replayer};
use crate::store::{JobProgress, ReplayJob, ReplaySelection, StoreError};
use crate::time::now_rfc3339;

/// Records looked at per chunk: about a second of sending at the job's rate, at most 2,000.
fn chunk(rate: Option<u32>) -> usize {
    rate.map_or(2_000, |r| (r as usize).clamp(1, 2_000))
}

/// Records the job and starts it on this replica; `stop` (the replica shutting down) ends it
/// as `interrupted` after its current chunk. `described` is the selection as the caller gave
/// it, shown with the job.
pub async fn start(
    replayer: Replayer,
    selection: ReplaySelection,
    described: serde_json::Value,
    rate: Option<u32>,
    stop: CancellationToken,
) -> Result<ReplayJob, StoreError> {
    let id = format!("rj_{}", uuid::Uuid::now_v7().simple());
    let store = replayer.store.clone();
    store
        .create_replay_job(&id, &described, rate, &now_rfc3339())
        .await?;
    let job = store
        .replay_job(&id)
        .await?
        .ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            detail: "the job just recorded is not there".into(),
        })?;
    tokio::spawn(run(replayer, id, selection, rate, stop));
    Ok(job)
}

async fn run(
    replayer: Replayer,
    id: String,
    selection: ReplaySelection,
    rate: Option<u32>,
    stop: CancellationToken,
) {
    let store = replayer.store.clone();
    let (state, error) = work(&replayer, &id, &selection, rate, &stop).await;
    tracing::info!(job = %id, state, error = error.as_deref().unwrap_or(""), "replay job ended");
    if let Err(e) = store
        .finish_replay_job(&id, state, error.as_deref(), &now_rfc3339())
        .await
    {
        tracing::error!(job = %id, error = %e, "could not record the end of a replay job; it reads as interrupted");
    }
}

/// Works through the selection; the state the job ends in, and why when not `done`.
async fn work(
    replayer: &Replayer,
    id: &str,
    selection: &ReplaySelection,
    rate: Option<u32>,
    stop: &CancellationToken,
) -> (&'static str, Option<String>) {
    let store = &replayer.store;
    let mut progress = JobProgress {
        matched: store.count_replay_candidates(selection).await.ok(),
        ..JobProgress::default()
    };
    let mut pace = Pace::new(rate);
    let mut after = None;
    if let Err(e) = store
        .replay_job_progress(id, progress, &now_rfc3339())
        .await
    {
        tracing::warn!(job = %id, error = %e, "could not record a replay job's progress");
    }
    loop {
        if stop.is_cancelled() {
            return (
                "interrupted",
                Some("the replica running it stopped; start a new job for the rest".into()),
            );
        }
        let limit = Limit::Looked(chunk(rate));
        let report = match replayer
            .run(selection, after, limit, false, &mut pace, &mut |_| {})
            .await
        {
            Ok(report) => report,
            Err(e) => return ("failed", Some(format!("the store failed: {e}"))),
        };
        progress.replayed += report.replayed.len() as i64;
        progress.skipped += report.skipped.len() as i64;
        progress.failed += report.failed.len() as i64;
        let cancelled = match store
            .replay_job_progress(id, progress, &now_rfc3339())
            .await
        {
            Ok(cancelled) => cancelled,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "could not record a replay job's progress");
                false
            }
        };
        if let Some(why) = report.store_failed {
            return (
                "failed",
                Some(format!(
                    "the store failed ({why}); the records not reached stay replayable"
                )),
            );
        }
        if report.broker_failed {
            let why = report.last_error();
            return (
                "failed",
                Some(format!(
                    "the broker did not take a replay ({why}); the records not reached stay replayable"
                )),
            );
        }
        if !report.more {
            return ("done", None);
        }
        if cancelled {
            return ("cancelled", None);
        }
        after = report.next_cursor;
    }
}
