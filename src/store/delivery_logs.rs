//! The delivery log: dead letters as persisted by the DLQ logger, newest first.

use serde::Serialize;
use serde_json::value::RawValue;
// Dynamic SQL here only splices constants and numbered placeholders; every value is bound.
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Page, Store, StoreError};
use crate::delivery::AttemptRecord;
use crate::wire::DeadLetter;

/// One delivery-log record, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryLog {
    pub id: String,
    pub event_id: String,
    pub account_id: Option<String>,
    pub subscription_id: Option<String>,
    pub url: Option<String>,
    pub event: Option<String>,
    /// The delivered body; for a message rejected before matching, the raw inbound message
    /// (a string when it was not JSON).
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// `exhausted`, `invalid_event`, `subscription_disabled`, …
    #[schema(example = "exhausted")]
    pub reason: String,
    pub detail: Option<String>,
    pub attempts: Vec<AttemptRecord>,
    #[schema(format = DateTime)]
    pub dead_lettered_at: String,
    #[schema(format = DateTime)]
    pub replayed_at: Option<String>,
}

#[derive(Debug, Default)]
pub struct LogFilter {
    pub account_id: Option<String>,
    pub subscription_id: Option<String>,
    pub event: Option<String>,
    pub reason: Option<String>,
}

const COLUMNS: &str = "id, event_id, account_id, subscription_id, url, event, payload, reason, detail, attempts, dead_lettered_at, replayed_at";

impl Store {
    /// Persists a dead letter; `false` if a record with its id was already there (a redelivered
    /// copy), which is not an error.
    pub async fn insert_dead_letter(&self, dl: &DeadLetter) -> Result<bool, StoreError> {
        let attempts = serde_json::to_string(&dl.attempts).expect("attempts serialise");
        let done = sqlx::query(
            "INSERT INTO delivery_logs (id, event_id, account_id, subscription_id, url, event, payload, reason, detail, attempts, dead_lettered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&dl.id)
        .bind(&dl.event_id)
        .bind(&dl.account_id)
        .bind(&dl.subscription_id)
        .bind(&dl.url)
        .bind(&dl.event)
        .bind(dl.payload.get())
        .bind(&dl.reason)
        .bind(&dl.detail)
        .bind(attempts)
        .bind(&dl.dead_lettered_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn delivery_log(&self, id: &str) -> Result<Option<DeliveryLog>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM delivery_logs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// Records matching `filter`, newest first, older than `cursor` (an id).
    pub async fn list_delivery_logs(
        &self,
        filter: &LogFilter,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<Page<DeliveryLog>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM delivery_logs WHERE 1 = 1");
        let mut binds: Vec<&str> = Vec::new();
        let conditions = [
            ("id < ", cursor),
            ("account_id = ", filter.account_id.as_deref()),
            ("subscription_id = ", filter.subscription_id.as_deref()),
            ("event = ", filter.event.as_deref()),
            ("reason = ", filter.reason.as_deref()),
        ];
        for (condition, value) in conditions {
            if let Some(value) = value {
                binds.push(value);
                sql.push_str(&format!(" AND {condition}${}", binds.len()));
            }
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for value in binds {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(items, limit, |item| &item.id))
    }

    /// Marks a record replayed at `at` unless it already was; `false` if it was (or is missing).
    /// Claiming before publishing keeps two concurrent replays from both going out.
    pub async fn claim_replay(&self, id: &str, at: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE delivery_logs SET replayed_at = $1 WHERE id = $2 AND replayed_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Undoes [`claim_replay`](Self::claim_replay) when the replay could not be published.
    pub async fn release_replay(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE delivery_logs SET replayed_at = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn from_row(row: &AnyRow) -> Result<DeliveryLog, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |detail: String| StoreError::Corrupt {
        id: id.clone(),
        detail,
    };
    let payload: String = row.try_get("payload")?;
    let payload = RawValue::from_string(payload).map_err(|e| corrupt(format!("payload: {e}")))?;
    let attempts: String = row.try_get("attempts")?;
    let attempts =
        serde_json::from_str(&attempts).map_err(|e| corrupt(format!("attempts: {e}")))?;
    Ok(DeliveryLog {
        id: id.clone(),
        event_id: row.try_get("event_id")?,
        account_id: row.try_get("account_id")?,
        subscription_id: row.try_get("subscription_id")?,
        url: row.try_get("url")?,
        event: row.try_get("event")?,
        payload,
        reason: row.try_get("reason")?,
        detail: row.try_get("detail")?,
        attempts,
        dead_lettered_at: row.try_get("dead_lettered_at")?,
        replayed_at: row.try_get("replayed_at")?,
    })
}
