//! The page engine's fuzz targets: each takes any bytes and panics only when the
//! engine breaks a promise (a round trip that differs, a refused batch that changed
//! pages, a stream cut differently by its reads, a panic inside the engine).
//!
//! `cargo test` replays the inputs under `corpus/<target>/` (seeds and every crash
//! found so far); `rust/fuzz/libfuzzer` runs the same functions under cargo-fuzz
//! (the README's "Fuzzing the page engine").

mod channel;
mod decode;
mod input;
mod round_trip;
mod split;

pub use channel::channel;
pub use decode::decode;
pub use input::{noise, Input};
pub use round_trip::round_trip;
pub use split::split;

/// A target: any bytes in, a panic when the engine breaks a promise.
pub type Target = fn(&[u8]);

/// The targets by name, as `corpus/` and cargo-fuzz name them.
pub const TARGETS: [(&str, Target); 4] = [
    ("channel", channel),
    ("decode", decode),
    ("round_trip", round_trip),
    ("split", split),
];
