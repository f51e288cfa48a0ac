//! The delivery log: dead letters as persisted by the DLQ logger, newest first.

use serde::Serialize;
use serde_json::value::RawValue;
// Dynamic SQL here only splices constants and placeholders; every value is bound.
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Page, Params, Store, StoreError, chunked};
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

/// A delivery-log row that cannot be read back as a record (its payload or attempts are not
/// what the logger writes: edited by hand, or damaged). Its id is kept so that a listing or a
/// replay can name it and go on past it instead of failing at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {id} cannot be read ({detail}); repair or delete its row in the store")]
pub struct Unreadable {
    pub id: String,
    pub detail: String,
}

/// A row of a selection of records: the record, or the row that cannot be read.
pub type Read = Result<DeliveryLog, Unreadable>;

/// The id of the row `read` came from, whether it reads or not.
pub fn id_of(read: &Read) -> &str {
    match read {
        Ok(log) => &log.id,
        Err(unreadable) => &unreadable.id,
    }
}

impl From<Unreadable> for StoreError {
    fn from(u: Unreadable) -> Self {
        StoreError::Corrupt {
            id: u.id,
            detail: u.detail,
        }
    }
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
    /// The filter's conditions ([`Condition`]s); `None` values are left out by the caller.
    fn conditions(&self) -> [Condition<'_>; 6] {
        [
            ("account_id = {}", self.account_id.as_deref()),
            ("subscription_id = {}", self.subscription_id.as_deref()),
            ("event = {}", self.event.as_deref()),
            ("reason = {}", self.reason.as_deref()),
            ("dead_lettered_at >= {}", self.since.as_deref()),
            ("dead_lettered_at < {}", self.until.as_deref()),
        ]
    }
}

/// Rows in one multi-row `INSERT` of dead letters: 12 values each, far below SQLite's 32,766
/// and PostgreSQL's 65,535 bound parameters. At 128 rows with numbered placeholders, binding
/// was the largest single cost of an outage's dead letters on SQLite (see [`Params`]); with
/// SQLite's placeholders anonymous, 128 rows measured no faster than 32 (BENCHMARKS.md,
/// "Anonymous placeholders"), and a shorter statement holds the write lock for less.
const ROWS_PER_INSERT: usize = 32;

/// A record's columns. When it was replayed: its row in `delivery_log_replays`, where a claim
/// writes, else its own `replayed_at`, marked before 0.5 or by a 0.4 replica during a rolling
/// upgrade (`migrations/20261207000001_replay_claims.sql`).
pub(super) const COLUMNS: &str = "id, event_id, account_id, subscription_id, url, event, payload, reason, detail, attempts, dead_lettered_at, \
     COALESCE((SELECT r.replayed_at FROM delivery_log_replays r WHERE r.id = delivery_logs.id), delivery_logs.replayed_at) AS replayed_at, \
     trusted";

/// That a record of `delivery_logs` was not replayed (neither place says it was), as SQL.
pub(super) const NOT_REPLAYED: &str = "(delivery_logs.replayed_at IS NULL AND NOT EXISTS \
     (SELECT 1 FROM delivery_log_replays r WHERE r.id = delivery_logs.id))";

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
        let params = self.params();
        for (sql, chunk) in chunked(batch, ROWS_PER_INSERT, |rows| {
            insert_statement(params, rows)
        }) {
            let mut query = sqlx::query(AssertSqlSafe(&*sql));
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

    /// Deletes up to `limit` records dead-lettered before `before` (the stored format), and
    /// their replays; how many went. One short transaction, so a purge in many of them never
    /// holds the store long. It writes from its first statement: on SQLite a transaction that
    /// read first could not take the write lock once another writer had committed.
    pub async fn purge_delivery_logs(&self, before: &str, limit: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let gone: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "DELETE FROM delivery_logs WHERE id IN \
             (SELECT id FROM delivery_logs WHERE dead_lettered_at < $1 LIMIT {limit}) RETURNING id"
        )))
        .bind(before)
        .fetch_all(&mut *tx)
        .await?;
        super::replays::forget_replays(&mut tx, self.params(), &gone).await?;
        tx.commit().await?;
        Ok(gone.len() as u64)
    }

    pub async fn delivery_log(&self, id: &str) -> Result<Option<DeliveryLog>, StoreError> {
        self.one_log(id, None).await
    }

    /// Record `id` if it is `account_id`'s; another account's is `None` like a missing one,
    /// whether it can be read or not (a portal must not tell the two apart).
    pub async fn account_delivery_log(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<Option<DeliveryLog>, StoreError> {
        self.one_log(id, Some(account_id)).await
    }

    async fn one_log(
        &self,
        id: &str,
        account_id: Option<&str>,
    ) -> Result<Option<DeliveryLog>, StoreError> {
        let filter = LogFilter {
            account_id: account_id.map(str::to_string),
            ..LogFilter::default()
        };
        let rows = self
            .select_logs("1 = 1", &[("id = {}", Some(id))], &filter, &[], "")
            .await?;
        match rows.into_iter().next() {
            None => Ok(None),
            Some(read) => Ok(Some(read?)),
        }
    }

    /// Records matching `filter`, newest first, older than `cursor` (an id). A row that cannot
    /// be read is logged and left out (the cursor still goes past it), so one damaged row does
    /// not take a whole account's log, and every page after it, down with it.
    pub async fn list_delivery_logs(
        &self,
        filter: &LogFilter,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<Page<DeliveryLog>, StoreError> {
        let order = format!("ORDER BY id DESC LIMIT {}", limit + 1);
        let rows = self
            .select_logs("1 = 1", &[("id < {}", cursor)], filter, &[], &order)
            .await?;
        let page = Page::from_rows(rows, limit, id_of);
        let items = page
            .items
            .into_iter()
            .filter_map(|row| {
                row.inspect_err(
                    |e| tracing::error!(error = %e, "a delivery-log record left out of a listing"),
                )
                .ok()
            })
            .collect();
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    /// `SELECT … WHERE {base}`, then `cursor`'s and `filter`'s conditions, `id IN (ids)` when
    /// `ids` is not empty, then `order`. Every value is bound as a numbered placeholder.
    pub(super) async fn select_logs(
        &self,
        base: &str,
        cursor: &[Condition<'_>],
        filter: &LogFilter,
        ids: &[String],
        order: &str,
    ) -> Result<Vec<Read>, StoreError> {
        let (conditions, binds) = conditions(self.params(), base, cursor, filter, ids);
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
        let (conditions, binds) = conditions(self.params(), base, &[], filter, ids);
        let sql = format!("SELECT COUNT(*) FROM delivery_logs WHERE {conditions}");
        let mut query = sqlx::query_scalar(AssertSqlSafe(sql));
        for value in binds {
            query = query.bind(value);
        }
        Ok(query.fetch_one(&self.pool).await?)
    }
}

/// A multi-row `INSERT` of `rows` dead letters, bound row by row in the columns' order, that
/// returns the ids it added.
fn insert_statement(params: Params, rows: usize) -> String {
    let values = (0..rows)
        .map(|row| format!("({})", params.list(row * 12 + 1, 12)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO delivery_logs (id, event_id, account_id, subscription_id, url, event, payload, reason, detail, attempts, dead_lettered_at, trusted) \
         VALUES {values} ON CONFLICT (id) DO NOTHING RETURNING id"
    )
}

/// A condition on a record and the value it compares with: `{}` in the text stands where the
/// value's placeholder goes. Left out when the value is `None`.
pub(super) type Condition<'a> = (&'static str, Option<&'a str>);

/// `{base}`, then the `cursor` conditions and `filter`'s, `id IN (ids)` when `ids` is not empty,
/// with the values to bind, in order, to their placeholders (a value named twice is bound
/// twice).
fn conditions<'a>(
    params: Params,
    base: &str,
    cursor: &[Condition<'a>],
    filter: &'a LogFilter,
    ids: &'a [String],
) -> (String, Vec<&'a str>) {
    let mut sql = base.to_string();
    let mut binds: Vec<&str> = Vec::new();
    for &(condition, value) in cursor.iter().chain(&filter.conditions()) {
        if let Some(value) = value {
            binds.push(value);
            let placeholder = params.nth(binds.len());
            sql.push_str(" AND ");
            sql.push_str(&condition.replacen("{}", &placeholder, 1));
        }
    }
    if !ids.is_empty() {
        let list = params.list(binds.len() + 1, ids.len());
        binds.extend(ids.iter().map(String::as_str));
        sql.push_str(&format!(" AND id IN ({list})"));
    }
    (sql, binds)
}

/// The record in `row`; [`Unreadable`] (keeping its id) when a value in it is not what the
/// logger writes; an error when the row itself cannot be read (no id, a column missing).
fn from_row(row: &AnyRow) -> Result<Read, StoreError> {
    let id: String = row.try_get("id")?;
    match record(row, &id) {
        Ok(log) => Ok(Ok(log)),
        Err(Fault::Value(detail)) => Ok(Err(Unreadable { id, detail })),
        Err(Fault::Row(e)) => Err(e.into()),
    }
}

/// Why a row is not a record: one of its values, or the row as a whole.
enum Fault {
    Value(String),
    Row(sqlx::Error),
}

fn record(row: &AnyRow, id: &str) -> Result<DeliveryLog, Fault> {
    fn column<'r, T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>>(
        row: &'r AnyRow,
        name: &str,
    ) -> Result<T, Fault> {
        row.try_get(name).map_err(|e| match e {
            sqlx::Error::ColumnDecode { .. } => Fault::Value(format!("{name}: {e}")),
            e => Fault::Row(e),
        })
    }
    let payload: String = column(row, "payload")?;
    let payload =
        RawValue::from_string(payload).map_err(|e| Fault::Value(format!("payload: {e}")))?;
    let attempts: String = column(row, "attempts")?;
    let attempts =
        serde_json::from_str(&attempts).map_err(|e| Fault::Value(format!("attempts: {e}")))?;
    Ok(DeliveryLog {
        id: id.to_string(),
        event_id: column(row, "event_id")?,
        account_id: column(row, "account_id")?,
        subscription_id: column(row, "subscription_id")?,
        url: column(row, "url")?,
        event: column(row, "event")?,
        payload,
        reason: column(row, "reason")?,
        detail: column(row, "detail")?,
        attempts,
        dead_lettered_at: column(row, "dead_lettered_at")?,
        replayed_at: column(row, "replayed_at")?,
        trusted: column::<Option<i64>>(row, "trusted")?.map(|t| t != 0),
    })
}
