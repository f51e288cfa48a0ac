//! Replays in the store: which records a replay selects, and the claim that marks one replayed
//! only once the broker has the replayed delivery.

use super::{DeliveryLog, LogFilter, Store, StoreError};

/// What a replay selects: records matching `filter` (and, when `ids` is not empty, one of
/// `ids`) that were not replayed yet.
#[derive(Debug, Default, Clone)]
pub struct ReplaySelection {
    pub filter: LogFilter,
    pub ids: Vec<String>,
}

impl ReplaySelection {
    /// The upper bound on `dead_lettered_at` that every selection made by
    /// `ops::select::Filters::selection` has ("" for one built without it).
    pub fn bound(&self) -> &str {
        self.filter.until.as_deref().unwrap_or_default()
    }
}

impl Store {
    /// Up to `limit` records of `selection` not replayed yet, oldest first (ids are
    /// time-ordered), after the record `after` (an id) when given.
    pub async fn replay_candidates(
        &self,
        selection: &ReplaySelection,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryLog>, StoreError> {
        let order = format!("ORDER BY id ASC LIMIT {limit}");
        self.select_logs(
            "replayed_at IS NULL",
            ("id > ", after),
            &selection.filter,
            &selection.ids,
            &order,
        )
        .await
    }

    /// Marks a record replayed at `at` unless it already was, inside a transaction that is
    /// committed only by [`ReplayClaim::commit`]; `None` if it was replayed (or is missing).
    /// Until then no one else can claim the record (a second claim waits for the row), and if
    /// the claim is dropped, or the process dies, the record reads as not replayed again.
    pub async fn claim_replay(
        &self,
        id: &str,
        at: &str,
    ) -> Result<Option<ReplayClaim>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE delivery_logs SET replayed_at = $1 WHERE id = $2 AND replayed_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            Ok(Some(ReplayClaim { tx }))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }
}

/// A replay claimed and not yet final: see [`Store::claim_replay`].
pub struct ReplayClaim {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl ReplayClaim {
    /// Makes the claim final: the record reads as replayed.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}
