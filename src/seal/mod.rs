//! The MAC on the messages the service publishes for itself: delivery tasks (retries, deferrals,
//! replays, test events) and dead letters. Anyone with write access to the broker's vhost can
//! publish to the default exchange, so a message's route proves nothing; a task decides what
//! gets signed with a customer's secret, and a dead letter what can be replayed. Each such
//! message carries `x-webhook-key` (the key id) and `x-webhook-mac`, HMAC-SHA256 over its kind
//! and its body, and nothing in it is believed before the MAC verifies.
//!
//! The keys live in the store (a [`KeySource`]): every instance and the operator CLI
//! already share it, so they share the keys with nothing to configure, and a rotation reaches
//! them all. The newest key signs; older ones keep verifying for the rotation's overlap, so
//! messages already in the queues stay valid.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

mod keyring;

pub use keyring::{Keyring, Unverified};

/// Header carrying the id of the key a message is sealed with.
pub const KEY_HEADER: &str = "x-webhook-key";
/// Header carrying the MAC (base64).
pub const MAC_HEADER: &str = "x-webhook-mac";
/// The kind a dead letter is sealed as (tasks are sealed as their task kind).
pub const DEAD_LETTER_KIND: &str = "dead_letter";

/// Put first in every MAC's input, so these MACs cannot be confused with any other use of a key.
const DOMAIN: &[u8] = b"webhook-dispatcher/message/v1";

/// A message's seal: the header values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal {
    pub key_id: String,
    pub mac: String,
}

/// Why a message's seal did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forgery {
    #[error(
        "it carries no signature: forged, or queued by a version that did not sign its messages"
    )]
    Unsigned,
    #[error(
        "it names key {0:?}, which this service does not have or has retired: forged, or kept in a queue past its key rotation's overlap"
    )]
    UnknownKey(String),
    #[error("its signature does not match its content: forged or altered")]
    BadMac,
}

impl Forgery {
    /// A short stable label (logs, metrics).
    pub fn label(&self) -> &'static str {
        match self {
            Forgery::Unsigned => "unsigned",
            Forgery::UnknownKey(_) => "unknown_key",
            Forgery::BadMac => "bad_signature",
        }
    }
}

/// One message key as kept where the keys live.
#[derive(Clone)]
pub struct StoredKey {
    pub id: i64,
    pub secret: Vec<u8>,
    pub created_at: String,
    /// When it stops verifying; `None` while it is the newest.
    pub retires_at: Option<String>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

/// Where the keys live (the store implements it).
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    /// Every key that still verifies at `now`, newest first.
    async fn message_keys(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredKey>, Box<dyn std::error::Error + Send + Sync>>;
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the message keys failed: {0}")]
    Source(Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "the store has no message key: start the service (serve) once with this DATABASE_URL; it creates one"
    )]
    NoKey,
}

struct Key {
    id: String,
    /// Keyed once; each MAC starts from a clone.
    mac: Hmac<Sha256>,
    /// When it stops verifying (a rotation's overlap ended).
    retires_at: Option<DateTime<Utc>>,
}

impl Key {
    fn new(stored: &StoredKey) -> Key {
        Key {
            id: stored.id.to_string(),
            mac: Hmac::<Sha256>::new_from_slice(&stored.secret).expect("HMAC takes any key length"),
            retires_at: stored
                .retires_at
                .as_deref()
                .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
                .map(|at| at.with_timezone(&Utc)),
        }
    }

    fn retired(&self, now: DateTime<Utc>) -> bool {
        self.retires_at.is_some_and(|at| at <= now)
    }

    fn mac_of(&self, kind: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(b"\0");
        mac.update(kind.as_bytes());
        mac.update(b"\0");
        mac.update(body);
        mac
    }
}

struct KeySet {
    signing: Arc<Key>,
    by_id: HashMap<String, Arc<Key>>,
}

impl KeySet {
    /// `keys` newest first, as the store lists them.
    fn new(keys: &[StoredKey]) -> Result<KeySet, KeyError> {
        let keys: Vec<Arc<Key>> = keys.iter().map(|k| Arc::new(Key::new(k))).collect();
        let signing = keys.first().cloned().ok_or(KeyError::NoKey)?;
        let by_id = keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        Ok(KeySet { signing, by_id })
    }
}

/// A header value from outside, fit for a log line.
fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests;
