//! Subscriptions and the delivery log, in SQLite or PostgreSQL through one interface. Both go
//! through sqlx's `Any` driver with one portable schema (`migrations/`), so every query is
//! written once and tested on SQLite; `$N` placeholders work on both (a statement of many
//! values built at run time writes them as [`Params`] says).

mod delivery_logs;
pub mod health;
mod keys;
mod log_counts;
mod replay_jobs;
mod replays;
mod signouts;
mod subscriptions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, AssertSqlSafe, ConnectOptions};

pub use delivery_logs::{DeliveryLog, LogFilter, Read, Trust, Unreadable, id_of};
pub use log_counts::{GroupBy, LogGroup};
pub use replay_jobs::{JobProgress, ReplayJob};
pub use replays::{BatchClaim, ReplayClaim, ReplaySelection};
pub use subscriptions::{NewSubscription, Rotated, SubscriptionPatch};

/// Values one statement built at run time binds at most (an `IN` list of ids): far below every
/// limit on bound parameters.
pub(super) const ROWS_PER_STATEMENT: usize = 500;

/// How a statement built at run time with many values writes its placeholders. PostgreSQL
/// numbers them (`$1`, `$2`, …). SQLite reads `$N` as a name: sqlx asks it the name of every
/// parameter it binds, and SQLite finds one by walking the statement's list of names, so a
/// statement of n numbered parameters costs n²/2 steps to bind — at 384 (a 32-row `INSERT`) it
/// was still 23 % of the DLQ logger's CPU and 7 % of the service's while an outage's dead
/// letters were stored (BENCHMARKS.md, "Anonymous placeholders"). Anonymous `?`s have no names
/// to walk; they are bound in order, so with [`Params::InOrder`] a statement's placeholders
/// must stand in the order its values are bound, each value once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Params {
    Numbered,
    InOrder,
}

impl Params {
    /// The placeholder of the `n`th value bound (from 1).
    pub(crate) fn nth(self, n: usize) -> String {
        let mut placeholder = String::new();
        self.push_nth(&mut placeholder, n);
        placeholder
    }

    /// The placeholders of the `n` values bound from the `first`th on, comma-separated.
    pub(crate) fn list(self, first: usize, n: usize) -> String {
        let mut list = String::with_capacity(n * 6);
        for i in first..first + n {
            if i > first {
                list.push_str(", ");
            }
            self.push_nth(&mut list, i);
        }
        list
    }

    /// Writes the placeholder of the `n`th value bound onto `sql`.
    fn push_nth(self, sql: &mut String, n: usize) {
        match self {
            Params::Numbered => {
                use std::fmt::Write as _;
                let _ = write!(sql, "${n}");
            }
            Params::InOrder => sql.push('?'),
        }
    }
}

/// `items` in chunks of `per`, each with its statement (`statement(chunk length)`): the full
/// chunks share one, written once; only a short last chunk gets its own.
pub(crate) fn chunked<T>(
    items: &[T],
    per: usize,
    statement: impl Fn(usize) -> String,
) -> impl Iterator<Item = (std::sync::Arc<str>, &[T])> {
    let full_len = per.min(items.len());
    let full: std::sync::Arc<str> = statement(full_len).into();
    items.chunks(per).map(move |chunk| {
        let sql = if chunk.len() == full_len {
            full.clone()
        } else {
            statement(chunk.len()).into()
        };
        (sql, chunk)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row {id}: {detail}")]
    Corrupt { id: String, detail: String },
    /// [`Store::open_existing`]: nothing at the URL, or a schema this version has not migrated.
    #[error("{0}")]
    NotMigrated(String),
    /// One failure shared by several records (a batch whose commit failed), as its text.
    #[error("{0}")]
    Shared(String),
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// PostgreSQL (else SQLite): for the few things only one of them needs.
    postgres: bool,
}

/// A page of results and the cursor of the next one; the API's list format.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// The schema, compiled in.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a SQLite writer waits for the write lock before failing.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Opens (creating a SQLite file if missing) and migrates the store at `url`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, None).await
    }

    /// [`Store::connect`] with at most `pool_size` connections (default: 10 on PostgreSQL, 4 on
    /// SQLite). Replicas starting together migrate once: on PostgreSQL the migrator holds an
    /// advisory lock while it runs, and the others find the schema done.
    pub async fn connect_with(url: &str, pool_size: Option<u32>) -> Result<Store, StoreError> {
        let store = Store::open(url, "rwc", pool_size).await?;
        MIGRATOR.run(&store.pool).await?;
        Ok(store)
    }

    /// Opens the store at `url` as the service left it, for the operator CLI: a SQLite file
    /// must exist (`mode=rw`) and nothing is created or migrated, so a wrong `DATABASE_URL`
    /// is an error ([`StoreError::NotMigrated`]) rather than a new, empty delivery log.
    pub async fn open_existing(url: &str) -> Result<Store, StoreError> {
        let store = Store::open(url, "rw", None).await.map_err(|e| match e {
            // SQLITE_CANTOPEN: with mode=rw, the file is not there.
            StoreError::Db(sqlx::Error::Database(db)) if db.code().as_deref() == Some("14") => {
                StoreError::NotMigrated("the database file does not exist".into())
            }
            other => other,
        })?;
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_all(&store.pool)
                .await
            {
                Ok(applied) => applied,
                Err(sqlx::Error::Database(_)) => {
                    store.close().await;
                    return Err(StoreError::NotMigrated("it has no schema".into()));
                }
                Err(e) => return Err(e.into()),
            };
        let pending = MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count();
        if pending > 0 {
            store.close().await;
            return Err(StoreError::NotMigrated(format!(
                "its schema lacks {pending} migration(s) of this version"
            )));
        }
        Ok(store)
    }

    /// Connects to `url`; a SQLite file is opened with `sqlite_mode` unless the URL sets one.
    async fn open(
        url: &str,
        sqlite_mode: &str,
        pool_size: Option<u32>,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let url = if is_sqlite && !url.contains("mode=") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode={sqlite_mode}")
        } else {
            url.to_string()
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            // SQLite takes one writer at a time; a small pool avoids lock contention.
            .max_connections(pool_size.unwrap_or(if is_sqlite { 4 } else { 10 }))
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        // WAL lets the API read while the DLQ logger writes; busy_timeout makes
                        // writers wait for the lock instead of failing at once.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query(AssertSqlSafe(format!(
                            "PRAGMA busy_timeout = {}",
                            SQLITE_BUSY_TIMEOUT.as_millis()
                        )))
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Store {
            pool,
            postgres: !is_sqlite,
        })
    }

    /// How this store's statements of many values write their placeholders.
    pub(crate) fn params(&self) -> Params {
        if self.postgres {
            Params::Numbered
        } else {
            Params::InOrder
        }
    }

    /// Whether the store answers a trivial query within a second.
    pub async fn ping(&self) -> bool {
        let probe = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Ok(_))
        )
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl<T> Page<T> {
    /// A page from rows fetched with `LIMIT limit + 1`: the extra row only says there is more,
    /// and the cursor is the id of the last row kept.
    pub(crate) fn from_rows(mut items: Vec<T>, limit: i64, id: impl Fn(&T) -> &str) -> Page<T> {
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next_cursor = more
            .then(|| items.last().map(|item| id(item).to_string()))
            .flatten();
        Page { items, next_cursor }
    }
}

/// A requested page size: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when absent; anything else is the
/// caller's mistake, said in the error.
pub fn page_limit(requested: Option<u32>) -> Result<i64, String> {
    match requested {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE as u32).contains(&n) => Ok(i64::from(n)),
        Some(n) => Err(format!("limit must be between 1 and {MAX_PAGE}, got {n}")),
    }
}

/// Page size of a list without `limit`.
pub const DEFAULT_PAGE: i64 = 100;
/// Largest page a list answers.
pub const MAX_PAGE: i64 = 500;
