//! libFuzzer's inputs through [`checks::check`] (`fuzz/checks/admin_api_bodies.rs`, which says what
//! it checks; `cargo test` runs the same checks on the committed corpus).
#![no_main]

#[path = "../checks/admin_api_bodies.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| checks::check(bytes));
