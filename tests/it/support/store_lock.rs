//! Holding the service's SQLite store from the test, as a stuck writer would, and editing it
//! by hand.

use sqlx::{Connection, Row, SqliteConnection};

use super::sqlite_url;

/// Holds SQLite's write lock on the service's store from the test: `BEGIN EXCLUSIVE` on a
/// connection of our own. File permissions do not stop root (the tests may run as root); the
/// lock does, and it is what a long-running writer or a stuck migration would do. In WAL mode
/// readers go on, so the admin API and `/readyz` keep answering, while the service's writes get
/// SQLITE_BUSY after its `busy_timeout`.
pub struct StoreLock {
    conn: SqliteConnection,
}

impl StoreLock {
    pub async fn take(db: &std::path::Path) -> StoreLock {
        let mut conn = SqliteConnection::connect(&sqlite_url(db))
            .await
            .expect("test connection to the store");
        sqlx::query("PRAGMA busy_timeout = 10000")
            .execute(&mut conn)
            .await
            .expect("busy_timeout");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .expect("exclusive lock on the store");
        StoreLock { conn }
    }

    pub async fn rows(&mut self) -> i64 {
        sqlx::query("SELECT COUNT(*) FROM delivery_logs")
            .fetch_one(&mut self.conn)
            .await
            .expect("count")
            .get(0)
    }

    pub async fn release(mut self) {
        sqlx::query("ROLLBACK")
            .execute(&mut self.conn)
            .await
            .expect("release the lock");
        self.conn.close().await.expect("close");
    }
}

/// Whether another connection holds the SQLite store's write lock now (a `BEGIN IMMEDIATE`
/// that does not wait fails).
pub async fn write_lock_taken(db: &std::path::Path) -> bool {
    let mut conn = SqliteConnection::connect(&sqlite_url(db))
        .await
        .expect("a connection to the store");
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut conn)
        .await
        .expect("busy_timeout");
    let taken = sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .is_err();
    if !taken {
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
    }
    let _ = conn.close().await;
    taken
}

/// Runs `sql` on the SQLite store at `db` from a connection of the test's own, with `binds` for
/// `$1`, `$2`, …: a row edited by hand (or damaged), as the service finds it afterwards.
pub async fn edit_store(db: &std::path::Path, sql: &'static str, binds: &[&str]) {
    let mut conn = SqliteConnection::connect(&sqlite_url(db))
        .await
        .expect("a connection to the store");
    let mut query = sqlx::query(sql);
    for value in binds {
        query = query.bind(*value);
    }
    query.execute(&mut conn).await.expect("the edit");
    conn.close().await.expect("close");
}
