#![no_main]
//! cargo-fuzz entry for `novacron_fuzz::channel`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| novacron_fuzz::channel(data));
