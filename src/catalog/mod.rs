//! The event-type catalogue: for each of the six events, a description, the JSON Schema (draft
//! 2020-12) of the body receivers get, and an example. One file per event under `schemas/`,
//! compiled in (the image ships `src/` only); the example is the schema's own `examples[0]`, so
//! the two cannot drift apart.
//!
//! Schemas and examples are kept as the files' raw text: served as written, in their key order,
//! with `299.00` staying `299.00`.

use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::EventKind;

/// One event type as the catalogue describes it.
#[derive(Debug)]
pub struct EventType {
    pub kind: EventKind,
    /// What happened, in the customer doc's words.
    pub description: &'static str,
    /// The JSON Schema of the whole outbound body `{"event","timestamp","data"}`.
    pub schema: &'static RawValue,
    /// An outbound body of this type, valid against `schema`.
    pub example: &'static RawValue,
    /// The example's `data`, compact like a producer's (numbers as written): what a test
    /// delivery sends.
    pub example_data: Box<RawValue>,
}

const SCHEMAS: [(EventKind, &str, &str); 6] = [
    (
        EventKind::Purchase,
        "a conversion or payment was tracked",
        include_str!("schemas/purchase.json"),
    ),
    (
        EventKind::Identify,
        "a visitor was identified with email/name",
        include_str!("schemas/identify.json"),
    ),
    (
        EventKind::GoalAchieved,
        "a custom goal was completed",
        include_str!("schemas/goal_achieved.json"),
    ),
    (
        EventKind::EnterpriseAlert,
        "AI detected an enterprise buyer",
        include_str!("schemas/enterprise_alert.json"),
    ),
    (
        EventKind::VisitorEnriched,
        "IP enrichment identified a company for a visitor for the first time",
        include_str!("schemas/visitor_enriched.json"),
    ),
    (
        EventKind::HighIntentVisitor,
        "visitor's behavioral intent score crossed the threshold (≥70)",
        include_str!("schemas/high_intent_visitor.json"),
    ),
];

static CATALOG: LazyLock<Vec<EventType>> = LazyLock::new(|| {
    SCHEMAS
        .iter()
        .map(|&(kind, description, text)| load(kind, description, text))
        .collect()
});

#[derive(Deserialize)]
struct SchemaFile<'a> {
    #[serde(borrow)]
    examples: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct ExampleBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Reads one compiled-in schema file. The files are part of the source and checked by the unit
/// tests below, so a broken one is a build defect, not a runtime condition.
fn load(kind: EventKind, description: &'static str, text: &'static str) -> EventType {
    let schema: &'static RawValue = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("catalog schema for {kind} is not JSON: {e}"));
    let file: SchemaFile<'static> = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("catalog schema for {kind} has no examples: {e}"));
    let example = *file
        .examples
        .first()
        .unwrap_or_else(|| panic!("catalog schema for {kind} has an empty examples list"));
    let body: ExampleBody<'static> = serde_json::from_str(example.get())
        .unwrap_or_else(|e| panic!("catalog example for {kind} has no data: {e}"));
    EventType {
        kind,
        description,
        schema,
        example,
        example_data: RawValue::from_string(compact(body.data.get()))
            .unwrap_or_else(|e| panic!("catalog example data for {kind}: {e}")),
    }
}

/// `json` without the whitespace between tokens; strings (and number spellings) unchanged.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !c.is_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// Every event type, in the contract's order.
pub fn all() -> &'static [EventType] {
    &CATALOG
}

/// The catalogue entry of `kind`.
pub fn get(kind: EventKind) -> &'static EventType {
    all()
        .iter()
        .find(|t| t.kind == kind)
        .expect("the catalogue lists every event kind")
}

/// An outbound body of type `kind` with the example's data and `timestamp`: what a test
/// delivery sends, built the way `event::parse` builds a real one (the data's bytes unchanged).
pub fn sample_body(kind: EventKind, timestamp: &str) -> String {
    let timestamp = serde_json::to_string(timestamp).expect("a string serialises");
    format!(
        "{{\"event\":\"{}\",\"timestamp\":{timestamp},\"data\":{}}}",
        kind.as_str(),
        get(kind).example_data.get()
    )
}

#[cfg(test)]
mod tests;
