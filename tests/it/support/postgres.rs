//! A PostgreSQL database of a test's own, on the server the tests share ([`admin_url`]), dropped
//! with its connections at the end.

use sqlx::Connection;

use super::{admin_url, unique};

/// A database of this test's own, dropped (with its connections) when this is dropped.
pub struct TempDatabase {
    name: String,
    pub url: String,
}

impl TempDatabase {
    pub async fn create() -> TempDatabase {
        let admin = admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("the PostgreSQL at {admin} answered the probe, then: {e}"));
        let name = unique("pg").replace('-', "_");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let mut url = url::Url::parse(&admin).expect("POSTGRES_URL is a URL");
        url.set_path(&name);
        TempDatabase {
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime: the async driver gets a runtime of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&admin_url()).await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await
                        .map(drop)
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}
