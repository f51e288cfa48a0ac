//! Replays in the store: which records a replay selects, and the claim that marks one replayed
//! only once the broker has the replayed delivery.

use std::collections::HashSet;

// Dynamic SQL here only splices placeholders; every value is bound.
use sqlx::{AssertSqlSafe, Row};

use super::delivery_logs::{Condition, NOT_REPLAYED};
use super::{LogFilter, Params, ROWS_PER_STATEMENT, Read, Store, StoreError, chunked};

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
    /// time-ordered), after the record `after` (an id) when given; a row that cannot be read
    /// comes as its [`Unreadable`](super::Unreadable), in its place.
    pub async fn replay_candidates(
        &self,
        selection: &ReplaySelection,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Read>, StoreError> {
        let order = format!("ORDER BY id ASC LIMIT {limit}");
        // Past a cursor the replays looked for are those past it too
        // ([`NOT_REPLAYED_PAST_THE_CURSOR`]).
        let past = [("id > {}", after), (NOT_REPLAYED_PAST_THE_CURSOR, after)];
        let (base, cursor): (&str, &[Condition]) = match after {
            Some(_) => ("delivery_logs.replayed_at IS NULL", &past),
            None => (NOT_REPLAYED, &[]),
        };
        self.select_logs(base, cursor, &selection.filter, &selection.ids, &order)
            .await
    }

    /// Gives PostgreSQL's planner statistics of the delivery log when it has none, or when the
    /// size they give it is off by more than a tenth (and a thousand rows), before a replay
    /// pages through it; nothing on SQLite, whose planner walks the id index here either way.
    /// Without them (a young table: the first outage's records, not yet seen by autovacuum,
    /// which waits a minute and more) PostgreSQL guesses that a handful of rows match, reads
    /// every row the selection's time bound admits and sorts them for each page of
    /// [`replay_candidates`](Self::replay_candidates): work that grows with the log at every
    /// page. `ANALYZE` reads a bounded sample and takes no lock that writers wait for; it gives
    /// up after 2 s waiting for a VACUUM of the table (an error: the replay goes on, on the
    /// guesses, as it does for a role that may not analyze). Only the columns a replay selects
    /// or orders by ([`PLANNED_COLUMNS`]; the wide ones, payload and attempts, tell a replay's
    /// plan nothing), from a sample of 3,000 rows instead of 30,000: 29–43 ms instead of
    /// 117–146 ms on a fresh log of 20,000 (BENCHMARKS.md, seventeenth session). Such an
    /// `ANALYZE` sets the size but leaves autovacuum's count of changes alone, so autovacuum
    /// still analyzes the whole table at its own target when its turn comes; the size is what
    /// tells whether a replay needs one.
    pub async fn refresh_log_statistics(&self) -> Result<bool, StoreError> {
        if !self.postgres {
            return Ok(false);
        }
        let stale: Option<bool> = sqlx::query_scalar(
            "SELECT c.reltuples < 0 \
                    OR abs(s.n_live_tup - greatest(c.reltuples, 0)) > 1000 + greatest(c.reltuples, 0) / 10 \
             FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
             WHERE s.relname = 'delivery_logs' AND s.schemaname = current_schema()",
        )
        .fetch_optional(&self.pool)
        .await?;
        if stale != Some(true) {
            return Ok(false);
        }
        // ANALYZE waits for a VACUUM of the table (autovacuum gives way to it within a second,
        // except when it vacuums against wraparound, which can take long): a replay should not.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '2s'")
            .execute(&mut *tx)
            .await?;
        // A tenth of the default sample (3,000 rows): plenty for a replay's plans, and only
        // until autovacuum analyzes the whole table at its own target.
        sqlx::query("SET LOCAL default_statistics_target = 10")
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "ANALYZE delivery_logs ({PLANNED_COLUMNS})"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// How many records of `selection` are not replayed yet.
    pub async fn count_replay_candidates(
        &self,
        selection: &ReplaySelection,
    ) -> Result<i64, StoreError> {
        self.count_logs(NOT_REPLAYED, &selection.filter, &selection.ids)
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
        let claimed = sqlx::query(AssertSqlSafe(claim_statement(self.params(), 1)))
            .bind(at)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if claimed.is_some() {
            Ok(Some(ReplayClaim { tx }))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }
}

impl Store {
    /// The records `ids` that exist, oldest first (a row that cannot be read as its
    /// [`Unreadable`](super::Unreadable)).
    pub async fn delivery_logs_by_id(&self, ids: &[String]) -> Result<Vec<Read>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.select_logs("1 = 1", &[], &LogFilter::default(), ids, "ORDER BY id ASC")
            .await
    }

    /// Whether a replay may hold a batch claimed ahead while it commits another: claims of
    /// different records must not wait for each other — on PostgreSQL, which locks the rows a
    /// claim writes, not on SQLite, where a claim holds the one write lock until its commit —
    /// and the pool must have room for the claim held besides the batch being committed, the
    /// page being read ahead and a lookup ([`CLAIMING_AHEAD`] connections): with fewer, the
    /// held claim's connection would keep the run's own next read waiting.
    pub fn may_claim_ahead(&self) -> bool {
        self.postgres && self.pool.options().get_max_connections() >= CLAIMING_AHEAD
    }

    /// [`claim_replay`](Store::claim_replay) for many records in one transaction: marks those of
    /// `ids` not replayed yet as replayed at `at`, committed only by [`BatchClaim::commit`]
    /// (which first releases the ones [`BatchClaim::release`] names). Until then no one else
    /// can claim them; if the claim is dropped, or the process dies, they all read as not
    /// replayed again.
    pub async fn claim_replays(&self, ids: &[String], at: &str) -> Result<BatchClaim, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut claimed = HashSet::new();
        let params = self.params();
        for (sql, chunk) in chunked(ids, ROWS_PER_STATEMENT, |n| claim_statement(params, n)) {
            let mut query = sqlx::query(AssertSqlSafe(&*sql)).bind(at.to_string());
            for id in chunk {
                query = query.bind(id.clone());
            }
            for row in query.fetch_all(&mut *tx).await? {
                claimed.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(BatchClaim {
            tx,
            params,
            claimed,
            released: Vec::new(),
        })
    }
}

/// The connections a replay holding a claim ahead may use at once: the claim held, the batch
/// being committed, the page read ahead, and a page or subscription read (the run's own).
const CLAIMING_AHEAD: u32 = 4;

/// The columns of `delivery_logs` a replay's statements select by or order by, whose statistics
/// [`Store::refresh_log_statistics`] keeps.
const PLANNED_COLUMNS: &str =
    "id, account_id, subscription_id, event, reason, dead_lettered_at, replayed_at";

/// The replay half of [`NOT_REPLAYED`] for a page past the cursor (`{}`: the cursor, bound
/// again): the replays a page looks for are those past the cursor too, which are all it can
/// find (`r.id = delivery_logs.id > cursor`). Unbounded, PostgreSQL without statistics of
/// `delivery_log_replays` (a table that grows by the replay's own claims, faster than
/// autovacuum looks at it) joined every replay there is to each page by hashing them, then
/// sorted what remained of the log: a page cost more the further the replay got. Bounded, the
/// anti-join walks the replays index from the cursor, in the page's order; SQLite probes it per
/// row either way.
const NOT_REPLAYED_PAST_THE_CURSOR: &str =
    "NOT EXISTS (SELECT 1 FROM delivery_log_replays r WHERE r.id = delivery_logs.id AND r.id > {})";

/// A claim of `n` records as replayed: binds the time, then the `n` ids; marks those that exist
/// and were not replayed yet, and returns their ids. One that another claim holds waits for it,
/// then is found taken. A replay's row is found by the insert's conflict on its id, not looked
/// up first: a lookup (`NOT EXISTS`, as in [`NOT_REPLAYED`]) found nothing the conflict does
/// not, and on PostgreSQL without statistics of `delivery_log_replays` it was a hash of every
/// replay there is, for each claim.
fn claim_statement(params: Params, n: usize) -> String {
    format!(
        "INSERT INTO delivery_log_replays (id, replayed_at) \
         SELECT id, {} FROM delivery_logs WHERE id IN ({}) AND delivery_logs.replayed_at IS NULL \
         ON CONFLICT (id) DO NOTHING RETURNING id",
        params.nth(1),
        params.list(2, n)
    )
}

/// Records claimed together and not yet final: see [`Store::claim_replays`].
pub struct BatchClaim {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    params: Params,
    claimed: HashSet<String>,
    released: Vec<String>,
}

impl BatchClaim {
    /// Whether `id` was claimed here (it existed and was not replayed yet).
    pub fn holds(&self, id: &str) -> bool {
        self.claimed.contains(id)
    }

    /// Gives `id` back at the commit: it reads as not replayed (its publish failed).
    pub fn release(&mut self, id: &str) {
        if self.claimed.remove(id) {
            self.released.push(id.to_string());
        }
    }

    /// Makes the claims final, except the released ones.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        forget_replays(&mut self.tx, self.params, &self.released).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// Deletes the replays of the records `ids` in `tx` (they read as not replayed, or, their
/// records gone, leave nothing behind).
pub(super) async fn forget_replays(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    params: Params,
    ids: &[String],
) -> Result<(), StoreError> {
    let statement = |n| {
        format!(
            "DELETE FROM delivery_log_replays WHERE id IN ({})",
            params.list(1, n)
        )
    };
    for (sql, chunk) in chunked(ids, ROWS_PER_STATEMENT, statement) {
        let mut query = sqlx::query(AssertSqlSafe(&*sql));
        for id in chunk {
            query = query.bind(id.as_str());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
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
