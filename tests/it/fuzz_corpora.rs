//! The fuzz targets' committed corpora (`fuzz/corpus/<target>/`), every input through the same
//! checks the fuzzers run (`fuzz/checks/<target>.rs`): the invariants hold on each input that
//! ever mattered, in the ordinary test build (no fuzzer, no second build of the dependencies).

use std::path::{Path, PathBuf};

use crate::support::files_in;

#[path = "../../fuzz/checks/admin_api_bodies.rs"]
mod admin_api_bodies;
#[path = "../../fuzz/checks/inbound_event.rs"]
mod inbound_event;

/// The committed inputs of one target, sorted by name.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files = files_in(&dir);
    files.sort();
    files
}

/// Runs `check` on every input of `target`'s corpus; fails naming each input that broke an
/// invariant (all of them, not only the first).
fn replay(target: &str, at_least: usize, check: fn(&[u8])) {
    let files = corpus(target);
    assert!(
        files.len() >= at_least,
        "fuzz/corpus/{target} holds {} inputs, expected at least {at_least}",
        files.len()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let input = std::fs::read(path).expect("a corpus input reads");
            std::panic::catch_unwind(|| check(&input)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "inputs breaking {target}'s checks: {failed:#?}"
    );
}

#[test]
fn every_committed_inbound_event_input_keeps_the_parsers_invariants() {
    replay("inbound_event", 37, inbound_event::check);
}

#[test]
fn every_committed_admin_api_body_keeps_the_validators_invariants() {
    replay("admin_api_bodies", 45, admin_api_bodies::check);
}
