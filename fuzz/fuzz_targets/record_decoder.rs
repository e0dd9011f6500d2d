//! libFuzzer entry point of the record-decoder target (see `../targets.rs`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::record_decoder(data));
