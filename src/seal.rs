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
use std::sync::{Arc, RwLock};
use std::time::Duration;

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

/// Why a message's seal was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error(transparent)]
    Forged(#[from] Forgery),
    /// It names a key this process has not loaded, and the keys could not be read again to look
    /// for it: not known to be forged, nor to be genuine (a rotation made elsewhere while the
    /// store is failing). The message waits, as for any store failure.
    #[error(
        "it names key {key:?}, which is not loaded here, and the keys could not be read again: {error}"
    )]
    KeysUnavailable { key: String, error: String },
}

/// The last reload caused by an unknown key id: when it began, and its error if it failed.
struct Reload {
    began: tokio::time::Instant,
    failed: Option<String>,
}

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
    /// Held while such a reload runs, so the callers waiting for one share it.
    last_reload: tokio::sync::Mutex<Option<Reload>>,
}

impl Keyring {
    /// The keys in `source`, which must have one (the store makes the first at start).
    pub async fn load(source: Arc<dyn KeySource>) -> Result<Keyring, KeyError> {
        let keys = KeySet::new(&read(source.as_ref()).await?)?;
        Ok(Keyring {
            keys: RwLock::new(Arc::new(keys)),
            source: Some(source),
            last_reload: tokio::sync::Mutex::new(Some(Reload {
                began: tokio::time::Instant::now(),
                failed: None,
            })),
        })
    }

    /// Fixed keys, newest first, never reloaded (benchmarks and unit tests).
    pub fn fixed(keys: &[StoredKey]) -> Result<Keyring, KeyError> {
        Ok(Keyring {
            keys: RwLock::new(Arc::new(KeySet::new(keys)?)),
            source: None,
            last_reload: tokio::sync::Mutex::new(None),
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
    /// does not know makes it read the keys again first (see [`Keyring::reloaded`]).
    pub async fn verify(
        &self,
        kind: &str,
        body: &[u8],
        key_id: Option<&str>,
        mac: Option<&str>,
    ) -> Result<(), Unverified> {
        let (Some(key_id), Some(mac)) = (key_id, mac) else {
            return Err(Forgery::Unsigned.into());
        };
        let key = match self.current().by_id.get(key_id).cloned() {
            Some(key) => Some(key),
            None => self.reloaded(key_id).await?,
        };
        let key = key
            .filter(|k| !k.retired(Utc::now()))
            .ok_or_else(|| Forgery::UnknownKey(shorten(key_id)))?;
        let presented = STANDARD.decode(mac).map_err(|_| Forgery::BadMac)?;
        key.mac_of(kind, body)
            .verify_slice(&presented)
            .map_err(|_| Forgery::BadMac.into())
    }

    /// `key_id` as the keys read again say, once a reload that began after this call has
    /// finished: a key made by a rotation elsewhere is found; one still unknown then is not a
    /// key. Such reloads run one at a time, at most once per [`RELOAD_AT_MOST_EVERY`], each
    /// answering every caller waiting for it, so a flood of messages naming made-up keys costs
    /// one store query a second and each of them at most about two seconds. A failed reload
    /// answers [`Unverified::KeysUnavailable`]: the message is neither accepted nor condemned.
    async fn reloaded(&self, key_id: &str) -> Result<Option<Arc<Key>>, Unverified> {
        let Some(source) = &self.source else {
            return Ok(None);
        };
        let asked = tokio::time::Instant::now();
        loop {
            let mut last = self.last_reload.lock().await;
            if let Some(reload) = last.as_ref() {
                if reload.began >= asked {
                    return match &reload.failed {
                        None => Ok(self.current().by_id.get(key_id).cloned()),
                        Some(error) => Err(Unverified::KeysUnavailable {
                            key: shorten(key_id),
                            error: error.clone(),
                        }),
                    };
                }
                let next = reload.began + RELOAD_AT_MOST_EVERY;
                if tokio::time::Instant::now() < next {
                    drop(last);
                    tokio::time::sleep_until(next).await;
                    continue;
                }
            }
            let began = tokio::time::Instant::now();
            let read = read(source.as_ref())
                .await
                .and_then(|keys| KeySet::new(&keys));
            let failed = match read {
                Ok(keys) => {
                    *self.keys.write().expect("keyring lock") = Arc::new(keys);
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the message keys again");
                    Some(e.to_string())
                }
            };
            *last = Some(Reload { began, failed });
        }
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
            Err(Unverified::Forged(Forgery::BadMac))
        );
        assert_eq!(
            verify("replay", b"{\"a\":1}", seal.mac.clone()).await,
            Err(Unverified::Forged(Forgery::BadMac)),
            "a seal made for one kind does not pass for another"
        );
        assert_eq!(
            verify("delivery", b"{\"a\":1}", "not base64!".into()).await,
            Err(Unverified::Forged(Forgery::BadMac))
        );
        assert_eq!(
            ring.verify("delivery", b"{}", None, None).await,
            Err(Unverified::Forged(Forgery::Unsigned))
        );
        assert_eq!(
            ring.verify("delivery", b"{}", Some("9"), Some(&seal.mac))
                .await,
            Err(Unverified::Forged(Forgery::UnknownKey("9".into())))
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

    /// Keys kept where a test can change them, or make reading them fail; counts the reads.
    #[derive(Default)]
    struct Source {
        keys: std::sync::Mutex<Vec<StoredKey>>,
        failing: std::sync::atomic::AtomicBool,
        reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl KeySource for Source {
        async fn message_keys(
            &self,
            _now: DateTime<Utc>,
        ) -> Result<Vec<StoredKey>, Box<dyn std::error::Error + Send + Sync>> {
            use std::sync::atomic::Ordering;
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err("the store is down".into());
            }
            Ok(self.keys.lock().unwrap().clone())
        }
    }

    impl Source {
        fn with(keys: Vec<StoredKey>) -> Arc<Source> {
            let source = Source::default();
            *source.keys.lock().unwrap() = keys;
            Arc::new(source)
        }
        fn reads(&self) -> usize {
            self.reads.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_made_elsewhere_is_found_even_right_after_a_reload() {
        let source = Source::with(vec![key(1, 1)]);
        let ring = Keyring::load(source.clone()).await.unwrap();
        let started = tokio::time::Instant::now();
        // A rotation elsewhere, half a second after this process read its keys: before, the
        // once-a-second limit on reloads had a message sealed with it taken for a forgery.
        tokio::time::sleep(Duration::from_millis(500)).await;
        source.keys.lock().unwrap().insert(0, key(2, 2));
        let sealed = Keyring::fixed(&[key(2, 2)]).unwrap().seal("delivery", b"x");
        assert_eq!(
            ring.verify("delivery", b"x", Some("2"), Some(&sealed.mac))
                .await,
            Ok(())
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "waited for the next reload"
        );
        assert_eq!(source.reads(), 2);
        // Found now without reading again.
        assert_eq!(
            ring.verify("delivery", b"x", Some("2"), Some(&sealed.mac))
                .await,
            Ok(())
        );
        assert_eq!(source.reads(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn made_up_keys_share_one_reload_a_second_and_stay_forgeries() {
        let source = Source::with(vec![key(1, 1)]);
        let ring = Keyring::load(source.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mac = ring.seal("delivery", b"x").mac;
        let flood = (0..50).map(|n| {
            let (ring, mac) = (&ring, &mac);
            async move {
                let id = format!("made-up-{n}");
                ring.verify("delivery", b"x", Some(&id), Some(mac)).await
            }
        });
        let started = tokio::time::Instant::now();
        let verdicts = futures_util::future::join_all(flood).await;
        for (n, verdict) in verdicts.into_iter().enumerate() {
            assert_eq!(
                verdict,
                Err(Unverified::Forged(Forgery::UnknownKey(format!(
                    "made-up-{n}"
                ))))
            );
        }
        assert_eq!(source.reads(), 2, "one reload for all fifty");
        assert!(started.elapsed() <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_that_cannot_be_read_again_condemn_nothing() {
        let source = Source::with(vec![key(1, 1)]);
        let ring = Keyring::load(source.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        source
            .failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let sealed = Keyring::fixed(&[key(2, 2)]).unwrap().seal("delivery", b"x");
        let verdict = ring
            .verify("delivery", b"x", Some("2"), Some(&sealed.mac))
            .await;
        let Err(Unverified::KeysUnavailable { key: named, error }) = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(named, "2");
        assert!(error.contains("the store is down"), "{error}");
        // The keys it had still verify, with no reload.
        let known = ring.seal("delivery", b"y");
        assert_eq!(
            ring.verify("delivery", b"y", Some(&known.key_id), Some(&known.mac))
                .await,
            Ok(())
        );
        // The store back (and the key made meanwhile): the message, handed back and taken
        // again a second later, is found genuine.
        tokio::time::sleep(Duration::from_secs(1)).await;
        source
            .failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        source.keys.lock().unwrap().insert(0, key(2, 2));
        assert_eq!(
            ring.verify("delivery", b"x", Some("2"), Some(&sealed.mac))
                .await,
            Ok(())
        );
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
            Err(Unverified::Forged(Forgery::UnknownKey("1".into())))
        );
    }
}
