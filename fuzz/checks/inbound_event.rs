//! `event::parse`, the inbound parser/validator, on arbitrary bytes.
//!
//! Input layout: `<raw message>[\0<AMQP message_id>]`. The message id is whatever follows the
//! last NUL byte (lossily decoded as UTF-8); with no NUL there is no message id. JSON never
//! contains a raw NUL, so the event fixtures are seeds as they are.
//!
//! Beyond "doesn't panic" it checks what the dispatcher relies on: an accepted event's body is
//! valid JSON of exactly `{"event","timestamp","data"}` and its id is usable as `webhook-id` and
//! the one the rules choose (the body's, else the message id, else derived from the bytes);
//! a rejection carries one of the four known reasons.
//!
//! [`check`] is shared: the fuzz target (`fuzz/fuzz_targets/inbound_event.rs`) runs it on
//! what libFuzzer makes, `cargo test` (`tests/it/fuzz_corpora.rs`) on every committed input in
//! `fuzz/corpus/inbound_event/`.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use webhook_dispatcher::event::{self, EventKind, MAX_EVENT_BYTES};

/// The outbound body, read strictly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    event: String,
    timestamp: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct DataHead {
    visitor_id: String,
}

/// The `id` field of an accepted envelope, as the producer wrote it (`None`: absent or null).
#[derive(Deserialize)]
struct IdField {
    #[serde(default)]
    id: Option<String>,
}

/// What a receiver can take as `webhook-id`: 1 to 200 visible ASCII characters.
fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Panics when `input` breaks one of the invariants above.
pub fn check(input: &[u8]) {
    let (raw, message_id) = match input.iter().rposition(|&b| b == 0) {
        Some(at) => (
            &input[..at],
            Some(String::from_utf8_lossy(&input[at + 1..]).into_owned()),
        ),
        None => (input, None),
    };
    let message_id = message_id.as_deref();

    match event::parse(raw, message_id) {
        Ok(ev) => {
            assert!(raw.len() <= MAX_EVENT_BYTES);
            // Only a JSON object is accepted.
            assert_eq!(raw.iter().find(|b| !b.is_ascii_whitespace()), Some(&b'{'));
            assert!(serde_json::from_slice::<IgnoredAny>(raw).is_ok());

            // The body: valid JSON, exactly the three fields, consistent with the event.
            assert!(
                serde_json::from_str::<IgnoredAny>(&ev.body).is_ok(),
                "body is not valid JSON: {}",
                ev.body
            );
            let body: Body<'_> = serde_json::from_str(&ev.body)
                .unwrap_or_else(|e| panic!("body has the wrong shape ({e}): {}", ev.body));
            assert_eq!(body.event, ev.kind.as_str());
            assert_eq!(EventKind::parse(&body.event), Some(ev.kind));
            assert!(
                chrono::DateTime::parse_from_rfc3339(&body.timestamp).is_ok(),
                "timestamp {:?}",
                body.timestamp
            );
            assert!(body.data.get().starts_with('{'));
            let head: DataHead = serde_json::from_str(body.data.get())
                .unwrap_or_else(|e| panic!("data.visitor_id ({e}): {}", ev.body));
            assert!(!head.visitor_id.trim().is_empty());
            // The account id stays out of the body (routing only) but must be there.
            assert!(!ev.account_id.trim().is_empty());

            // The id is usable as `webhook-id`, and comes from the body, the message id or
            // the bytes, in that order: the one the parser chose is the first that exists.
            assert!(usable_id(&ev.id), "unusable id {:?}", ev.id);
            let field: IdField = serde_json::from_slice(raw).expect("an accepted envelope reads");
            let chosen = match (&field.id, message_id.filter(|m| usable_id(m))) {
                (Some(id), _) => id.clone(),
                (None, Some(m)) => m.to_string(),
                (None, None) => event::derived_id(raw),
            };
            assert_eq!(ev.id, chosen, "the parser chose another id");
            let fallback = event::fallback_id(message_id, raw);
            if let Some(m) = message_id.filter(|m| usable_id(m)) {
                assert_eq!(fallback, m);
            } else {
                assert_eq!(fallback, event::derived_id(raw));
            }
            let derived = event::derived_id(raw);
            assert!(derived.len() == 36 && derived.starts_with("evt_"));

            // Deterministic: a redelivered copy gets the same id and body.
            let again = event::parse(raw, message_id).expect("accepted once, accepted again");
            assert_eq!((again.id, again.body), (ev.id, ev.body));
        }
        Err(err) => {
            let reason = err.reason();
            assert!(
                matches!(
                    reason,
                    "too_large" | "invalid_json" | "unknown_event" | "invalid_event"
                ),
                "unknown reason {reason}"
            );
            assert_eq!(reason == "too_large", raw.len() > MAX_EVENT_BYTES);
            // What the dispatcher does with a rejected message: log it and dead-letter it.
            let _ = err.to_string();
            let _ = event::rejected_fields(raw);
            let _ = event::fallback_id(message_id, raw);
        }
    }
}
