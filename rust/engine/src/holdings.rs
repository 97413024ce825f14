//! What the receiver holds, tracked identically on both ends of a stream.
//!
//! For every page index: the xxh3-128 of the receiver's copy (if it has one), and a
//! content index from hash to one page index holding that content plus the number of
//! pages holding it. The sender uses it to choose `Unchanged` and `DupRef` and to drop
//! delta bases no page holds any more; the receiver uses the same updates to resolve
//! `DupRef`. Both sides apply exactly [`Holdings::wrote`] for every page the receiver
//! writes or is told is unchanged, so the two views never diverge.

use crate::error::{EngineError, Result};
use crate::fasthash::FastMap;

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
    present: Vec<bool>,
    by_hash: FastMap<u128, Content>,
}

impl Holdings {
    /// An empty view of a guest of `pages` pages (17 bytes a page, touched as pages
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
            present: crate::mem::try_zeroed(pages).ok_or_else(refused)?,
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
        self.present[index].then(|| self.hashes[index])
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
        self.wrote_logged(index, hash, None);
    }

    /// [`Holdings::wrote`], noting in `journal` how to take it back.
    pub fn wrote_logged(&mut self, index: usize, hash: u128, journal: Option<&mut Vec<Undo>>) {
        let old = self.hash_of(index);
        let mut undo = Undo {
            index,
            hash: self.hashes[index],
            present: self.present[index],
            entries: [None, None],
        };
        if let Some(old) = old.filter(|&old| old != hash) {
            let entry = self
                .by_hash
                .get_mut(&old)
                .expect("a held content is counted");
            undo.entries[0] = Some((old, Some(*entry)));
            entry.count -= 1;
            if entry.count == 0 {
                self.by_hash.remove(&old);
            } else if entry.holder == index as u64 {
                entry.holder = NO_HOLDER;
            }
        }
        let fresh = old != Some(hash);
        let entry = self.by_hash.entry(hash).or_insert(Content {
            holder: NO_HOLDER,
            count: 0,
        });
        let before = *entry;
        if fresh {
            entry.count += 1;
        }
        if entry.holder == NO_HOLDER {
            entry.holder = index as u64;
        }
        if *entry != before {
            undo.entries[1] = Some((hash, (before.count > 0).then_some(before)));
        }
        self.hashes[index] = hash;
        self.present[index] = true;
        if let Some(journal) = journal {
            journal.push(undo);
        }
    }

    /// Takes back the writes of `journal`, newest first.
    pub fn undo(&mut self, journal: Vec<Undo>) {
        for u in journal.into_iter().rev() {
            for (hash, entry) in u.entries.into_iter().rev().flatten() {
                match entry {
                    Some(entry) => self.by_hash.insert(hash, entry),
                    None => self.by_hash.remove(&hash),
                };
            }
            self.hashes[u.index] = u.hash;
            self.present[u.index] = u.present;
        }
    }
}

/// How to take back one [`Holdings::wrote_logged`]: the page's previous version and
/// the content entries it changed (old content, new content) as they were before.
#[derive(Debug, Clone, Copy)]
pub struct Undo {
    index: usize,
    hash: u128,
    present: bool,
    entries: [Option<(u128, Option<Content>)>; 2],
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
        fn counts_follow_writes_and_undo_restores(
            before in prop::collection::vec((0usize..8, 0u128..4), 0..24),
            logged in prop::collection::vec((0usize..8, 0u128..4), 0..24),
        ) {
            let mut h = Holdings::new(8).unwrap();
            for (i, hash) in before {
                h.wrote(i, hash);
                check(&h);
            }
            let saved = h.clone();
            let mut journal = Vec::new();
            for (i, hash) in logged {
                h.wrote_logged(i, hash, Some(&mut journal));
                check(&h);
            }
            h.undo(journal);
            prop_assert_eq!(&h.hashes, &saved.hashes);
            prop_assert_eq!(&h.present, &saved.present);
            prop_assert_eq!(&h.by_hash, &saved.by_hash);
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
