//! Portal links, sessions and CSRF tokens: each an HMAC-SHA256 over what it says, keyed with the
//! portal key (`PORTAL_KEY`, or the one kept in the store on a loopback setup), each for its own
//! purpose, so a link's MAC never passes for a session's.
//!
//! A link token is `v1.<account, base64url>.<expires, unix seconds>.<nonce>.<mac>`; a session
//! cookie has the same shape with a session id for the nonce; a session's CSRF token is the MAC
//! of its session id.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

/// How long a portal session lasts after its link was opened, whatever the link's own lifetime.
pub const SESSION_LIFETIME: chrono::Duration = chrono::Duration::hours(8);

/// The key, never printed.
#[derive(Clone)]
pub struct PortalKey(Vec<u8>);

impl std::fmt::Debug for PortalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortalKey(***)")
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Well-formed and genuine, but past its time.
    Expired,
    /// Not made with this key, altered, or not a token at all.
    Invalid,
}

/// A verified token: whose, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub account_id: String,
    pub expires_at: DateTime<Utc>,
    /// The link's nonce or the session's id.
    pub nonce: String,
}

impl PortalKey {
    pub fn new(bytes: Vec<u8>) -> PortalKey {
        PortalKey(bytes)
    }

    fn mac(&self, purpose: &str, parts: &[&str]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"webhook-dispatcher/portal/");
        mac.update(purpose.as_bytes());
        for part in parts {
            mac.update(b"\0");
            mac.update(part.as_bytes());
        }
        mac
    }

    fn issue(&self, purpose: &str, account_id: &str, expires_at: DateTime<Utc>) -> String {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let account = URL_SAFE_NO_PAD.encode(account_id);
        let expires = expires_at.timestamp().to_string();
        let mac = self
            .mac(purpose, &[&account, &expires, &nonce])
            .finalize()
            .into_bytes();
        format!(
            "v1.{account}.{expires}.{nonce}.{}",
            URL_SAFE_NO_PAD.encode(mac)
        )
    }

    fn check(&self, purpose: &str, token: &str, now: DateTime<Utc>) -> Result<Grant, Refused> {
        let parts: Vec<&str> = token.split('.').collect();
        let [version, account, expires, nonce, mac] = parts.as_slice() else {
            return Err(Refused::Invalid);
        };
        if *version != "v1" {
            return Err(Refused::Invalid);
        }
        let presented = URL_SAFE_NO_PAD.decode(mac).map_err(|_| Refused::Invalid)?;
        self.mac(purpose, &[account, expires, nonce])
            .verify_slice(&presented)
            .map_err(|_| Refused::Invalid)?;
        let account_id = URL_SAFE_NO_PAD
            .decode(account)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(Refused::Invalid)?;
        let expires_at = expires
            .parse::<i64>()
            .ok()
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .ok_or(Refused::Invalid)?;
        if expires_at <= now {
            return Err(Refused::Expired);
        }
        Ok(Grant {
            account_id,
            expires_at,
            nonce: nonce.to_string(),
        })
    }

    /// A link token for `account_id`, good until `expires_at`.
    pub fn link(&self, account_id: &str, expires_at: DateTime<Utc>) -> String {
        self.issue("link", account_id, expires_at)
    }

    pub fn check_link(&self, token: &str, now: DateTime<Utc>) -> Result<Grant, Refused> {
        self.check("link", token, now)
    }

    /// A session for `account_id`, starting `now`.
    pub fn session(&self, account_id: &str, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
        let expires_at = now + SESSION_LIFETIME;
        (self.issue("session", account_id, expires_at), expires_at)
    }

    pub fn check_session(&self, cookie: &str, now: DateTime<Utc>) -> Result<Grant, Refused> {
        self.check("session", cookie, now)
    }

    /// The CSRF token of the session `grant`: every form of that session carries it.
    pub fn csrf(&self, grant: &Grant) -> String {
        self.proof("csrf", &grant.nonce)
    }

    /// Whether `presented` is the CSRF token of `grant` (compared in constant time).
    pub fn csrf_ok(&self, grant: &Grant, presented: &str) -> bool {
        self.proof_ok("csrf", &grant.nonce, presented)
    }

    fn proof(&self, purpose: &str, value: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(purpose, &[value]).finalize().into_bytes())
    }

    fn proof_ok(&self, purpose: &str, value: &str, presented: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(presented)
            .is_ok_and(|bytes| self.mac(purpose, &[value]).verify_slice(&bytes).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_link_opens_for_its_account_until_it_expires() {
        let key = PortalKey::new(b"k".repeat(32));
        let token = key.link("acct.weird/é", at(1000));
        let grant = key.check_link(&token, at(999)).unwrap();
        assert_eq!(grant.account_id, "acct.weird/é");
        assert_eq!(key.check_link(&token, at(1000)), Err(Refused::Expired));
        let other = PortalKey::new(b"x".repeat(32));
        assert_eq!(other.check_link(&token, at(1)), Err(Refused::Invalid));
    }

    #[test]
    fn a_tampered_token_or_one_for_another_purpose_is_refused() {
        let key = PortalKey::new(b"k".repeat(32));
        let token = key.link("acct_a", at(1000));
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = URL_SAFE_NO_PAD.encode("acct_b");
        assert_eq!(
            key.check_link(&parts.join("."), at(1)),
            Err(Refused::Invalid)
        );
        parts = token.split('.').map(str::to_string).collect();
        parts[2] = "99999999999".into();
        assert_eq!(
            key.check_link(&parts.join("."), at(1)),
            Err(Refused::Invalid)
        );
        assert_eq!(key.check_session(&token, at(1)), Err(Refused::Invalid));
        for junk in ["", "v1", "v1.a.b.c.d", "v2.x.1.n.m"] {
            assert_eq!(key.check_link(junk, at(1)), Err(Refused::Invalid), "{junk}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let key = PortalKey::new(b"k".repeat(32));
        let (a, _) = key.session("acct_a", at(0));
        let (b, _) = key.session("acct_a", at(0));
        let a = key.check_session(&a, at(1)).unwrap();
        let b = key.check_session(&b, at(1)).unwrap();
        assert!(key.csrf_ok(&a, &key.csrf(&a)));
        assert!(!key.csrf_ok(&a, &key.csrf(&b)));
        assert!(!key.csrf_ok(&a, ""));
    }
}
