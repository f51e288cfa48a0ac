//! `event::parse` on valid and invalid envelopes.

use super::*;

const PURCHASE: &str = r#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"acct_acme","data":{"visitor_id":"v_abc123","amount":299.00}}"#;

#[test]
fn body_keeps_the_producers_bytes_and_drops_account_id() {
    let e = parse(PURCHASE.as_bytes(), None).unwrap();
    assert_eq!(e.kind, EventKind::Purchase);
    assert_eq!(e.account_id, "acct_acme");
    assert_eq!(
        e.body,
        r#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","data":{"visitor_id":"v_abc123","amount":299.00}}"#
    );
}

#[test]
fn id_comes_from_body_then_message_id_then_content() {
    let with_id = PURCHASE.replacen('{', r#"{"id":"evt_1","#, 1);
    assert_eq!(parse(with_id.as_bytes(), Some("m")).unwrap().id, "evt_1");
    assert_eq!(parse(PURCHASE.as_bytes(), Some("m-7")).unwrap().id, "m-7");
    // A message_id no receiver could use as webhook-id is replaced by the derived id.
    assert!(
        parse(PURCHASE.as_bytes(), Some("a\u{0}b"))
            .unwrap()
            .id
            .starts_with("evt_")
    );
    let a = parse(PURCHASE.as_bytes(), None).unwrap().id;
    assert_eq!(a, parse(PURCHASE.as_bytes(), None).unwrap().id);
    assert!(a.starts_with("evt_") && a.len() == 36);
}

#[test]
fn every_kind_of_bad_input_has_its_reason() {
    let cases: &[(&str, &str)] = &[
        ("not json", "invalid_json"),
        ("[1,2]", "invalid_json"),
        (
            r#"{"event":"refund","timestamp":"2026-02-12T14:30:00Z","account_id":"a","data":{"visitor_id":"v"}}"#,
            "unknown_event",
        ),
        (
            r#"{"timestamp":"2026-02-12T14:30:00Z","account_id":"a","data":{"visitor_id":"v"}}"#,
            "invalid_event",
        ),
        (
            r#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","data":{"visitor_id":"v"}}"#,
            "invalid_event",
        ),
        (
            r#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"","data":{"visitor_id":"v"}}"#,
            "invalid_event",
        ),
        (
            r#"{"event":"purchase","account_id":"a","data":{"visitor_id":"v"}}"#,
            "invalid_event",
        ),
        (
            r#"{"event":"purchase","timestamp":"yesterday","account_id":"a","data":{"visitor_id":"v"}}"#,
            "invalid_event",
        ),
        (
            r#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"a"}"#,
            "invalid_event",
        ),
        (
            r#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"a","data":[1]}"#,
            "invalid_event",
        ),
        (
            r#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"a","data":{"email":"x"}}"#,
            "invalid_event",
        ),
        (
            r#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"a","data":{"visitor_id":7}}"#,
            "invalid_event",
        ),
        (
            r#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":7,"data":{"visitor_id":"v"}}"#,
            "invalid_event",
        ),
    ];
    for (input, reason) in cases {
        let err = parse(input.as_bytes(), None).expect_err(input);
        assert_eq!(err.reason(), *reason, "{input}: {err}");
    }
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_EVENT_BYTES));
    assert_eq!(
        parse(big.as_bytes(), None).unwrap_err().reason(),
        "too_large"
    );
}

#[test]
fn ids_account_ids_and_deep_data_are_held_to_what_receivers_can_take() {
    let with =
        |field: &str, value: &str| PURCHASE.replacen('{', &format!("{{\"{field}\":{value},"), 1);
    let err = parse(with("id", "\"évt_1\"").as_bytes(), None).unwrap_err();
    assert_eq!(err.reason(), "invalid_event");
    assert!(err.to_string().contains("visible ASCII"), "{err}");
    // A non-ASCII message_id is not used: the id is derived from the bytes instead.
    assert!(
        parse(PURCHASE.as_bytes(), Some("évt"))
            .unwrap()
            .id
            .starts_with("evt_")
    );
    for account in [
        r#""acct\u202eemca""#,
        r#""\u00a0acct_acme""#,
        r#""acct_acme ""#,
    ] {
        let raw = PURCHASE.replace("\"acct_acme\"", account);
        let err = parse(raw.as_bytes(), None).unwrap_err();
        assert_eq!(err.reason(), "invalid_event", "{account}");
        assert!(err.to_string().contains("account_id"), "{err}");
    }
    let nested = |levels: usize| {
        let inner = format!("{}1{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
        PURCHASE.replace("\"amount\":299.00", &format!("\"deep\":{inner}"))
    };
    assert!(parse(nested(MAX_DATA_DEPTH).as_bytes(), None).is_ok());
    let err = parse(nested(MAX_DATA_DEPTH + 1).as_bytes(), None).unwrap_err();
    assert!(err.to_string().contains("nested"), "{err}");
    let err = parse(nested(100_000).as_bytes(), None).unwrap_err();
    assert_eq!(err.reason(), "invalid_event", "{err}");
    // Brackets inside strings are text, not nesting.
    let text = PURCHASE.replace("299.00", &format!("\"{}\"", "[{".repeat(100)));
    assert!(parse(text.as_bytes(), None).is_ok());
}

#[test]
fn rejected_fields_are_read_when_possible() {
    let f = rejected_fields(br#"{"event":"refund","account_id":"a"}"#);
    assert_eq!(f.event.as_deref(), Some("refund"));
    assert_eq!(f.account_id.as_deref(), Some("a"));
    assert_eq!(rejected_fields(b"nope"), RejectedFields::default());
}

#[test]
fn rejected_fields_are_bounded_and_name_only_a_valid_account() {
    let long = format!("{}z", "é".repeat(40));
    let raw = format!(
        r#"{{"event":"{long}","account_id":"{}"}}"#,
        "a".repeat(4096)
    );
    let f = rejected_fields(raw.as_bytes());
    assert_eq!(
        f.event,
        Some(format!("{}…", "é".repeat(32))),
        "cut at a character"
    );
    assert_eq!(f.account_id, None, "over 200 bytes: no account");
    let f = rejected_fields(br#"{"event":"re\u0000fund","account_id":" a"}"#);
    assert_eq!(f, RejectedFields::default());
    let fits = "y".repeat(MAX_REJECTED_EVENT);
    let raw = format!(r#"{{"event":"{fits}","account_id":"acc_1"}}"#);
    let f = rejected_fields(raw.as_bytes());
    assert_eq!(f.event.as_deref(), Some(fits.as_str()));
    assert_eq!(f.account_id.as_deref(), Some("acc_1"));
}

#[test]
fn an_unknown_event_is_quoted_whole_only_when_short() {
    let err = parse(
        PURCHASE.replace("\"purchase\"", "\"refund\"").as_bytes(),
        None,
    )
    .unwrap_err();
    assert_eq!(err, EventError::UnknownEvent("refund".into()));
    let long = "é".repeat(5000);
    let err = parse(
        PURCHASE
            .replace("\"purchase\"", &format!("\"{long}\""))
            .as_bytes(),
        None,
    )
    .unwrap_err();
    let EventError::UnknownEvent(quoted) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(quoted, &format!("{}… (10000 bytes)", "é".repeat(32)));
}
