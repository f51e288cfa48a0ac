//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>` keyed
//! with the base64-decoded part of a `whsec_` secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

use std::fmt;

const PREFIX: &str = "whsec_";
/// Random bytes in a generated secret (Standard Webhooks asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// A subscription's signing key. The text form is only revealed through [`SigningKey::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    text: String,
    key: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("signing secret must be `whsec_` followed by base64 of 24 to 64 bytes")]
pub struct InvalidSecret;

impl SigningKey {
    pub fn generate() -> SigningKey {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        SigningKey {
            text: format!("{PREFIX}{}", STANDARD.encode(bytes)),
            key: bytes.to_vec(),
        }
    }

    pub fn parse(text: &str) -> Result<SigningKey, InvalidSecret> {
        let encoded = text.strip_prefix(PREFIX).ok_or(InvalidSecret)?;
        let key = STANDARD.decode(encoded).map_err(|_| InvalidSecret)?;
        // The spec's own test vector uses a 24-byte key; refuse anything shorter.
        if !(24..=64).contains(&key.len()) {
            return Err(InvalidSecret);
        }
        Ok(SigningKey {
            text: text.to_string(),
            key,
        })
    }

    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The `webhook-signature` value for one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header for several keys: one `v1,` signature each, separated by
/// spaces, as Standard Webhooks specifies for secret rotation.
pub fn signature_header(keys: &[&SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| key.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let sig = key.sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn generated_secrets_parse_back_and_differ() {
        let a = SigningKey::generate();
        let b = SigningKey::generate();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(SigningKey::parse(a.expose()).unwrap(), a);
        assert!(a.expose().starts_with("whsec_"));
    }

    #[test]
    fn malformed_secrets_are_refused_and_never_printed() {
        for bad in [
            "",
            "whsec_",
            "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_!!!!",
            "whsec_AAAA",
        ] {
            assert_eq!(SigningKey::parse(bad), Err(InvalidSecret), "{bad}");
        }
        let key = SigningKey::generate();
        assert!(!format!("{key:?}").contains(key.expose()));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn key_from(bytes: &[u8]) -> SigningKey {
            SigningKey::parse(&format!("{PREFIX}{}", STANDARD.encode(bytes))).unwrap()
        }

        proptest! {
            /// Any key, id, timestamp and (UTF-8) body: the same signature as the stock
            /// Standard Webhooks implementation.
            #[test]
            fn agrees_with_the_standard_webhooks_crate(
                key in proptest::collection::vec(any::<u8>(), 24..=64),
                id in "[A-Za-z0-9_]{1,40}",
                timestamp in 0i64..4_000_000_000,
                body in any::<String>(),
            ) {
                let ours = key_from(&key).sign(&id, timestamp, body.as_bytes());
                let theirs = standardwebhooks::Webhook::from_bytes(key)
                    .unwrap()
                    .sign(&id, timestamp, body.as_bytes())
                    .unwrap();
                prop_assert_eq!(ours, theirs);
            }

            /// Changing any one input changes the signature.
            #[test]
            fn every_input_is_covered(
                key in proptest::collection::vec(any::<u8>(), 24..=64),
                id in "[a-z0-9]{1,20}",
                timestamp in 0i64..4_000_000_000,
                body in proptest::collection::vec(any::<u8>(), 1..512),
                flip in any::<proptest::sample::Index>(),
            ) {
                let signer = key_from(&key);
                let sig = signer.sign(&id, timestamp, &body);
                let mut changed = body.clone();
                let at = flip.index(changed.len());
                changed[at] ^= 1;
                prop_assert_ne!(&sig, &signer.sign(&id, timestamp, &changed));
                prop_assert_ne!(&sig, &signer.sign(&format!("{id}x"), timestamp, &body));
                prop_assert_ne!(&sig, &signer.sign(&id, timestamp + 1, &body));
                let mut other_key = key.clone();
                other_key[0] ^= 1;
                prop_assert_ne!(&sig, &key_from(&other_key).sign(&id, timestamp, &body));
            }

            /// The rotation header holds one signature per key, in order, space-separated.
            #[test]
            fn a_rotation_header_holds_each_keys_signature(
                keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 24..=64), 1..4),
                body in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let keys: Vec<SigningKey> = keys.iter().map(|k| key_from(k)).collect();
                let refs: Vec<&SigningKey> = keys.iter().collect();
                let header = signature_header(&refs, "msg_1", 1_700_000_000, &body);
                let parts: Vec<&str> = header.split(' ').collect();
                prop_assert_eq!(parts.len(), keys.len());
                for (part, key) in parts.iter().zip(&keys) {
                    prop_assert_eq!(*part, key.sign("msg_1", 1_700_000_000, &body));
                }
            }

            /// A key of 24 to 64 bytes parses back to itself; any other length is refused.
            #[test]
            fn secrets_parse_only_at_allowed_lengths(
                key in proptest::collection::vec(any::<u8>(), 0..100),
            ) {
                let text = format!("{PREFIX}{}", STANDARD.encode(&key));
                match SigningKey::parse(&text) {
                    Ok(parsed) => {
                        prop_assert!((24..=64).contains(&key.len()));
                        prop_assert_eq!(parsed.expose(), text.as_str());
                    }
                    Err(_) => prop_assert!(!(24..=64).contains(&key.len())),
                }
            }
        }
    }
}
