//! Message framing: the properties and headers of every message the service publishes, and the
//! reading of headers on the messages it consumes. The one place that knows header names.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::seal::{DEAD_LETTER_KIND, KEY_HEADER, Keyring, MAC_HEADER};
use crate::wire::bundle::{
    DEAD_LETTER_BUNDLE, DEAD_LETTERS_HEADER, DeadLetterBundle, TASK_BUNDLE, TaskBundle,
};
use crate::wire::{DeadLetter, DeliveryTask, TASK_HEADER, TaskKind};

/// A delivery task as a message: its JSON, and properties with the task header saying why it
/// was published and the seal over both.
pub fn task_message(
    task: &DeliveryTask,
    kind: TaskKind,
    keys: &Keyring,
) -> (Vec<u8>, BasicProperties) {
    let body = serde_json::to_vec(task).expect("task serialises");
    let seal = keys.seal(kind.as_str(), &body);
    let headers = [
        (TASK_HEADER, kind.as_str()),
        (KEY_HEADER, seal.key_id.as_str()),
        (MAC_HEADER, seal.mac.as_str()),
    ];
    let props = json_props(Some(&task.event_id), &headers);
    (body, props)
}

/// Delivery tasks of `account_id` as one message ([`TaskBundle`]): the task header says
/// `bundle`, and the seal covers them all.
pub fn task_bundle_message(
    account_id: &str,
    tasks: Vec<&DeliveryTask>,
    keys: &Keyring,
) -> (Vec<u8>, BasicProperties) {
    let bundle = TaskBundle {
        account_id: account_id.to_string(),
        tasks,
    };
    let body = serde_json::to_vec(&bundle).expect("task bundle serialises");
    let seal = keys.seal(TASK_BUNDLE, &body);
    let headers = [
        (TASK_HEADER, TASK_BUNDLE),
        (KEY_HEADER, seal.key_id.as_str()),
        (MAC_HEADER, seal.mac.as_str()),
    ];
    (body, json_props(None, &headers))
}

/// A dead letter as a message: its JSON, sealed, so the DLQ logger can tell it from a forgery.
pub fn dead_letter_message(dead: &DeadLetter, keys: &Keyring) -> (Vec<u8>, BasicProperties) {
    let body = serde_json::to_vec(dead).expect("dead letter serialises");
    let seal = keys.seal(DEAD_LETTER_KIND, &body);
    let headers = [
        (KEY_HEADER, seal.key_id.as_str()),
        (MAC_HEADER, seal.mac.as_str()),
    ];
    let props = json_props(Some(&dead.id), &headers);
    (body, props)
}

/// Dead letters as one message ([`DeadLetterBundle`]), sealed, marked by its own header.
pub fn dead_letter_bundle_message(
    dead_letters: Vec<&DeadLetter>,
    keys: &Keyring,
) -> (Vec<u8>, BasicProperties) {
    let count = dead_letters.len().to_string();
    let body =
        serde_json::to_vec(&DeadLetterBundle { dead_letters }).expect("dead letters serialise");
    let seal = keys.seal(DEAD_LETTER_BUNDLE, &body);
    let headers = [
        (DEAD_LETTERS_HEADER, count.as_str()),
        (KEY_HEADER, seal.key_id.as_str()),
        (MAC_HEADER, seal.mac.as_str()),
    ];
    (body, json_props(None, &headers))
}

/// Persistent JSON message properties with the given message id (if any) and headers.
fn json_props(message_id: Option<&str>, headers: &[(&str, &str)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            (*k).into(),
            AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
        );
    }
    let mut props = BasicProperties::default().with_content_type("application/json".into());
    if let Some(Ok(id)) = message_id.map(lapin::types::ShortString::try_new) {
        props = props.with_message_id(id);
    }
    if !table.inner().is_empty() {
        props = props.with_headers(table);
    }
    props
}

/// The text of header `name`, when present: a string header as it is (lossy UTF-8), any other
/// type as its debug form (a header anyone can set may be of any type; it then fails whatever
/// check it is read for, rather than reading as absent).
pub(super) fn header_text(props: &BasicProperties, name: &str) -> Option<String> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        other => format!("{other:?}"),
    })
}

/// How RabbitMQ dead-lettered a message: the newest entry of its `x-death` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// `expired`, `delivery_limit`, `maxlen` or `rejected`.
    pub reason: String,
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// When (unix seconds), if the broker said.
    pub time: Option<u64>,
    /// Times it was dead-lettered from that queue for that reason.
    pub count: Option<i64>,
}

/// The newest dead-lettering recorded in `props` (RabbitMQ keeps `x-death` newest first); `None`
/// for a message the broker never dead-lettered. The header can be written by any publisher
/// too: what it says decides nothing that matters for trust.
pub(super) fn death(props: &BasicProperties) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = props.headers().as_ref()?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(newest) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |name: &str| match newest.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
        _ => None,
    };
    let count = match newest.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        Some(AMQPValue::LongInt(n)) => Some(i64::from(*n)),
        _ => None,
    };
    let time = match newest.inner().get("time") {
        Some(AMQPValue::Timestamp(t)) => Some(*t),
        _ => None,
    };
    Some(Death {
        reason: text("reason")?,
        queue: text("queue")?,
        time,
        count,
    })
}

/// The properties of an inbound event published like a producer would (the operator CLI's
/// `publish`): JSON, the event id as `message_id`.
pub fn event_props(event_id: &str) -> BasicProperties {
    json_props(Some(event_id), &[])
}
