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
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Header carrying the id of the key a message is sealed with.
pub const KEY_HEADER: &str = "x-webhook-key";
/// Header carrying the MAC (base64).
pub const MAC_HEADER: &str = "x-webhook-mac";
/// The kind a dead letter is sealed as (tasks are sealed as their task kind).
pub const DEAD_LETTER_KIND: &str = "dead_letter";

/// Put first in every MAC's input, so these MACs cannot be confused with any other use of a key.
const DOMAIN: &[u8] = b"webhook-dispatcher/message/v1";

/// Fewest seconds between two reloads caused by an unknown key id: a flood of messages naming
/// made-up keys must not become a flood of store queries.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

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

/// The message keys this process knows, reloaded from the store periodically (with the
/// subscription index) and when a message names a key it does not know yet (a rotation made
/// elsewhere).
pub struct Keyring {
    keys: RwLock<Arc<KeySet>>,
    source: Option<Arc<dyn KeySource>>,
    last_reload: Mutex<Option<Instant>>,
}

impl Keyring {
    /// The keys in `source`, which must have one (the store makes the first at start).
    pub async fn load(source: Arc<dyn KeySource>) -> Result<Keyring, KeyError> {
        let keys = KeySet::new(&read(source.as_ref()).await?)?;
        Ok(Keyring {
            keys: RwLock::new(Arc::new(keys)),
            source: Some(source),
            last_reload: Mutex::new(Some(Instant::now())),
        })
    }

    /// Fixed keys, newest first, never reloaded (benchmarks and unit tests).
    pub fn fixed(keys: &[StoredKey]) -> Result<Keyring, KeyError> {
        Ok(Keyring {
            keys: RwLock::new(Arc::new(KeySet::new(keys)?)),
            source: None,
            last_reload: Mutex::new(None),
        })
    }

    /// Reads the keys from the store again (a rotation made by another process).
    pub async fn reload(&self) -> Result<(), KeyError> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        let keys = KeySet::new(&read(source.as_ref()).await?)?;
        *self.keys.write().expect("keyring lock") = Arc::new(keys);
        Ok(())
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().expect("keyring lock").clone()
    }

    /// The seal of a message of `kind` with this `body`, made with the newest key.
    pub fn seal(&self, kind: &str, body: &[u8]) -> Seal {
        let key = self.current().signing.clone();
        let mac = key.mac_of(kind, body).finalize().into_bytes();
        Seal {
            key_id: key.id.clone(),
            mac: STANDARD.encode(mac),
        }
    }

    /// Checks a message's seal (its header values, `None` when absent). A key id this process
    /// does not know makes it reload the keys first (at most once a second).
    pub async fn verify(
        &self,
        kind: &str,
        body: &[u8],
        key_id: Option<&str>,
        mac: Option<&str>,
    ) -> Result<(), Forgery> {
        let (Some(key_id), Some(mac)) = (key_id, mac) else {
            return Err(Forgery::Unsigned);
        };
        let mut key = self.current().by_id.get(key_id).cloned();
        if key.is_none() && self.may_reload() {
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "could not reload the message keys");
            }
            key = self.current().by_id.get(key_id).cloned();
        }
        let key = key
            .filter(|k| !k.retired(Utc::now()))
            .ok_or_else(|| Forgery::UnknownKey(shorten(key_id)))?;
        let presented = STANDARD.decode(mac).map_err(|_| Forgery::BadMac)?;
        key.mac_of(kind, body)
            .verify_slice(&presented)
            .map_err(|_| Forgery::BadMac)
    }

    fn may_reload(&self) -> bool {
        if self.source.is_none() {
            return false;
        }
        let mut last = self.last_reload.lock().expect("reload lock");
        if last.is_some_and(|at| at.elapsed() < RELOAD_AT_MOST_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

async fn read(source: &dyn KeySource) -> Result<Vec<StoredKey>, KeyError> {
    source
        .message_keys(Utc::now())
        .await
        .map_err(KeyError::Source)
}

/// A header value from outside, fit for a log line.
fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64, byte: u8) -> StoredKey {
        StoredKey {
            id,
            secret: vec![byte; 32],
            created_at: "2026-12-01T00:00:00.000Z".into(),
            retires_at: None,
        }
    }

    #[tokio::test]
    async fn a_seal_verifies_for_its_kind_and_body_only() {
        let ring = Keyring::fixed(&[key(1, 7)]).unwrap();
        let seal = ring.seal("delivery", b"{\"a\":1}");
        assert_eq!(seal.key_id, "1");
        let verify = |kind: &'static str, body: &'static [u8], mac: String| {
            let ring = &ring;
            let key_id = seal.key_id.clone();
            async move { ring.verify(kind, body, Some(&key_id), Some(&mac)).await }
        };
        assert_eq!(
            verify("delivery", b"{\"a\":1}", seal.mac.clone()).await,
            Ok(())
        );
        assert_eq!(
            verify("delivery", b"{\"a\":2}", seal.mac.clone()).await,
            Err(Forgery::BadMac)
        );
        assert_eq!(
            verify("replay", b"{\"a\":1}", seal.mac.clone()).await,
            Err(Forgery::BadMac),
            "a seal made for one kind does not pass for another"
        );
        assert_eq!(
            verify("delivery", b"{\"a\":1}", "not base64!".into()).await,
            Err(Forgery::BadMac)
        );
        assert_eq!(
            ring.verify("delivery", b"{}", None, None).await,
            Err(Forgery::Unsigned)
        );
        assert_eq!(
            ring.verify("delivery", b"{}", Some("9"), Some(&seal.mac))
                .await,
            Err(Forgery::UnknownKey("9".into()))
        );
    }

    #[tokio::test]
    async fn the_newest_key_signs_and_older_ones_still_verify() {
        let old = Keyring::fixed(&[key(1, 1)]).unwrap();
        let both = Keyring::fixed(&[key(2, 2), key(1, 1)]).unwrap();
        let sealed_before = old.seal("dead_letter", b"x");
        assert_eq!(
            both.verify(
                "dead_letter",
                b"x",
                Some(&sealed_before.key_id),
                Some(&sealed_before.mac)
            )
            .await,
            Ok(())
        );
        let sealed_after = both.seal("dead_letter", b"x");
        assert_eq!(sealed_after.key_id, "2");
        assert_ne!(sealed_after.mac, sealed_before.mac);
        assert!(Keyring::fixed(&[]).is_err());
    }

    #[tokio::test]
    async fn a_key_stops_verifying_when_its_overlap_ends() {
        let sealed = Keyring::fixed(&[key(1, 1)]).unwrap().seal("delivery", b"x");
        let mut retired = key(1, 1);
        retired.retires_at = Some("2026-01-01T00:00:00.000Z".into());
        let ring = Keyring::fixed(&[key(2, 2), retired]).unwrap();
        assert_eq!(
            ring.verify("delivery", b"x", Some("1"), Some(&sealed.mac))
                .await,
            Err(Forgery::UnknownKey("1".into()))
        );
    }
}
