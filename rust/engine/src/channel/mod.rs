//! The migration channel between two daemons: QEMU's stream in frames.
//!
//! [`StreamSender`] (source) takes the bytes the source QEMU writes, splits them
//! ([`crate::qemu_stream::StreamSplitter`]), sends RAM pages through the page
//! [`crate::Encoder`] in batches and everything else verbatim, and after every group of
//! frames a `CHECK` with the length and xxh3-128 of the stream so far; `END` closes it.
//! [`StreamReceiver`] (destination) turns the frames back into exactly those bytes and
//! releases them only when a `CHECK` (or `END`) vouches for them.
//!
//! Every frame is `type: u8`, `length: u32 BE`, `payload` (`docs/migration-wire.md`,
//! "channel frames"): `VERBATIM` (1), `PAGES` (2: `total_pages u64`, `count u32`, per
//! page `prefix_len u32`, prefix, `index u64`, then one engine batch), `RETURN` (3),
//! `END` (4: `length u64`, `xxh3-128` as 16 bytes big-endian), `ABORT` (5), `CHECK` (6,
//! as `END`), `START` (7: `total_pages u64`), `ANNOUNCE` (8: 16-byte page hashes),
//! `PACKED_PAGES` (10: `PAGES` with its per-page entries compressed: `total_pages u64`,
//! `count u32`, `head_len u32`, `packed_len u32`, the entries as zstd, then the batch).

mod receiver;
mod sender;
#[cfg(test)]
mod tests;

pub use receiver::StreamReceiver;
pub use sender::{SenderConfig, StreamSender};

use crate::error::{EngineError, Result};
use xxhash_rust::xxh3::Xxh3Default;

/// Bytes of QEMU's stream, as they are.
pub const VERBATIM: u8 = 1;
/// Pages with the verbatim bytes before each, and one engine batch.
pub const PAGES: u8 = 2;
/// QEMU's return path (destination to source).
pub const RETURN: u8 = 3;
/// The end: length and digest of the whole stream.
pub const END: u8 = 4;
/// The sender gave up (a UTF-8 reason).
pub const ABORT: u8 = 5;
/// Length and digest of the stream so far: what the receiver may release.
pub const CHECK: u8 = 6;
/// The guest's size in pages.
pub const START: u8 = 7;
/// The receiver's page-store hashes.
pub const ANNOUNCE: u8 = 8;
/// `PAGES` whose per-page entries (prefixes and indices) are zstd-compressed.
pub const PACKED_PAGES: u8 = 10;

/// Frame header: type and payload length.
pub const HEADER_LEN: usize = 5;
/// `END` / `CHECK` payload: length and digest.
pub const END_LEN: usize = 24;

/// Appends one frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    put_header(out, kind, payload.len());
    out.extend_from_slice(payload);
}

fn put_header(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    // a frame is at most a batch of pages with their prefixes: far below 4 GiB
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

/// The running digest of the stream (length and xxh3-128).
pub struct StreamDigest {
    hasher: Xxh3Default,
    /// Bytes digested.
    pub length: u64,
}

impl Default for StreamDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDigest {
    /// The digest of nothing.
    #[must_use]
    pub fn new() -> Self {
        Self {
            hasher: Xxh3Default::new(),
            length: 0,
        }
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.length += data.len() as u64;
    }

    /// The XXH3-128 of the bytes so far.
    #[must_use]
    pub fn value(&self) -> u128 {
        self.hasher.digest128()
    }

    /// An `END`/`CHECK` payload for the bytes so far.
    #[must_use]
    pub fn payload(&self) -> [u8; END_LEN] {
        let mut out = [0u8; END_LEN];
        out[..8].copy_from_slice(&self.length.to_be_bytes());
        out[8..].copy_from_slice(&self.value().to_be_bytes());
        out
    }
}

/// `(length, digest)` of an `END`/`CHECK` payload.
///
/// # Errors
/// [`EngineError::Channel`] when the payload is not 24 bytes.
pub fn parse_end(payload: &[u8]) -> Result<(u64, u128)> {
    if payload.len() != END_LEN {
        return Err(EngineError::channel("END/CHECK frame of the wrong size"));
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&payload[..8]);
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&payload[8..]);
    Ok((u64::from_be_bytes(length), u128::from_be_bytes(digest)))
}

/// The `total_pages` of a `START` payload.
///
/// # Errors
/// [`EngineError::Channel`] when the payload is not 8 bytes.
pub fn parse_start(payload: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = payload
        .try_into()
        .map_err(|_| EngineError::channel("START frame of the wrong size"))?;
    Ok(u64::from_be_bytes(bytes))
}
