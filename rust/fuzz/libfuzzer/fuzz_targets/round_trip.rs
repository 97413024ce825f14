#![no_main]
//! cargo-fuzz entry for `novacron_fuzz::round_trip`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| novacron_fuzz::round_trip(data));
