//! What the receiver holds, as the sender tracks it.
//!
//! For every page index: the xxh3-128 of the receiver's copy (if it has one), and a
//! content index from hash to one page index holding that content plus the number of
//! pages holding it. The sender uses it to choose `Unchanged` and `DupRef` and to drop
//! delta bases no page holds any more. The receiver counts the holders of each content
//! the same way beside the content itself ([`GuestCopy`](crate::guest_copy::GuestCopy)),
//! which resolves a `DupRef` by any holder: the sender applies [`Holdings::wrote`] for
//! every page the receiver writes or is told is unchanged, so the two views never
//! diverge.

use crate::error::{EngineError, Result};
use crate::fasthash::FastMap;
use crate::mem::PageBits;

/// No registered holder (the registered one was overwritten; others may hold it).
const NO_HOLDER: u64 = u64::MAX;

/// One content's entry: a page index holding it (or [`NO_HOLDER`]) and how many do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Content {
    holder: u64,
    count: u64,
}

/// Per-VM record of the receiver's page versions.
#[derive(Debug, Clone)]
pub struct Holdings {
    hashes: Vec<u128>,
    present: PageBits,
    by_hash: FastMap<u128, Content>,
}

impl Holdings {
    /// An empty view of a guest of `pages` pages (16 bytes and a bit a page, touched as pages
    /// are written).
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] when the system refuses the memory.
    pub fn new(pages: usize) -> Result<Self> {
        let refused = || {
            EngineError::invalid(format!(
                "no memory for the state of a guest of {pages} pages"
            ))
        };
        Ok(Self {
            hashes: crate::mem::try_zeroed(pages).ok_or_else(refused)?,
            present: PageBits::try_new(pages).ok_or_else(refused)?,
            by_hash: FastMap::default(),
        })
    }

    /// Number of pages of the guest.
    #[must_use]
    pub fn pages(&self) -> usize {
        self.hashes.len()
    }

    /// The hash of the receiver's copy of `index`, if it has one.
    #[must_use]
    pub fn hash_of(&self, index: usize) -> Option<u128> {
        self.present.get(index).then(|| self.hashes[index])
    }

    /// The registered page index whose content has `hash`, if there is one. A content
    /// is registered to the first page written with it while no page was registered;
    /// when that page is overwritten the content has no registered holder until the
    /// next write of it (other pages may still hold it: see [`Holdings::holders`]).
    #[must_use]
    pub fn holder_of(&self, hash: u128) -> Option<u64> {
        self.by_hash
            .get(&hash)
            .map(|c| c.holder)
            .filter(|&h| h != NO_HOLDER)
    }

    /// How many pages the receiver holds with content `hash`.
    #[must_use]
    pub fn holders(&self, hash: u128) -> u64 {
        self.by_hash.get(&hash).map_or(0, |c| c.count)
    }

    /// Records that the receiver's page `index` now has content `hash`.
    pub fn wrote(&mut self, index: usize, hash: u128) {
        let old = self.hash_of(index);
        if let Some(old) = old.filter(|&old| old != hash) {
            let entry = self
                .by_hash
                .get_mut(&old)
                .expect("a held content is counted");
            entry.count -= 1;
            if entry.count == 0 {
                self.by_hash.remove(&old);
            } else if entry.holder == index as u64 {
                entry.holder = NO_HOLDER;
            }
        }
        let entry = self.by_hash.entry(hash).or_insert(Content {
            holder: NO_HOLDER,
            count: 0,
        });
        if old != Some(hash) {
            entry.count += 1;
        }
        if entry.holder == NO_HOLDER {
            entry.holder = index as u64;
        }
        self.hashes[index] = hash;
        self.present.set(index, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every count and registration agrees with a plain scan of the page versions.
    fn check(h: &Holdings) {
        for (&hash, entry) in &h.by_hash {
            let holding: Vec<usize> = (0..h.pages())
                .filter(|&i| h.hash_of(i) == Some(hash))
                .collect();
            assert_eq!(entry.count, holding.len() as u64, "count of {hash}");
            if entry.holder != NO_HOLDER {
                assert!(holding.contains(&(entry.holder as usize)));
            }
        }
        for i in 0..h.pages() {
            if let Some(hash) = h.hash_of(i) {
                assert!(h.holders(hash) > 0);
            }
        }
    }

    proptest! {
        #[test]
        fn counts_and_registrations_follow_writes(
            writes in prop::collection::vec((0usize..8, 0u128..4), 0..48),
        ) {
            let mut h = Holdings::new(8).unwrap();
            for (i, hash) in writes {
                h.wrote(i, hash);
                check(&h);
                prop_assert_eq!(h.hash_of(i), Some(hash));
            }
        }
    }

    #[test]
    fn an_overwritten_holder_is_not_named_while_others_still_count() {
        let mut h = Holdings::new(4).unwrap();
        h.wrote(0, 7);
        h.wrote(1, 7);
        assert_eq!((h.holder_of(7), h.holders(7)), (Some(0), 2));
        h.wrote(0, 9);
        assert_eq!((h.holder_of(7), h.holders(7)), (None, 1));
        h.wrote(2, 7); // the next write of it registers it again
        assert_eq!((h.holder_of(7), h.holders(7)), (Some(2), 2));
        h.wrote(1, 9);
        h.wrote(2, 9);
        assert_eq!((h.holder_of(7), h.holders(7)), (None, 0));
        assert_eq!(h.holders(9), 3);
    }
}
