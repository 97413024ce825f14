#![no_main]
//! cargo-fuzz entry for `novacron_fuzz::split`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| novacron_fuzz::split(data));
