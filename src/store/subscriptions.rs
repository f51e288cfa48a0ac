//! Subscription rows.

// Dynamic SQL here only splices constants and numbered placeholders; every value is bound.
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Page, Store, StoreError};
use crate::delivery::SigningKey;
use crate::subscriptions::{
    DisabledReason, EventSet, LookupError, PreviousSecret, Subscription, SubscriptionSource,
};
use crate::time::{now_rfc3339, rfc3339};

/// A validated subscription to create.
#[derive(Debug)]
pub struct NewSubscription {
    pub account_id: String,
    pub url: url::Url,
    pub events: EventSet,
    pub enabled: bool,
    pub description: Option<String>,
}

/// A validated change; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct SubscriptionPatch {
    pub url: Option<url::Url>,
    pub events: Option<EventSet>,
    pub enabled: Option<bool>,
    pub description: Option<Option<String>>,
}

const COLUMNS: &str = "id, account_id, url, events, enabled, disabled_reason, disabled_at, \
     description, secret, previous_secret, previous_secret_expires_at, created_at, updated_at";

impl Store {
    /// Stores `new` unless its account already has `limit` subscriptions (`None` then). The
    /// count and the insert are one statement (SQLite takes its write lock before it counts);
    /// on PostgreSQL a lock on the account, held to the commit, keeps two at once from both
    /// counting one short.
    pub async fn create_subscription(
        &self,
        new: NewSubscription,
        limit: u32,
    ) -> Result<Option<Subscription>, StoreError> {
        let now = now_rfc3339();
        let sub = Subscription {
            id: format!("sub_{}", uuid::Uuid::now_v7().simple()),
            account_id: new.account_id,
            url: new.url.to_string(),
            events: new.events,
            enabled: new.enabled,
            disabled_reason: (!new.enabled).then_some(DisabledReason::Manual),
            disabled_at: (!new.enabled).then(|| now.clone()),
            description: new.description,
            secret: SigningKey::generate(),
            previous_secret: None,
            parsed_url: new.url,
            created_at: now.clone(),
            updated_at: now,
        };
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('subscriptions:' || $1))")
                .bind(&sub.account_id)
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query(
            "INSERT INTO subscriptions (id, account_id, url, events, enabled, disabled_reason, disabled_at, \
             description, secret, created_at, updated_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
             WHERE (SELECT COUNT(*) FROM subscriptions WHERE account_id = $2) < $12",
        )
        .bind(&sub.id)
        .bind(&sub.account_id)
        .bind(&sub.url)
        .bind(events_json(sub.events))
        .bind(i64::from(sub.enabled))
        .bind(sub.disabled_reason.map(DisabledReason::as_str))
        .bind(&sub.disabled_at)
        .bind(&sub.description)
        .bind(sub.secret.expose())
        .bind(&sub.created_at)
        .bind(&sub.updated_at)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((done.rows_affected() == 1).then_some(sub))
    }

    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// Subscriptions in creation order, optionally of one account, after `cursor` (an id).
    pub async fn list_subscriptions(
        &self,
        account_id: Option<&str>,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<Page<Subscription>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM subscriptions WHERE id > $1");
        if account_id.is_some() {
            sql.push_str(" AND account_id = $2");
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", limit + 1));
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(cursor.unwrap_or(""));
        if let Some(account) = account_id {
            query = query.bind(account);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(items, limit, |item| &item.id))
    }

    pub async fn all_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM subscriptions"
        )))
        .fetch_all(&self.pool)
        .await?;
        // A corrupt row is logged and left out rather than failing the whole index (and with it
        // every other account's deliveries).
        Ok(rows
            .iter()
            .filter_map(|row| match from_row(row) {
                Ok(sub) => Some(sub),
                Err(e) => {
                    tracing::error!(error = %e, "skipping unreadable subscription row");
                    None
                }
            })
            .collect())
    }

    /// Applies `patch` in one statement (concurrent changes to different fields both stick);
    /// `None` if there is no such subscription.
    pub async fn update_subscription(
        &self,
        id: &str,
        patch: SubscriptionPatch,
    ) -> Result<Option<Subscription>, StoreError> {
        let (set_description, description) = match patch.description {
            Some(d) => (1i64, d),
            None => (0, None),
        };
        // Disabling records why (manual, also over an automatic disable: the customer said
        // stop) and since when; enabling a disabled one clears both and forgets its failures, so
        // the automatic-disable rule starts over (an enable of an enabled one changes nothing).
        // One transaction; every right-hand side reads the row as it was before the update.
        let mut tx = self.pool.begin().await?;
        if patch.enabled == Some(true) {
            sqlx::query(
                "UPDATE endpoint_state SET exhausted = 0, failing_since = NULL WHERE subscription_id = $1 \
                 AND EXISTS (SELECT 1 FROM subscriptions WHERE id = $1 AND enabled = 0)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query(
            "UPDATE subscriptions SET url = COALESCE($1, url), events = COALESCE($2, events), \
             enabled = COALESCE($3, enabled), \
             disabled_reason = CASE WHEN $3 IS NULL THEN disabled_reason WHEN $3 = 1 THEN NULL \
                 ELSE 'manual' END, \
             disabled_at = CASE WHEN $3 IS NULL THEN disabled_at WHEN $3 = 1 THEN NULL \
                 WHEN enabled = 1 THEN $6 ELSE COALESCE(disabled_at, $6) END, \
             description = CASE WHEN $4 = 1 THEN $5 ELSE description END, updated_at = $6 WHERE id = $7",
        )
        .bind(patch.url.map(|u| u.to_string()))
        .bind(patch.events.map(events_json))
        .bind(patch.enabled.map(i64::from))
        .bind(set_description)
        .bind(description)
        .bind(now_rfc3339())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.changed(done.rows_affected(), id).await
    }

    /// Gives a subscription a new secret; the current one becomes the previous secret, signing
    /// next to the new one until `now + overlap` (an earlier previous secret is dropped). A zero
    /// overlap retires the old secret at once. With `from`, only if the current secret is still
    /// that one (a second click on the same form must not drop the secret the endpoint uses).
    pub async fn rotate_secret(
        &self,
        id: &str,
        overlap: std::time::Duration,
        from: Option<&SigningKey>,
    ) -> Result<Rotated, StoreError> {
        let now = chrono::Utc::now();
        let expires_at = (!overlap.is_zero()).then(|| {
            let overlap = chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::MAX);
            rfc3339(now.checked_add_signed(overlap).unwrap_or(now))
        });
        let condition = if from.is_some() {
            " AND secret = $6"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE subscriptions SET previous_secret = CASE WHEN $1 = 1 THEN secret ELSE NULL END, \
             previous_secret_expires_at = $2, secret = $3, updated_at = $4 WHERE id = $5{condition}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(expires_at.is_some()))
            .bind(&expires_at)
            .bind(SigningKey::generate().expose())
            .bind(rfc3339(now))
            .bind(id);
        if let Some(from) = from {
            query = query.bind(from.expose());
        }
        let done = query.execute(&self.pool).await?;
        Ok(match self.changed(done.rows_affected(), id).await? {
            Some(sub) => Rotated::Done(sub),
            None => match self.subscription(id).await? {
                Some(sub) => Rotated::Already(sub),
                None => Rotated::Missing,
            },
        })
    }

    /// The subscription as an UPDATE of `rows` rows left it; `None` if it matched none.
    async fn changed(&self, rows: u64, id: &str) -> Result<Option<Subscription>, StoreError> {
        if rows == 0 {
            return Ok(None);
        }
        self.subscription(id).await
    }

    /// Deletes a subscription (and its health figures); `false` if there was none.
    pub async fn delete_subscription(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        for table in ["endpoint_state", "endpoint_minutes"] {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE subscription_id = $1"
            )))
            .bind(id)
            .execute(&self.pool)
            .await?;
        }
        Ok(done.rows_affected() == 1)
    }
}

fn events_json(events: EventSet) -> String {
    serde_json::to_string(&events.names()).expect("names serialise")
}

fn previous_secret(text: &str, until: &str) -> Result<PreviousSecret, String> {
    Ok(PreviousSecret {
        key: SigningKey::parse(text).map_err(|e| e.to_string())?,
        expires_at: chrono::DateTime::parse_from_rfc3339(until)
            .map_err(|e| e.to_string())?
            .to_utc(),
    })
}

fn from_row(row: &AnyRow) -> Result<Subscription, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |detail: String| StoreError::Corrupt {
        id: id.clone(),
        detail,
    };
    let events_text: String = row.try_get("events")?;
    let names: Vec<String> =
        serde_json::from_str(&events_text).map_err(|e| corrupt(format!("events: {e}")))?;
    let events = EventSet::parse(&names).map_err(corrupt)?;
    let url: String = row.try_get("url")?;
    let parsed_url = url::Url::parse(&url).map_err(|e| corrupt(format!("url: {e}")))?;
    let secret_text: String = row.try_get("secret")?;
    let secret = SigningKey::parse(&secret_text).map_err(|e| corrupt(e.to_string()))?;
    let previous_text: Option<String> = row.try_get("previous_secret")?;
    let previous_until: Option<String> = row.try_get("previous_secret_expires_at")?;
    // A previous secret that cannot be read is dropped (and logged), not the subscription: the
    // current secret still signs every delivery.
    let previous_secret = match (previous_text, previous_until) {
        (Some(text), Some(until)) => previous_secret(&text, &until)
            .inspect_err(|e| {
                tracing::error!(subscription_id = %id, error = %e, "ignoring an unreadable previous secret");
            })
            .ok(),
        _ => None,
    };
    let enabled: i64 = row.try_get("enabled")?;
    let disabled_reason: Option<String> = row.try_get("disabled_reason")?;
    Ok(Subscription {
        id: id.clone(),
        account_id: row.try_get("account_id")?,
        url,
        events,
        enabled: enabled != 0,
        disabled_reason: disabled_reason.as_deref().and_then(DisabledReason::parse),
        disabled_at: row.try_get("disabled_at")?,
        description: row.try_get("description")?,
        secret,
        previous_secret,
        parsed_url,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[async_trait::async_trait]
impl SubscriptionSource for Store {
    async fn all_subscriptions(&self) -> Result<Vec<Subscription>, LookupError> {
        Store::all_subscriptions(self)
            .await
            .map_err(|e| LookupError(Box::new(e)))
    }

    async fn subscription(&self, id: &str) -> Result<Option<Subscription>, LookupError> {
        Store::subscription(self, id)
            .await
            .map_err(|e| LookupError(Box::new(e)))
    }
}

/// What [`Store::rotate_secret`] did.
#[derive(Debug)]
pub enum Rotated {
    /// Rotated: the subscription with its new secret.
    Done(Subscription),
    /// Not rotated: the secret was no longer the one given (rotated since); the subscription as
    /// it is.
    Already(Subscription),
    /// No such subscription.
    Missing,
}
