//! The inbound envelope producers publish: parsing, validation and the event id.
//!
//! The outbound body is built from the producer's own bytes (`data` is kept as raw JSON), so a
//! receiver gets exactly what was published — `299.00` stays `299.00`.

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::text::{check_account_id, check_event_id, is_format};

/// Largest inbound message accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Deepest nesting of `data` accepted (`data` itself is level 1). Receivers parse what we send:
/// .NET's JSON readers stop at 64 levels by default, Ruby's at 100, serde_json at 128, and the
/// body wraps `data` in one more object. 32 keeps every delivery well inside all of them and is
/// far beyond any real event (the catalogue's deepest is 2).
pub const MAX_DATA_DEPTH: usize = 32;

/// The six events the product emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Purchase,
    Identify,
    GoalAchieved,
    EnterpriseAlert,
    VisitorEnriched,
    HighIntentVisitor,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Purchase,
        EventKind::Identify,
        EventKind::GoalAchieved,
        EventKind::EnterpriseAlert,
        EventKind::VisitorEnriched,
        EventKind::HighIntentVisitor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Purchase => "purchase",
            EventKind::Identify => "identify",
            EventKind::GoalAchieved => "goal_achieved",
            EventKind::EnterpriseAlert => "enterprise_alert",
            EventKind::VisitorEnriched => "visitor_enriched",
            EventKind::HighIntentVisitor => "high_intent_visitor",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated inbound event, ready to be delivered.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: String,
    pub kind: EventKind,
    pub account_id: String,
    /// The outbound body, exactly `{"event":…,"timestamp":…,"data":…}`.
    pub body: String,
}

/// Why an inbound message was rejected. `reason()` is the stable label used in metrics and
/// the delivery log; the `Display` text says what exactly was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("message is {0} bytes, over the {MAX_EVENT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("message is not a JSON object: {0}")]
    InvalidJson(String),
    #[error(
        "unknown event {0:?}; expected one of purchase, identify, goal_achieved, enterprise_alert, visitor_enriched, high_intent_visitor"
    )]
    UnknownEvent(String),
    #[error("{0}")]
    InvalidEvent(String),
}

impl EventError {
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::TooLarge(_) => "too_large",
            EventError::InvalidJson(_) => "invalid_json",
            EventError::UnknownEvent(_) => "unknown_event",
            EventError::InvalidEvent(_) => "invalid_event",
        }
    }
}

/// What could be read from a rejected message, for its delivery-log record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RejectedFields {
    pub event: Option<String>,
    pub account_id: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    account_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DataHead {
    #[serde(default)]
    visitor_id: Option<serde_json::Value>,
}

/// Parses and validates one inbound message. `message_id` is the AMQP property, used as the
/// event id when the body has none.
pub fn parse(raw: &[u8], message_id: Option<&str>) -> Result<Event, EventError> {
    if raw.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge(raw.len()));
    }
    // serde would read a JSON array into the struct field by field: only an object will do.
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let detail = match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
            Ok(_) => "the top level must be an object".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(EventError::InvalidJson(detail));
    }
    let env: Envelope<'_> =
        serde_json::from_slice(raw).map_err(|e| EventError::InvalidJson(e.to_string()))?;

    let event_name = required_string(env.event, "event")?;
    let kind = EventKind::parse(&event_name).ok_or_else(|| unknown_event(event_name))?;
    let account_id = required_string(env.account_id, "account_id")?;
    check_account_id(&account_id).map_err(EventError::InvalidEvent)?;
    let timestamp_raw = env.timestamp.ok_or_else(|| missing("timestamp"))?;
    let timestamp: String = string_value(timestamp_raw, "timestamp")?;
    chrono::DateTime::parse_from_rfc3339(&timestamp).map_err(|e| {
        EventError::InvalidEvent(format!("timestamp {timestamp:?} is not RFC 3339: {e}"))
    })?;
    let data = env.data.ok_or_else(|| missing("data"))?;
    if !data.get().trim_start().starts_with('{') {
        return Err(EventError::InvalidEvent(
            "data must be a JSON object".into(),
        ));
    }
    if nested_deeper_than(data.get(), MAX_DATA_DEPTH) {
        return Err(EventError::InvalidEvent(format!(
            "data is nested more than {MAX_DATA_DEPTH} levels deep; receivers' JSON parsers \
             refuse such documents"
        )));
    }
    let head: DataHead = serde_json::from_str(data.get())
        .map_err(|e| EventError::InvalidEvent(format!("data: {e}")))?;
    match head.visitor_id {
        Some(serde_json::Value::String(v)) if !v.trim().is_empty() => {}
        Some(serde_json::Value::String(_)) => {
            return Err(EventError::InvalidEvent(
                "data.visitor_id must not be empty".into(),
            ));
        }
        Some(_) => {
            return Err(EventError::InvalidEvent(
                "data.visitor_id must be a string".into(),
            ));
        }
        None => return Err(missing("data.visitor_id")),
    }

    let id = match env.id {
        Some(raw_id) if raw_id.get() != "null" => {
            let id: String = string_value(raw_id, "id")?;
            check_event_id(&id).map_err(EventError::InvalidEvent)?;
            id
        }
        _ => fallback_id(message_id, raw),
    };

    // `timestamp_raw` is already valid JSON text for a string: reuse the producer's bytes.
    let body = format!(
        "{{\"event\":\"{}\",\"timestamp\":{},\"data\":{}}}",
        kind.as_str(),
        timestamp_raw.get(),
        data.get()
    );
    Ok(Event {
        id,
        kind,
        account_id,
        body,
    })
}

/// Most of an unknown event name a rejected message's record and its error keep.
pub const MAX_REJECTED_EVENT: usize = 64;

/// Best-effort extraction of `event` and `account_id` from a message that failed validation,
/// bounded: both are indexed columns of the delivery log (PostgreSQL refuses an index entry over
/// ~2.7 KB, and one refused record would hold up every dead letter after it); the raw message
/// keeps the rest. An `event` without control characters is kept, its first
/// [`MAX_REJECTED_EVENT`] bytes and `…` when longer; an `account_id` only when the account rules
/// accept it (anything else names no account).
pub fn rejected_fields(raw: &[u8]) -> RejectedFields {
    #[derive(Deserialize)]
    struct Loose {
        event: Option<String>,
        account_id: Option<String>,
    }
    match serde_json::from_slice::<Loose>(raw) {
        Ok(l) => RejectedFields {
            event: l
                .event
                .filter(|e| !e.chars().any(|c| c.is_control() || is_format(c)))
                .map(|e| cut_name(&e)),
            account_id: l.account_id.filter(|a| check_account_id(a).is_ok()),
        },
        Err(_) => RejectedFields::default(),
    }
}

/// `name`, or its first [`MAX_REJECTED_EVENT`] bytes and `…` when longer.
fn cut_name(name: &str) -> String {
    if name.len() <= MAX_REJECTED_EVENT {
        return name.to_string();
    }
    let mut end = MAX_REJECTED_EVENT;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// An unknown event's error, quoting the name cut as the record keeps it, and its length.
fn unknown_event(name: String) -> EventError {
    if name.len() <= MAX_REJECTED_EVENT {
        return EventError::UnknownEvent(name);
    }
    EventError::UnknownEvent(format!("{} ({} bytes)", cut_name(&name), name.len()))
}

/// The id of a message without an `id` field: its AMQP `message_id` when that is a usable id,
/// else one derived from its bytes.
pub fn fallback_id(message_id: Option<&str>, raw: &[u8]) -> String {
    match message_id.filter(|m| check_event_id(m).is_ok()) {
        Some(m) => m.to_string(),
        None => derived_id(raw),
    }
}

/// The id of a message with neither an `id` field nor an AMQP `message_id`: derived from its
/// bytes, so a redelivered copy keeps the same id.
pub fn derived_id(raw: &[u8]) -> String {
    let digest = Sha256::digest(raw);
    format!("evt_{}", hex::encode(&digest[..16]))
}

fn missing(field: &str) -> EventError {
    EventError::InvalidEvent(format!("missing required field {field}"))
}

fn required_string(raw: Option<&RawValue>, field: &str) -> Result<String, EventError> {
    let value = string_value(raw.ok_or_else(|| missing(field))?, field)?;
    if value.trim().is_empty() {
        return Err(EventError::InvalidEvent(format!(
            "{field} must not be empty"
        )));
    }
    Ok(value)
}

fn string_value(raw: &RawValue, field: &str) -> Result<String, EventError> {
    serde_json::from_str::<String>(raw.get())
        .map_err(|_| EventError::InvalidEvent(format!("{field} must be a string")))
}

/// Whether the JSON text `json` nests arrays and objects more than `limit` levels deep. One pass
/// over the bytes, with no recursion, so a hostile depth costs nothing but the scan.
fn nested_deeper_than(json: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json.as_bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests;
