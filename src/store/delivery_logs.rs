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
    /// Whether the dead letter was verified as this service's own (its seal checked). `false`:
    /// it arrived in the dead-letter queue without a valid seal (forged, or written by something
    /// else); it is kept whole as `payload`, belongs to no account or subscription, and is never
    /// replayed. `null`: stored by a version that did not check (never replayed either).
    pub trusted: Option<bool>,
}

/// Whether a dead letter's content is the service's own; see [`DeliveryLog::trusted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Verified,
    Untrusted,
}

#[derive(Debug, Default, Clone)]
pub struct LogFilter {
    pub account_id: Option<String>,
    pub subscription_id: Option<String>,
    pub event: Option<String>,
    pub reason: Option<String>,
    /// `dead_lettered_at >= since`, in the stored format ([`crate::time::rfc3339`]).
    pub since: Option<String>,
    /// `dead_lettered_at < until`, in the stored format.
    pub until: Option<String>,
}

impl LogFilter {
    /// The filter's conditions, each with its value; `None` values are left out by the caller.
    fn conditions(&self) -> [(&'static str, Option<&str>); 6] {
        [
            ("account_id = ", self.account_id.as_deref()),
            ("subscription_id = ", self.subscription_id.as_deref()),
            ("event = ", self.event.as_deref()),
            ("reason = ", self.reason.as_deref()),
            ("dead_lettered_at >= ", self.since.as_deref()),
            ("dead_lettered_at < ", self.until.as_deref()),
        ]
    }
}

/// Rows in one multi-row `INSERT` of dead letters: 12 values each, far below SQLite's 32,766
/// and PostgreSQL's 65,535 bound parameters.
const ROWS_PER_INSERT: usize = 128;

pub(super) const COLUMNS: &str = "id, event_id, account_id, subscription_id, url, event, payload, reason, detail, attempts, dead_lettered_at, replayed_at, trusted";

impl Store {
    /// Persists a dead letter; `false` if a record with its id was already there (a redelivered
    /// copy), which is not an error.
    pub async fn insert_dead_letter(
        &self,
        dl: &DeadLetter,
        trust: Trust,
    ) -> Result<bool, StoreError> {
        let inserted = self.insert_dead_letters(&[(dl, trust)]).await?;
        Ok(inserted[0])
    }

    /// Persists dead letters in one transaction: all or none. For each, whether it is new;
    /// `false` for one whose id was already stored, or came earlier in `batch` (a redelivered
    /// copy). Rows go in multi-row `INSERT`s of [`ROWS_PER_INSERT`], so a batch of hundreds costs
    /// a few statements and one commit (one fsync) instead of one of each per record.
    pub async fn insert_dead_letters(
        &self,
        batch: &[(&DeadLetter, Trust)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut new_ids = std::collections::HashSet::new();
        for chunk in batch.chunks(ROWS_PER_INSERT) {
            let rows = (0..chunk.len())
                .map(|row| {
                    let p: Vec<String> = (1..=12).map(|c| format!("${}", row * 12 + c)).collect();
                    format!("({})", p.join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO delivery_logs (id, event_id, account_id, subscription_id, url, event, payload, reason, detail, attempts, dead_lettered_at, trusted) \
                 VALUES {rows} ON CONFLICT (id) DO NOTHING RETURNING id"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (dl, trust) in chunk {
                let attempts = serde_json::to_string(&dl.attempts).expect("attempts serialise");
                query = query
                    .bind(dl.id.clone())
                    .bind(dl.event_id.clone())
                    .bind(dl.account_id.clone())
                    .bind(dl.subscription_id.clone())
                    .bind(dl.url.clone())
                    .bind(dl.event.clone())
                    .bind(dl.payload.get().to_string())
                    .bind(dl.reason.clone())
                    .bind(dl.detail.clone())
                    .bind(attempts)
                    .bind(dl.dead_lettered_at.clone())
                    .bind(i64::from(*trust == Trust::Verified));
            }
            for row in query.fetch_all(&mut *tx).await? {
                new_ids.insert(row.try_get::<String, _>(0)?);
            }
        }
        tx.commit().await?;
        // The first copy of an id that went in is the new one; any later copy is a duplicate.
        Ok(batch.iter().map(|(dl, _)| new_ids.remove(&dl.id)).collect())
    }

    /// Deletes up to `limit` records dead-lettered before `before` (the stored format); how
    /// many went. One short statement, so a purge in many of them never holds the store long.
    pub async fn purge_delivery_logs(&self, before: &str, limit: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM delivery_logs WHERE id IN \
             (SELECT id FROM delivery_logs WHERE dead_lettered_at < $1 LIMIT {limit})"
        )))
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
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
        let order = format!("ORDER BY id DESC LIMIT {}", limit + 1);
        let items = self
            .select_logs("1 = 1", ("id < ", cursor), filter, &[], &order)
            .await?;
        Ok(Page::from_rows(items, limit, |item| &item.id))
    }

    /// `SELECT … WHERE {base}`, then `cursor`'s and `filter`'s conditions, `id IN (ids)` when
    /// `ids` is not empty, then `order`. Every value is bound as a numbered placeholder.
    pub(super) async fn select_logs(
        &self,
        base: &str,
        cursor: (&'static str, Option<&str>),
        filter: &LogFilter,
        ids: &[String],
        order: &str,
    ) -> Result<Vec<DeliveryLog>, StoreError> {
        let (conditions, binds) = conditions(base, cursor, filter, ids);
        let sql = format!("SELECT {COLUMNS} FROM delivery_logs WHERE {conditions} {order}");
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for value in binds {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// How many records [`select_logs`](Self::select_logs) would select without a limit.
    pub(super) async fn count_logs(
        &self,
        base: &str,
        filter: &LogFilter,
        ids: &[String],
    ) -> Result<i64, StoreError> {
        let (conditions, binds) = conditions(base, ("id > ", None), filter, ids);
        let sql = format!("SELECT COUNT(*) FROM delivery_logs WHERE {conditions}");
        let mut query = sqlx::query_scalar(AssertSqlSafe(sql));
        for value in binds {
            query = query.bind(value);
        }
        Ok(query.fetch_one(&self.pool).await?)
    }
}

/// `{base}`, then `cursor`'s and `filter`'s conditions, `id IN (ids)` when `ids` is not empty,
/// with the values to bind to their numbered placeholders.
fn conditions<'a>(
    base: &str,
    cursor: (&'static str, Option<&'a str>),
    filter: &'a LogFilter,
    ids: &'a [String],
) -> (String, Vec<&'a str>) {
    let mut sql = base.to_string();
    let mut binds: Vec<&str> = Vec::new();
    for (condition, value) in std::iter::once(cursor).chain(filter.conditions()) {
        if let Some(value) = value {
            binds.push(value);
            sql.push_str(&format!(" AND {condition}${}", binds.len()));
        }
    }
    if !ids.is_empty() {
        let first = binds.len() + 1;
        binds.extend(ids.iter().map(String::as_str));
        let placeholders: Vec<String> = (first..=binds.len()).map(|n| format!("${n}")).collect();
        sql.push_str(&format!(" AND id IN ({})", placeholders.join(", ")));
    }
    (sql, binds)
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
        trusted: row.try_get::<Option<i64>, _>("trusted")?.map(|t| t != 0),
    })
}
