//! What replicas tell each other on the control exchange: that a subscription changed, or that
//! everything should be read again. A message says only *which* subscription; the replica reads
//! it from the store, the source of truth, so a message from anyone else can at most cause a
//! read (and a flood of them is coalesced: [`crate::changes`]).

use serde::{Deserialize, Serialize};

/// Longest subscription id a control message may name (ours are 36 characters).
const MAX_ID: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Subscription `id` was created, changed or deleted: read it again.
    Subscription(String),
    /// Read every subscription again.
    Everything,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subscription_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    everything: bool,
}

impl Change {
    pub fn encode(&self) -> Vec<u8> {
        let body = match self {
            Change::Subscription(id) => Body {
                subscription_id: Some(id.clone()),
                everything: false,
            },
            Change::Everything => Body {
                subscription_id: None,
                everything: true,
            },
        };
        serde_json::to_vec(&body).expect("a control message serializes")
    }

    /// Reads a control message; what is not one is the reason.
    pub fn read(body: &[u8]) -> Result<Change, String> {
        let body: Body = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        match (body.subscription_id, body.everything) {
            (Some(id), false) => {
                if id.is_empty() || id.len() > MAX_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "subscription_id must be 1 to {MAX_ID} visible ASCII characters"
                    ));
                }
                Ok(Change::Subscription(id))
            }
            (None, true) => Ok(Change::Everything),
            _ => Err("expected {\"subscription_id\": …} or {\"everything\": true}".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_back_as_written_and_nothing_else_reads() {
        for change in [Change::Subscription("sub_1".into()), Change::Everything] {
            assert_eq!(Change::read(&change.encode()), Ok(change));
        }
        assert_eq!(Change::Everything.encode(), br#"{"everything":true}"#);
        for junk in [
            &b""[..],
            b"[]",
            br#"{}"#,
            br#"{"subscription_id":"a","everything":true}"#,
            br#"{"subscription_id":""}"#,
            br#"{"subscription_id":"a b"}"#,
            br#"{"subscription_id":"a","extra":1}"#,
            br#"{"everything":false}"#,
        ] {
            assert!(
                Change::read(junk).is_err(),
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
        let long = format!(r#"{{"subscription_id":"{}"}}"#, "x".repeat(65));
        assert!(Change::read(long.as_bytes()).is_err());
    }
}
