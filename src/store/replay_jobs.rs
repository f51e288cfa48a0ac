//! Bulk replays run in the background: a job's row is its state, its progress and the way any
//! replica cancels it (see `ops::replay_jobs`).

use serde::Serialize;
// Dynamic SQL here only splices constants; every value is bound.
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Store, StoreError};

/// A replay job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayJob {
    #[schema(example = "rj_0193c2a1b2c34d5e8f9a0b1c2d3e4f50")]
    pub id: String,
    /// `running`, `done` (every selected record handled), `cancelled`, `failed` (it stopped:
    /// see `error`; what it did not reach stays replayable) or `interrupted` (the replica
    /// running it stopped; start a new job for the rest).
    #[schema(example = "running")]
    pub state: String,
    /// The selection, as the request gave it.
    #[schema(value_type = Object)]
    pub selection: serde_json::Value,
    /// Replays a second it is held to; null: as fast as the broker takes them.
    pub rate: Option<u32>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When it last reported progress.
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// Records the selection held when the job started (not replayed yet); null until counted.
    pub matched: Option<i64>,
    pub replayed: i64,
    /// Looked at and left alone (deleted or disabled subscription, not replayable, …).
    pub skipped: i64,
    /// Whose replay failed; they stay replayable.
    pub failed: i64,
    pub error: Option<String>,
}

/// A job whose replica has not reported for this long, while `running`, is shown as
/// `interrupted`: the replica went away (progress is written after every batch, at least every
/// few seconds).
pub const STALE_AFTER: chrono::Duration = chrono::Duration::seconds(60);

const COLUMNS: &str = "id, state, selection, rate, created_at, updated_at, finished_at, matched, replayed, skipped, failed, error";

fn from_row(row: &AnyRow) -> Result<ReplayJob, StoreError> {
    let id: String = row.try_get("id")?;
    let selection: String = row.try_get("selection")?;
    let selection = serde_json::from_str(&selection).map_err(|e| StoreError::Corrupt {
        id: id.clone(),
        detail: format!("selection: {e}"),
    })?;
    let mut job = ReplayJob {
        state: row.try_get("state")?,
        selection,
        rate: row
            .try_get::<Option<i64>, _>("rate")?
            .map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        matched: row.try_get("matched")?,
        replayed: row.try_get("replayed")?,
        skipped: row.try_get("skipped")?,
        failed: row.try_get("failed")?,
        error: row.try_get("error")?,
        id,
    };
    let stale = chrono::DateTime::parse_from_rfc3339(&job.updated_at)
        .is_ok_and(|at| chrono::Utc::now() - at.with_timezone(&chrono::Utc) > STALE_AFTER);
    if job.state == "running" && stale {
        job.state = "interrupted".into();
    }
    Ok(job)
}

impl Store {
    /// Records a new job, `running`, as of `at`.
    pub async fn create_replay_job(
        &self,
        id: &str,
        selection: &serde_json::Value,
        rate: Option<u32>,
        at: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replay_jobs (id, state, selection, rate, created_at, updated_at, replayed, skipped, failed, cancel_requested) \
             VALUES ($1, 'running', $2, $3, $4, $4, 0, 0, 0, 0)",
        )
        .bind(id)
        .bind(selection.to_string())
        .bind(rate.map(i64::from))
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn replay_job(&self, id: &str) -> Result<Option<ReplayJob>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM replay_jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// The newest `limit` jobs, newest first.
    pub async fn replay_jobs(&self, limit: i64) -> Result<Vec<ReplayJob>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM replay_jobs ORDER BY created_at DESC, id DESC LIMIT {limit}"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// The job's running totals as of `at`; whether it was asked to stop.
    pub async fn replay_job_progress(
        &self,
        id: &str,
        progress: JobProgress,
        at: &str,
    ) -> Result<bool, StoreError> {
        // Two statements, not `UPDATE … RETURNING`: SQLite keeps its write lock while such a
        // statement has rows left unread.
        sqlx::query(
            "UPDATE replay_jobs SET matched = $1, replayed = $2, skipped = $3, failed = $4, updated_at = $5 \
             WHERE id = $6",
        )
        .bind(progress.matched)
        .bind(progress.replayed)
        .bind(progress.skipped)
        .bind(progress.failed)
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        let cancel: Option<i64> =
            sqlx::query_scalar("SELECT cancel_requested FROM replay_jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        // The row gone: nothing to report to, stop.
        Ok(cancel.is_none_or(|c| c != 0))
    }

    /// Ends the job in `state` (`done`, `cancelled`, `failed`, `interrupted`).
    pub async fn finish_replay_job(
        &self,
        id: &str,
        state: &str,
        error: Option<&str>,
        at: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE replay_jobs SET state = $1, error = $2, finished_at = $3, updated_at = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(error)
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Asks a running job to stop (it does after its current batch); `None` if there is no
    /// such job, else the job as it reads now.
    pub async fn cancel_replay_job(&self, id: &str) -> Result<Option<ReplayJob>, StoreError> {
        sqlx::query("UPDATE replay_jobs SET cancel_requested = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.replay_job(id).await
    }
}

/// A job's running totals.
#[derive(Debug, Default, Clone, Copy)]
pub struct JobProgress {
    pub matched: Option<i64>,
    pub replayed: i64,
    pub skipped: i64,
    pub failed: i64,
}
