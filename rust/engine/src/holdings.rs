//! What the receiver holds, tracked identically on both ends of a stream.
//!
//! For every page index: the xxh3-128 of the receiver's copy (if it has one), and a
//! content index from hash to one page index holding that content. The sender uses
//! it to choose `Unchanged` and `DupRef`; the receiver uses the same updates to
//! resolve `DupRef`. Both sides apply exactly [`Holdings::wrote`] for every page the
//! receiver writes or is told is unchanged, so the two views never diverge.

use crate::fasthash::FastMap;

/// Per-VM record of the receiver's page versions.
#[derive(Debug, Clone)]
pub struct Holdings {
    hashes: Vec<u128>,
    present: Vec<bool>,
    by_hash: FastMap<u128, u64>,
}

impl Holdings {
    /// An empty view of a guest of `pages` pages.
    #[must_use]
    pub fn new(pages: usize) -> Self {
        Self {
            hashes: vec![0; pages],
            present: vec![false; pages],
            by_hash: FastMap::default(),
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
        self.wrote_logged(index, hash, None);
    }

    /// [`Holdings::wrote`], noting in `journal` how to take it back.
    pub fn wrote_logged(&mut self, index: usize, hash: u128, journal: Option<&mut Vec<Undo>>) {
        let mut undo = Undo {
            index,
            hash: self.hashes[index],
            present: self.present[index],
            removed: None,
            inserted: None,
        };
        if self.present[index] {
            let old = self.hashes[index];
            if old != hash && self.by_hash.get(&old) == Some(&(index as u64)) {
                self.by_hash.remove(&old);
                undo.removed = Some(old);
            }
        }
        self.hashes[index] = hash;
        self.present[index] = true;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.by_hash.entry(hash) {
            slot.insert(index as u64);
            undo.inserted = Some(hash);
        }
        if let Some(journal) = journal {
            journal.push(undo);
        }
    }

    /// Takes back the writes of `journal`, newest first.
    pub fn undo(&mut self, journal: Vec<Undo>) {
        for u in journal.into_iter().rev() {
            if let Some(h) = u.inserted {
                self.by_hash.remove(&h);
            }
            if let Some(h) = u.removed {
                self.by_hash.insert(h, u.index as u64);
            }
            self.hashes[u.index] = u.hash;
            self.present[u.index] = u.present;
        }
    }
}

/// How to take back one [`Holdings::wrote_logged`].
#[derive(Debug, Clone, Copy)]
pub struct Undo {
    index: usize,
    hash: u128,
    present: bool,
    removed: Option<u128>,
    inserted: Option<u128>,
}
