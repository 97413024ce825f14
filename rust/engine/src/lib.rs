//! NovaCron page engine.
//!
//! Plain Rust with no Python types: the pyo3 crate (`rust/py`) is a thin layer on top.
//! This crate currently provides the page scan that every later stage builds on:
//! zero-page detection with a word-wide OR-fold, a 128-bit content hash (xxh3-128)
//! per page, and the dirty-page bitmap of a whole image against earlier hashes.

#![deny(clippy::undocumented_unsafe_blocks)]

mod error;
mod scan;

pub use error::{EngineError, Result};
pub use scan::{dirty_bitmap, hash_page, is_zero_page, scan_pages, PageScan, HASH_LEN, PAGE_SIZE};
