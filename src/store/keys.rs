//! Message keys: the secrets of the MAC on the service's own broker messages ([`crate::seal`]).
//! Kept in the store so that every instance and the operator CLI share them with nothing to
//! configure, and a rotation reaches all of them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sqlx::Row;

use super::{Store, StoreError};
use crate::seal::{KeySource, StoredKey};
use crate::time::rfc3339;

/// Random bytes in a message key (HMAC-SHA256's block-sized key would be 64; 32 is its output
/// size and all the strength it has).
const KEY_BYTES: usize = 32;

fn new_secret() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

impl Store {
    /// Creates the first message key unless there is one. Safe when several instances start at
    /// once: one insert wins (the id is the primary key) and all read the same key back. Only
    /// reads when there is a key, so a start needs no write (a store locked for writing, say).
    pub async fn ensure_message_key(&self) -> Result<(), StoreError> {
        let any: Option<i64> = sqlx::query_scalar("SELECT id FROM message_keys LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        if any.is_some() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO message_keys (id, secret, created_at) \
             SELECT 1, $1, $2 WHERE NOT EXISTS (SELECT 1 FROM message_keys) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(new_secret())
        .bind(rfc3339(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every key that still verifies at `now`, newest first.
    pub async fn message_keys(&self, now: DateTime<Utc>) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, secret, created_at, retires_at FROM message_keys \
             WHERE retires_at IS NULL OR retires_at > $1 ORDER BY id DESC",
        )
        .bind(rfc3339(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("id")?;
                let text: String = row.try_get("secret")?;
                let secret = STANDARD.decode(text).map_err(|e| StoreError::Corrupt {
                    id: format!("message key {id}"),
                    detail: e.to_string(),
                })?;
                Ok(StoredKey {
                    id,
                    secret,
                    created_at: row.try_get("created_at")?,
                    retires_at: row.try_get("retires_at")?,
                })
            })
            .collect()
    }

    /// Creates a key newer than every other, which signs from now on; the older keys that still
    /// verify keep verifying until `now + overlap` (or their own earlier end), so messages they
    /// sealed, still in the queues, stay valid. Fails (without changing anything) if another
    /// rotation took the same id first.
    pub async fn rotate_message_key(
        &self,
        now: DateTime<Utc>,
        overlap: std::time::Duration,
    ) -> Result<StoredKey, StoreError> {
        // An overlap too long for chrono is as good as forever.
        let until =
            now + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::days(36_500));
        let (now_text, until_text) = (rfc3339(now), rfc3339(until));
        let mut tx = self.pool.begin().await?;
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM message_keys")
            .fetch_one(&mut *tx)
            .await?;
        let id = newest.unwrap_or(0) + 1;
        let secret = new_secret();
        sqlx::query("INSERT INTO message_keys (id, secret, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(&secret)
            .bind(&now_text)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE message_keys SET retires_at = $1 \
             WHERE id < $2 AND (retires_at IS NULL OR retires_at > $1)",
        )
        .bind(&until_text)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(StoredKey {
            id,
            secret: STANDARD.decode(secret).expect("just encoded"),
            created_at: now_text,
            retires_at: None,
        })
    }
}

impl Store {
    /// The store's portal key (used when `PORTAL_KEY` is not set), made on first use. Safe when
    /// several processes ask at once: one insert wins and all read it back.
    pub async fn portal_key(&self) -> Result<Vec<u8>, StoreError> {
        let read =
            || sqlx::query_scalar::<_, String>("SELECT secret FROM portal_keys WHERE id = 1");
        let secret = match read().fetch_optional(&self.pool).await? {
            Some(secret) => secret,
            None => {
                sqlx::query(
                    "INSERT INTO portal_keys (id, secret, created_at) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(new_secret())
                .bind(rfc3339(Utc::now()))
                .execute(&self.pool)
                .await?;
                read().fetch_one(&self.pool).await?
            }
        };
        STANDARD.decode(secret).map_err(|e| StoreError::Corrupt {
            id: "portal key".into(),
            detail: e.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl KeySource for Store {
    async fn message_keys(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredKey>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Store::message_keys(self, now).await?)
    }
}
