//! Messages the service itself puts on the broker: delivery tasks (retries and replays, on the
//! delay queues and back on `P.events`) and dead letters (on `P.dead`). Producers never see these.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use sha2::{Digest, Sha256};

use crate::delivery::AttemptRecord;
use crate::event::EventKind;
use crate::time::now_rfc3339;

/// AMQP header that marks a message on `P.events` as a [`DeliveryTask`] rather than an inbound
/// event; its value is the [`TaskKind`]. A message that carries it is a task only if its seal
/// verifies ([`crate::seal`]): anyone can set a header.
pub const TASK_HEADER: &str = "x-webhook-task";

/// Why a delivery task was published; the [`TASK_HEADER`] value, and part of what its seal covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// A failed attempt's retry.
    Delivery,
    /// Put off, no attempt spent: its endpoint was at its in-flight limit.
    Deferred,
    /// A delivery-log record sent again.
    Replay,
    /// A test event an operator asked for.
    Test,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Delivery => "delivery",
            TaskKind::Deferred => "deferred",
            TaskKind::Replay => "replay",
            TaskKind::Test => "test",
        }
    }
}

/// One (event, subscription) delivery still to be attempted. The signing secret and URL are
/// not carried: they are looked up when the attempt is made, so a fixed URL or a rotated secret
/// applies to pending retries too, and no secret ever sits in a queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryTask {
    pub event_id: String,
    pub account_id: String,
    pub subscription_id: String,
    pub event: String,
    /// The exact outbound body.
    pub body: String,
    /// Earlier attempts, oldest first; the next attempt's number is `attempts.len() + 1`.
    pub attempts: Vec<AttemptRecord>,
    /// Times the next attempt was put off because its endpoint was at its in-flight limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferrals: u32,
}

impl DeliveryTask {
    /// A task whose next attempt is the first (replays, test events).
    pub fn first_attempt(
        event_id: &str,
        account_id: &str,
        subscription_id: &str,
        event: &str,
        body: String,
    ) -> DeliveryTask {
        DeliveryTask {
            event_id: event_id.to_string(),
            account_id: account_id.to_string(),
            subscription_id: subscription_id.to_string(),
            event: event.to_string(),
            body,
            attempts: Vec::new(),
            deferrals: 0,
        }
    }
}

impl DeliveryTask {
    /// Reads a task whose seal verified. Its content is the service's own, so a failure here is
    /// a bug or a task from an incompatible version; still, nothing is taken on trust that
    /// would be dangerous if it were wrong: the event must be one of the six, the id one a
    /// receiver can use, the attempts no more than any configuration makes.
    pub fn read(data: &[u8]) -> Result<DeliveryTask, String> {
        let task: DeliveryTask =
            serde_json::from_slice(data).map_err(|e| format!("unreadable delivery task: {e}"))?;
        if EventKind::parse(&task.event).is_none() {
            return Err(format!("delivery task for unknown event {:?}", task.event));
        }
        crate::text::check_event_id(&task.event_id).map_err(|e| format!("delivery task: {e}"))?;
        if task.attempts.len() > MAX_TASK_ATTEMPTS {
            return Err(format!(
                "delivery task with {} attempts (at most {MAX_TASK_ATTEMPTS})",
                task.attempts.len()
            ));
        }
        Ok(task)
    }
}

/// Most attempts a task may list: one more than the most retry delays a configuration allows.
const MAX_TASK_ATTEMPTS: usize = 21;

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    /// A dead letter for a message that never became a delivery (rejected inbound event,
    /// unreadable task, foreign message in `P.dead`): the raw bytes are kept — cut to
    /// [`MAX_KEPT_BYTES`], with the full size and SHA-256 added to `detail` when cut.
    pub fn for_raw(raw: &[u8], event_id: String, reason: &str, detail: String) -> DeadLetter {
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
            reason: reason.to_string(),
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
