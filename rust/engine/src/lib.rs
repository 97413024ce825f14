//! NovaCron page engine.
//!
//! Plain Rust with no Python types: the pyo3 crate (`rust/py`) is a thin layer on top.
//! * [`scan_pages`] / [`dirty_bitmap`]: zero detection with a word-wide OR-fold, xxh3-128
//!   page hashes, dirty bitmaps of whole images.
//! * [`Encoder`] / [`Decoder`]: the page stream (zero, unchanged, dup-ref, announced-ref, delta,
//!   delta-from, lz4, zstd, filtered and raw records in checksummed batches; `docs/migration-wire.md`).
//! * [`disk`]: a volume's extents for a storage copy (zero runs, zstd-1 data, xxh3-128).

#![deny(clippy::undocumented_unsafe_blocks)]

mod batch;
mod cache;
pub mod channel;
mod decoder;
mod delta;
pub mod disk;
mod encoder;
mod equal_bits;
mod error;
mod fasthash;
pub mod filter;
mod guest_copy;
mod holdings;
mod lz4_block;
mod mem;
mod page_slab;
pub mod qemu_stream;
mod resemblance;
mod scan;
mod store;
mod unpack;
mod varint;
pub mod wire;
mod workers;
mod xxh3;

pub use decoder::Decoder;
pub use encoder::{EncodeStats, Encoder, EncoderConfig, MAX_WIRE_PER_PAGE};
pub use error::{EngineError, Result};
pub use mem::{with_room, write_slice, Buffers, Shelf};
pub use scan::{dirty_bitmap, hash_page, is_zero_page, scan_pages, PageScan, HASH_LEN, PAGE_SIZE};
pub use store::{PageStore, Pinned};
pub use wire::Codec;
