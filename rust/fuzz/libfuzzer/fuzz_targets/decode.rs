#![no_main]
//! cargo-fuzz entry for `novacron_fuzz::decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| novacron_fuzz::decode(data));
