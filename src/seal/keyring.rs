//! The keys this process holds ([`Keyring`]): read from the store at start, again with the
//! subscription index, and again when a message names a key not loaded here (a rotation made
//! elsewhere), at most once a second and never condemning a message when the read fails.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use hmac::Mac;

use super::{Forgery, Key, KeyError, KeySet, KeySource, Seal, StoredKey, shorten};

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
