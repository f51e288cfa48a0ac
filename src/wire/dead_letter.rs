//! Dead letters: what the service gives up on, as published to `P.dead` and persisted by the
//! DLQ logger, each made by a named constructor that says why ([`Reason`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::EventRef;
use crate::delivery::AttemptRecord;
use crate::event::{self, EventError};
use crate::seal::Forgery;
use crate::time::now_rfc3339;

/// Why something was dead-lettered: a delivery-log record's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Every attempt failed.
    Exhausted,
    /// A retry whose subscription was disabled meanwhile.
    SubscriptionDisabled,
    /// A retry whose subscription was deleted meanwhile (or belongs to another account).
    SubscriptionDeleted,
    /// Inbound messages rejected before matching ([`EventError::reason`]).
    InvalidJson,
    UnknownEvent,
    InvalidEvent,
    TooLarge,
    /// A sealed task this version cannot read.
    InvalidTask,
    /// A message that claimed to be a task without a valid seal.
    ForgedTask,
    /// A message in `P.dead` that claimed to be a dead letter without a valid seal.
    ForgedDeadLetter,
    /// Anything else in `P.dead` without a valid seal.
    Unreadable,
    /// What RabbitMQ dead-lettered from `P.events`, with its reason.
    Expired,
    DeliveryLimit,
    MaxLen,
    Rejected,
    /// RabbitMQ gave a reason this version does not know.
    DeadLettered,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Exhausted => "exhausted",
            Reason::SubscriptionDisabled => "subscription_disabled",
            Reason::SubscriptionDeleted => "subscription_deleted",
            Reason::InvalidJson => "invalid_json",
            Reason::UnknownEvent => "unknown_event",
            Reason::InvalidEvent => "invalid_event",
            Reason::TooLarge => "too_large",
            Reason::InvalidTask => "invalid_task",
            Reason::ForgedTask => "forged_task",
            Reason::ForgedDeadLetter => "forged_dead_letter",
            Reason::Unreadable => "unreadable",
            Reason::Expired => "expired",
            Reason::DeliveryLimit => "delivery_limit",
            Reason::MaxLen => "maxlen",
            Reason::Rejected => "rejected",
            Reason::DeadLettered => "dead_lettered",
        }
    }

    /// The reason of an inbound message's rejection.
    pub fn of_rejection(err: &EventError) -> Reason {
        match err {
            EventError::TooLarge(_) => Reason::TooLarge,
            EventError::InvalidJson(_) => Reason::InvalidJson,
            EventError::UnknownEvent(_) => Reason::UnknownEvent,
            EventError::InvalidEvent(_) => Reason::InvalidEvent,
        }
    }

    /// The reason RabbitMQ gave in `x-death`.
    pub fn of_death(reason: &str) -> Reason {
        match reason {
            "expired" => Reason::Expired,
            "delivery_limit" => Reason::DeliveryLimit,
            "maxlen" => Reason::MaxLen,
            "rejected" => Reason::Rejected,
            _ => Reason::DeadLettered,
        }
    }
}

/// A delivery or inbound message given up on, as published to `P.dead` and persisted by the DLQ
/// logger. `id` is fixed when the dead letter is published, so a redelivered copy is stored once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub event_id: String,
    pub account_id: Option<String>,
    pub subscription_id: Option<String>,
    pub url: Option<String>,
    pub event: Option<String>,
    /// The delivered body, or the raw inbound message (a JSON string when it was not JSON).
    pub payload: Box<RawValue>,
    pub reason: String,
    pub detail: Option<String>,
    pub attempts: Vec<AttemptRecord>,
    pub dead_lettered_at: String,
}

impl DeadLetter {
    /// An inbound message rejected before matching: kept raw, with what could be read of it.
    pub fn rejected(raw: &[u8], message_id: Option<&str>, err: &EventError) -> DeadLetter {
        let fields = event::rejected_fields(raw);
        DeadLetter {
            account_id: fields.account_id,
            event: fields.event,
            ..DeadLetter::for_raw(
                raw,
                event::fallback_id(message_id, raw),
                Reason::of_rejection(err),
                err.to_string(),
            )
        }
    }

    /// A message that claimed to be a delivery task without a valid seal: nothing in it is
    /// believed, so it names no account or subscription; its bytes are kept for whoever looks.
    pub fn forged_task(raw: &[u8], forgery: &Forgery) -> DeadLetter {
        let detail =
            format!("a delivery task that did not verify ({forgery}); nothing was delivered");
        DeadLetter::for_raw(raw, event::derived_id(raw), Reason::ForgedTask, detail)
    }

    /// A sealed task this version cannot read.
    pub fn invalid_task(raw: &[u8], detail: String) -> DeadLetter {
        DeadLetter::for_raw(raw, event::derived_id(raw), Reason::InvalidTask, detail)
    }

    /// A message in `P.dead` nothing in which is believed: its bytes, under an id derived from
    /// them (a copy delivered again is stored once), naming no account, subscription or event.
    pub fn untrusted(raw: &[u8], reason: Reason, detail: String) -> DeadLetter {
        DeadLetter {
            id: raw_dead_letter_id(raw),
            ..DeadLetter::for_raw(raw, event::derived_id(raw), reason, detail)
        }
    }

    /// The delivery of `ev` to `subscription_id`, given up after `attempts` for `reason`
    /// (exhausted, or its subscription went away).
    pub fn given_up(
        ev: &EventRef<'_>,
        subscription_id: &str,
        url: Option<&str>,
        attempts: Vec<AttemptRecord>,
        reason: Reason,
    ) -> DeadLetter {
        DeadLetter {
            id: new_dead_letter_id(),
            event_id: ev.id.to_string(),
            account_id: Some(ev.account_id.to_string()),
            subscription_id: Some(subscription_id.to_string()),
            url: url.map(str::to_string),
            event: Some(ev.event.to_string()),
            payload: raw_payload(ev.body.as_bytes()),
            reason: reason.as_str().to_string(),
            detail: attempts.last().and_then(|a| a.error.clone()),
            attempts,
            dead_lettered_at: now_rfc3339(),
        }
    }

    /// A dead letter for a message that never became a delivery (rejected inbound event,
    /// unreadable task, foreign message in `P.dead`): the raw bytes are kept — cut to
    /// [`MAX_KEPT_BYTES`], with the full size and SHA-256 added to `detail` when cut.
    pub fn for_raw(raw: &[u8], event_id: String, reason: Reason, detail: String) -> DeadLetter {
        let (payload, cut) = kept_payload(raw);
        let mut detail = detail;
        if cut {
            detail.push_str(&format!(
                "; payload keeps the first {MAX_KEPT_BYTES} of {} bytes (sha256 {})",
                raw.len(),
                hex::encode(Sha256::digest(raw))
            ));
        }
        DeadLetter {
            id: new_dead_letter_id(),
            event_id,
            account_id: None,
            subscription_id: None,
            url: None,
            event: None,
            payload,
            reason: reason.as_str().to_string(),
            detail: Some(detail),
            attempts: Vec::new(),
            dead_lettered_at: now_rfc3339(),
        }
    }

    /// Replaces NUL characters in every text field: PostgreSQL refuses them in TEXT, and a
    /// dead letter the store can never take would block the logger. (`payload` is JSON, where
    /// NUL is always escaped.)
    pub fn sanitized(mut self) -> DeadLetter {
        fn clean(s: &mut String) {
            if s.contains('\0') {
                *s = s.replace('\0', "\u{fffd}");
            }
        }
        for field in [
            &mut self.id,
            &mut self.event_id,
            &mut self.reason,
            &mut self.dead_lettered_at,
        ] {
            clean(field);
        }
        for field in [
            &mut self.account_id,
            &mut self.subscription_id,
            &mut self.url,
            &mut self.event,
            &mut self.detail,
        ]
        .into_iter()
        .flatten()
        {
            clean(field);
        }
        for attempt in &mut self.attempts {
            attempt.error.iter_mut().for_each(clean);
            clean(&mut attempt.started_at);
        }
        self
    }
}

/// Most of a rejected message kept in its dead letter. A dead letter must stay well under the
/// broker's message size limit, or publishing it would fail every time.
pub const MAX_KEPT_BYTES: usize = 64 * 1024;

/// The raw message as JSON for a dead letter, cut to [`MAX_KEPT_BYTES`]; `true` if it was cut.
pub fn kept_payload(raw: &[u8]) -> (Box<RawValue>, bool) {
    if raw.len() <= MAX_KEPT_BYTES {
        return (raw_payload(raw), false);
    }
    (raw_payload(&raw[..MAX_KEPT_BYTES]), true)
}

/// The raw message as JSON: itself when it is JSON, else a JSON string of its (lossy) text.
pub fn raw_payload(raw: &[u8]) -> Box<RawValue> {
    if let Ok(text) = std::str::from_utf8(raw)
        && let Ok(value) = serde_json::from_str::<Box<RawValue>>(text)
    {
        return value;
    }
    let text = String::from_utf8_lossy(raw);
    RawValue::from_string(serde_json::to_string(&text).expect("a string serialises"))
        .expect("a serialised string is JSON")
}

/// A new dead-letter id; time-ordered, so ordering by id is ordering by dead-letter time.
pub fn new_dead_letter_id() -> String {
    format!("dl_{}", uuid::Uuid::now_v7().simple())
}

/// The id of a dead letter made from a message that carries none (an unreadable message in
/// `P.dead`): derived from its bytes, so a copy delivered again after a lost ack is stored once.
/// Same shape as [`new_dead_letter_id`] (`dl_` and 32 hex digits), but not time-ordered: no
/// time in the message is reliable, and one taken at storing would differ between the copies.
/// Such a record sits at an arbitrary place in the newest-first list (still listed once, since
/// the cursor is the id; `since`/`until` use its `dead_lettered_at`), and it is never
/// replayable, so replay order does not matter for it.
pub fn raw_dead_letter_id(raw: &[u8]) -> String {
    format!("dl_{}", hex::encode(&Sha256::digest(raw)[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_payload_keeps_json_and_quotes_the_rest() {
        assert_eq!(raw_payload(br#"{"a":1.50}"#).get(), r#"{"a":1.50}"#);
        assert_eq!(raw_payload(b"not json").get(), r#""not json""#);
        assert_eq!(raw_payload(&[0xff, b'a']).get(), "\"\u{fffd}a\"");
    }

    #[test]
    fn oversized_payloads_are_cut_and_nul_is_replaced() {
        let big = vec![b'x'; MAX_KEPT_BYTES + 10];
        let (kept, cut) = kept_payload(&big);
        assert!(cut);
        assert_eq!(
            kept.get().len(),
            MAX_KEPT_BYTES + 2,
            "a JSON string of the first bytes"
        );
        assert!(!kept_payload(b"{}").1);

        let dead = DeadLetter {
            id: "dl_1".into(),
            event_id: "a\0b".into(),
            account_id: Some("acct\0".into()),
            subscription_id: None,
            url: None,
            event: Some("\0".into()),
            payload: raw_payload(b"x\0"),
            reason: "invalid_json".into(),
            detail: None,
            attempts: Vec::new(),
            dead_lettered_at: "t".into(),
        }
        .sanitized();
        assert_eq!(dead.event_id, "a\u{fffd}b");
        assert_eq!(dead.account_id.as_deref(), Some("acct\u{fffd}"));
        assert!(!dead.payload.get().contains('\0'));
    }

    #[test]
    fn raw_dead_letter_ids_follow_the_bytes() {
        let a = raw_dead_letter_id(b"not a dead letter");
        assert_eq!(a, raw_dead_letter_id(b"not a dead letter"));
        assert_ne!(a, raw_dead_letter_id(b"not a dead letter!"));
        assert_eq!(a.len(), new_dead_letter_id().len());
    }

    #[test]
    fn dead_letter_ids_sort_by_time() {
        let a = new_dead_letter_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_dead_letter_id();
        assert!(a < b, "{a} < {b}");
    }
}
