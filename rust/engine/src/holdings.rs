//! What the receiver holds, tracked identically on both ends of a stream.
//!
//! For every page index: the xxh3-128 of the receiver's copy (if it has one), and a
//! content index from hash to one page index holding that content. The sender uses
//! it to choose `Unchanged` and `DupRef`; the receiver uses the same updates to
//! resolve `DupRef`. Both sides apply exactly [`Holdings::wrote`] for every page the
//! receiver writes, so the two views never diverge.

use std::collections::HashMap;

/// Per-VM record of the receiver's page versions.
#[derive(Debug, Clone)]
pub struct Holdings {
    hashes: Vec<u128>,
    present: Vec<bool>,
    by_hash: HashMap<u128, u64>,
}

impl Holdings {
    /// An empty view of a guest of `pages` pages.
    #[must_use]
    pub fn new(pages: usize) -> Self {
        Self {
            hashes: vec![0; pages],
            present: vec![false; pages],
            by_hash: HashMap::new(),
        }
    }

    /// Number of pages of the guest.
    #[must_use]
    pub fn pages(&self) -> usize {
        self.hashes.len()
    }

    /// The hash of the receiver's copy of `index`, if it has one.
    #[must_use]
    pub fn hash_of(&self, index: usize) -> Option<u128> {
        self.present[index].then(|| self.hashes[index])
    }

    /// A page index whose content has `hash`, if the receiver holds one.
    #[must_use]
    pub fn holder_of(&self, hash: u128) -> Option<u64> {
        self.by_hash.get(&hash).copied()
    }

    /// Records that the receiver's page `index` now has content `hash`.
    pub fn wrote(&mut self, index: usize, hash: u128) {
        if self.present[index] {
            let old = self.hashes[index];
            if old != hash && self.by_hash.get(&old) == Some(&(index as u64)) {
                self.by_hash.remove(&old);
            }
        }
        self.hashes[index] = hash;
        self.present[index] = true;
        self.by_hash.entry(hash).or_insert(index as u64);
    }
}
