//! Counts over the delivery log: by reason, event or account, and in all (`dlq stats`).

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row};

use super::delivery_logs::NOT_REPLAYED;
use super::{Store, StoreError};

/// Records sharing one value of a column (`None`: the column is null), and how many of them
/// were not replayed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogGroup {
    pub name: Option<String>,
    pub total: i64,
    pub not_replayed: i64,
}

/// Columns [`Store::count_delivery_logs_by`] groups by.
#[derive(Debug, Clone, Copy)]
pub enum GroupBy {
    Reason,
    Event,
    Account,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::Reason => "reason",
            GroupBy::Event => "event",
            GroupBy::Account => "account_id",
        }
    }
}

impl Store {
    /// Records grouped by one column, largest groups first, at most `top` groups.
    pub async fn count_delivery_logs_by(
        &self,
        by: GroupBy,
        top: i64,
    ) -> Result<Vec<LogGroup>, StoreError> {
        let column = by.column();
        // Ties: named groups by name, then the null one (SQLite and PostgreSQL sort NULL at
        // opposite ends, so it is placed explicitly). CAST: PostgreSQL sums to NUMERIC, which the Any driver does not decode.
        let sql = format!(
            "SELECT {column} AS name, COUNT(*) AS total, \
             CAST(SUM(CASE WHEN {NOT_REPLAYED} THEN 1 ELSE 0 END) AS BIGINT) AS not_replayed \
             FROM delivery_logs GROUP BY {column} \
             ORDER BY total DESC, {column} IS NULL, {column} ASC LIMIT {top}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LogGroup {
                    name: row.try_get("name")?,
                    total: row.try_get("total")?,
                    not_replayed: row.try_get("not_replayed")?,
                })
            })
            .collect()
    }

    /// All records, and how many of them were not replayed yet.
    pub async fn count_delivery_logs(&self) -> Result<LogGroup, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*) AS total, \
             CAST(COALESCE(SUM(CASE WHEN {NOT_REPLAYED} THEN 1 ELSE 0 END), 0) AS BIGINT) AS not_replayed \
             FROM delivery_logs"
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(LogGroup {
            name: None,
            total: row.try_get("total")?,
            not_replayed: row.try_get("not_replayed")?,
        })
    }
}
