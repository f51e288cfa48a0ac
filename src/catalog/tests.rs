//! The catalogue against the service's own validation (`event::parse`) and the shipped fixtures,
//! with a real JSON Schema validator (formats asserted, not just annotated).

use serde_json::{Value, json};

use super::*;
use crate::event;

fn validator(kind: EventKind) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(get(kind).schema.get()).unwrap();
    jsonschema::meta::validate(&schema)
        .unwrap_or_else(|e| panic!("{kind}: not a valid draft 2020-12 schema: {e}"));
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{kind}: schema does not compile: {e}"))
}

fn errors(v: &jsonschema::Validator, body: &Value) -> Vec<String> {
    v.iter_errors(body).map(|e| e.to_string()).collect()
}

fn fixture(kind: EventKind) -> String {
    let path = format!(
        "{}/tests/fixtures/events/{kind}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_catalogue_lists_the_six_events_in_order_with_matching_schemas() {
    let names: Vec<_> = all().iter().map(|t| t.kind).collect();
    assert_eq!(names, EventKind::ALL);
    for t in all() {
        let schema: Value = serde_json::from_str(t.schema.get()).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["properties"]["event"]["const"], t.kind.as_str());
        assert!(!t.description.is_empty());
    }
}

#[test]
fn every_fixture_as_delivered_validates_against_its_schema() {
    for kind in EventKind::ALL {
        let raw = fixture(kind);
        // What a receiver gets is what `event::parse` builds from the producer's message.
        let delivered = event::parse(raw.as_bytes(), None).expect("fixture is a valid event");
        assert_eq!(delivered.kind, kind);
        let body: Value = serde_json::from_str(&delivered.body).unwrap();
        assert_eq!(
            errors(&validator(kind), &body),
            Vec::<String>::new(),
            "{kind}"
        );
    }
}

#[test]
fn every_example_passes_the_services_validation_and_its_schema() {
    for t in all() {
        let example: Value = serde_json::from_str(t.example.get()).unwrap();
        assert_eq!(errors(&validator(t.kind), &example), Vec::<String>::new());
        // As a producer would publish it: the example plus an account.
        let mut inbound = example.clone();
        inbound["account_id"] = json!("acct_example");
        let parsed = event::parse(inbound.to_string().as_bytes(), None)
            .unwrap_or_else(|e| panic!("{}: {e}", t.kind));
        assert_eq!(parsed.kind, t.kind);
        let body: Value = serde_json::from_str(&parsed.body).unwrap();
        assert_eq!(body, example);
    }
}

#[test]
fn a_sample_body_is_a_valid_event_with_the_examples_data_unchanged() {
    for t in all() {
        let body = sample_body(t.kind, "2026-11-27T16:00:00.123Z");
        assert!(body.contains(t.example_data.get()), "{body}");
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(errors(&validator(t.kind), &value), Vec::<String>::new());
        let inbound = body.replacen('{', r#"{"account_id":"a","#, 1);
        assert_eq!(event::parse(inbound.as_bytes(), None).unwrap().body, body);
    }
    // `299.00` is sent as written in the catalogue, not re-serialised as 299.0.
    assert!(sample_body(EventKind::Purchase, "2026-11-27T16:00:00Z").contains("299.00"));
}

#[test]
fn schemas_refuse_what_the_service_refuses_and_break_with_the_documented_shape() {
    let purchase = validator(EventKind::Purchase);
    let ts = "2026-02-12T14:30:00Z";
    let good = json!({"event":"purchase","timestamp":ts,"data":{"visitor_id":"v"}});
    assert!(purchase.is_valid(&good));
    // Bodies `event::parse` refuses too: the schema's required fields are the service's.
    let refused_by_both = [
        (
            "no visitor_id",
            json!({"event":"purchase","timestamp":ts,"data":{"email":"a@b.co"}}),
        ),
        (
            "blank visitor_id",
            json!({"event":"purchase","timestamp":ts,"data":{"visitor_id":"  "}}),
        ),
        (
            "numeric visitor_id",
            json!({"event":"purchase","timestamp":ts,"data":{"visitor_id":7}}),
        ),
        (
            "no timestamp",
            json!({"event":"purchase","data":{"visitor_id":"v"}}),
        ),
        (
            "timestamp not RFC 3339",
            json!({"event":"purchase","timestamp":"yesterday","data":{"visitor_id":"v"}}),
        ),
        (
            "data not an object",
            json!({"event":"purchase","timestamp":ts,"data":[1]}),
        ),
        ("no data", json!({"event":"purchase","timestamp":ts})),
    ];
    for (what, body) in refused_by_both {
        assert!(!purchase.is_valid(&body), "schema accepted {what}");
        let mut inbound = body;
        inbound["account_id"] = json!("a");
        let parsed = event::parse(inbound.to_string().as_bytes(), None);
        assert!(parsed.is_err(), "event::parse accepted {what}");
    }
    // Bodies no receiver of a purchase gets (another event, an account_id), or whose optional
    // fields break the documented types: the service delivers those unchanged (it checks only
    // visitor_id), so the schema is the product's contract, not the service's check.
    let refused_by_schema = [
        (
            "another event",
            json!({"event":"identify","timestamp":ts,"data":{"visitor_id":"v"}}),
        ),
        (
            "account_id",
            json!({"event":"purchase","timestamp":ts,"account_id":"a","data":{"visitor_id":"v"}}),
        ),
        (
            "amount as text",
            json!({"event":"purchase","timestamp":ts,"data":{"visitor_id":"v","amount":"299"}}),
        ),
    ];
    for (what, body) in refused_by_schema {
        assert!(!purchase.is_valid(&body), "schema accepted {what}");
    }
    let high_intent = validator(EventKind::HighIntentVisitor);
    let pages_as_text = json!({"event":"high_intent_visitor","timestamp":ts,
        "data":{"visitor_id":"v","engagement":{"pages_viewed":"3"}}});
    assert!(!high_intent.is_valid(&pages_as_text));
}

#[test]
fn test_deliveries_carry_compact_data_with_numbers_as_written() {
    for t in all() {
        let data = t.example_data.get();
        assert!(
            !data.contains('\n') && !data.contains(": "),
            "{}: {data}",
            t.kind
        );
        let example: Value = serde_json::from_str(t.example.get()).unwrap();
        let compacted: Value = serde_json::from_str(data).unwrap();
        assert_eq!(compacted, example["data"], "{}", t.kind);
    }
    assert_eq!(
        compact("{ \"a b\" : [ 299.00 , \"x \\\" y\" ] }"),
        "{\"a b\":[299.00,\"x \\\" y\"]}"
    );
    let purchase = sample_body(EventKind::Purchase, "2026-02-12T14:30:00Z");
    assert!(purchase.contains("\"amount\":299.00"), "{purchase}");
}
