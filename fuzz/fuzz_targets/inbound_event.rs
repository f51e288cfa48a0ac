//! libFuzzer's inputs through [`checks::check`] (`fuzz/checks/inbound_event.rs`, which says what
//! it checks; `cargo test` runs the same checks on the committed corpus).
#![no_main]

#[path = "../checks/inbound_event.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|input: &[u8]| checks::check(input));
