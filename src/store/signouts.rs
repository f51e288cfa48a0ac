//! Portal sessions signed out before they expired (`portal_signouts`): a session is a signed
//! cookie that carries its own expiry, so ending it for good takes a row the portal checks on
//! every request.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};
use crate::time::rfc3339;

impl Store {
    /// Records that the session `session_id`, valid until `expires_at`, was signed out; rows of
    /// sessions expired by `now` go at the same time (they are refused by their expiry alone).
    /// Signing out twice is one row.
    pub async fn sign_out_session(
        &self,
        session_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM portal_signouts WHERE expires_at < $1")
            .bind(rfc3339(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO portal_signouts (session_id, expires_at) VALUES ($1, $2) \
             ON CONFLICT (session_id) DO NOTHING",
        )
        .bind(session_id)
        .bind(rfc3339(expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the session `session_id` was signed out.
    pub async fn session_signed_out(&self, session_id: &str) -> Result<bool, StoreError> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT session_id FROM portal_signouts WHERE session_id = $1")
                .bind(session_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }
}
