//! Resemblance: which of the contents a batch replaces a new page is a small delta of.
//!
//! In a running guest much of what changes between rounds is not new: the kernel
//! rebuilds a page table for the next process of the same binary, moves an object to
//! another page, recycles a page for the same kind of object. The page's own previous
//! version is then no good base, but the version another page held a moment ago is.
//! Each candidate content is summed up by fingerprints of a few 32-byte windows at
//! fixed offsets (all-zero windows say nothing and are skipped); a new page's
//! candidates are the contents sharing most fingerprints with it.

use crate::fasthash::FastMap;
use crate::PAGE_SIZE;

/// Windows per page, evenly spaced.
const WINDOWS: usize = 8;
/// Candidates kept per fingerprint (the first ones added).
const PER_KEY: usize = 2;
/// Candidates offered per page.
pub(crate) const OFFERED: usize = 2;
const EMPTY: u32 = u32::MAX;

/// The fingerprints of `page`, one per window that is not all zero: its four words
/// folded together with the window's number.
fn fingerprints(page: &[u8]) -> impl Iterator<Item = u64> + '_ {
    (0..WINDOWS).filter_map(move |w| {
        let at = w * (PAGE_SIZE / WINDOWS);
        let word = |k: usize| {
            u64::from_le_bytes(
                page[at + 8 * k..at + 8 * k + 8]
                    .try_into()
                    .expect("8 bytes"),
            )
        };
        let (a, b, c, d) = (word(0), word(1), word(2), word(3));
        if a | b | c | d == 0 {
            return None;
        }
        let folded = a ^ b.rotate_left(17) ^ c.rotate_left(31) ^ d.rotate_left(47);
        Some((folded ^ w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    })
}

/// Candidate bases: a page index and the hash of the content it held.
#[derive(Default)]
pub(crate) struct Resemblance {
    bases: Vec<(u64, u128)>,
    by_key: FastMap<u64, [u32; PER_KEY]>,
}

impl Resemblance {
    /// True when no base was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.bases.is_empty()
    }

    /// Adds `content` (held by page `index`, hash `hash`) as a candidate base.
    pub(crate) fn add(&mut self, index: u64, hash: u128, content: &[u8]) {
        let Ok(at) = u32::try_from(self.bases.len()) else {
            return;
        };
        if self.bases.is_empty() {
            self.by_key.reserve(64 * WINDOWS);
        }
        let mut added = false;
        for key in fingerprints(content) {
            let slots = self.by_key.entry(key).or_insert([EMPTY; PER_KEY]);
            if let Some(slot) = slots.iter_mut().find(|s| **s == EMPTY) {
                *slot = at;
                added = true;
            }
        }
        if added {
            self.bases.push((index, hash));
        }
    }

    /// The bases sharing most fingerprints with `page`, best first (ties: the one
    /// added first), at most [`OFFERED`].
    pub(crate) fn candidates(&self, page: &[u8]) -> Vec<(u64, u128)> {
        let mut votes: Vec<(u32, u32)> = Vec::with_capacity(WINDOWS * PER_KEY);
        for key in fingerprints(page) {
            let Some(slots) = self.by_key.get(&key) else {
                continue;
            };
            for &at in slots.iter().filter(|&&s| s != EMPTY) {
                match votes.iter_mut().find(|(b, _)| *b == at) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((at, 1)),
                }
            }
        }
        votes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        votes
            .iter()
            .take(OFFERED)
            .map(|&(at, _)| self.bases[at as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u8) -> Vec<u8> {
        (0..PAGE_SIZE)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_modified_copy_finds_its_original_first() {
        let mut index = Resemblance::default();
        let (a, b) = (page(3), page(5));
        index.add(10, 1, &a);
        index.add(20, 2, &b);
        let mut changed = b.clone();
        changed[10] ^= 0xff; // window 0 differs, windows 1-3 do not
        assert_eq!(index.candidates(&changed)[0], (20, 2));
        assert_eq!(index.candidates(&a), vec![(10, 1)]);
    }

    #[test]
    fn zero_windows_and_unrelated_pages_find_nothing() {
        let mut index = Resemblance::default();
        index.add(1, 1, &[0u8; PAGE_SIZE]);
        assert!(index.is_empty(), "a zero page has no fingerprint");
        index.add(2, 2, &page(7));
        assert!(index.candidates(&[0u8; PAGE_SIZE]).is_empty());
        assert!(index.candidates(&page(9)).is_empty());
    }

    #[test]
    fn at_most_the_offered_number_best_first() {
        let mut index = Resemblance::default();
        let base = page(11);
        let mut one_window = base.clone();
        one_window[1024..].fill(1);
        index.add(1, 1, &one_window); // shares window 0 only
        index.add(2, 2, &base); // shares all four
        index.add(3, 3, &base); // all four too, added later
        assert_eq!(index.candidates(&base), vec![(2, 2), (3, 3)]);
    }
}
