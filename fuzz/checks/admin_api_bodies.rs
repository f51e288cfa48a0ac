//! The admin API's create and PATCH bodies (`api::parse_create_body`, `api::parse_patch_body`):
//! JSON, then validation, without the HTTP around it. Every input goes through both.
//!
//! Beyond "doesn't panic": a failure is a 400 or a 422, never anything else; what is accepted
//! is what the validators allow and survives the store's round trip (the URL is stored as text
//! and re-parsed on every load, the events as their names).
//!
//! [`check`] is shared: the fuzz target (`fuzz/fuzz_targets/admin_api_bodies.rs`) runs it on
//! what libFuzzer makes, `cargo test` (`tests/it/fuzz_corpora.rs`) on every committed input in
//! `fuzz/corpus/admin_api_bodies/`.

use serde::de::IgnoredAny;
use webhook_dispatcher::api::{ApiError, parse_create_body, parse_patch_body};
use webhook_dispatcher::subscriptions::{
    EventSet, validate_account, validate_description, validate_url,
};

fn valid_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| serde_json::from_str::<IgnoredAny>(s).is_ok())
}

fn check_error(err: &ApiError) {
    assert!(
        matches!(err, ApiError::BadRequest(_) | ApiError::Unprocessable(_)),
        "unexpected error kind: {err:?}"
    );
    let _ = err.to_string();
}

fn check_url(url: &url::Url) {
    assert!(matches!(url.scheme(), "http" | "https"));
    assert!(url.host_str().is_some_and(|h| !h.is_empty()));
    assert!(url.username().is_empty() && url.password().is_none());
    assert!(url.fragment().is_none());
    // The store keeps `url.as_str()` and re-parses it on every load: a URL that does not come
    // back identical (or at all) would turn the subscription into a corrupt row.
    let reparsed = url::Url::parse(url.as_str())
        .unwrap_or_else(|e| panic!("stored url {:?} does not parse back: {e}", url.as_str()));
    assert_eq!(&reparsed, url);
    assert_eq!(reparsed.as_str(), url.as_str());
    // Its serialisation passes validation again (the length limit applies to this stored,
    // normalised form too).
    assert!(url.as_str().len() <= 2048, "stored url over the limit");
    if let Err(e) = validate_url(url.as_str()) {
        panic!("stored url {:?} fails validation: {e}", url.as_str());
    }
}

fn check_events(events: EventSet) {
    let names = events.names();
    assert!(!names.is_empty());
    assert_eq!(EventSet::parse(&names), Ok(events));
}

fn check_description(d: &Option<String>) {
    if let Some(d) = d {
        assert!(validate_description(d).is_ok());
    }
}

/// Panics when `bytes` breaks one of the invariants above.
pub fn check(bytes: &[u8]) {
    let json = valid_json(bytes);

    match parse_create_body(bytes) {
        Ok(new) => {
            assert!(json, "accepted a create body that is not JSON");
            assert!(validate_account(&new.account_id).is_ok());
            check_url(&new.url);
            check_events(new.events);
            check_description(&new.description);
        }
        Err(err) => check_error(&err),
    }

    match parse_patch_body(bytes) {
        Ok(patch) => {
            assert!(json, "accepted a PATCH body that is not JSON");
            assert!(
                patch.url.is_some()
                    || patch.events.is_some()
                    || patch.enabled.is_some()
                    || patch.description.is_some(),
                "accepted an empty PATCH"
            );
            if let Some(url) = &patch.url {
                check_url(url);
            }
            if let Some(events) = patch.events {
                check_events(events);
            }
            if let Some(d) = &patch.description {
                check_description(d);
            }
        }
        Err(err) => check_error(&err),
    }
}
