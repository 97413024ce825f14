//! Page scan: zero detection, content hashes and dirty bitmaps.
//!
//! Bitmaps are little-endian bit arrays: page `i` is bit `i % 8` of byte `i / 8`.
//! Hashes are xxh3-128 digests stored as 16 little-endian bytes per page.

use std::sync::LazyLock;

use crate::error::{EngineError, Result};
use xxhash_rust::xxh3::xxh3_128;

/// Guest page size handled by the engine.
pub const PAGE_SIZE: usize = 4096;
/// Length in bytes of one page hash.
pub const HASH_LEN: usize = 16;

/// Returns true when every byte of `page` is zero.
///
/// The test ORs 64-byte blocks together as eight `u64` words (which the compiler
/// vectorises) and stops at the first non-zero block; a tail shorter than one
/// block is folded word by word, then byte by byte.
#[must_use]
pub fn is_zero_page(page: &[u8]) -> bool {
    let mut blocks = page.chunks_exact(64);
    for block in &mut blocks {
        let mut acc = 0u64;
        for word in block.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            acc |= u64::from_ne_bytes(w);
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// The xxh3-128 content hash of one page.
#[must_use]
pub fn hash_page(page: &[u8]) -> u128 {
    match page.try_into() {
        Ok(page) => crate::xxh3::hash_page(page),
        Err(_) => xxh3_128(page),
    }
}

/// The all-zero page.
pub(crate) static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

static ZERO_HASH: LazyLock<u128> = LazyLock::new(|| hash_page(&ZERO_PAGE));

/// The content hash of the all-zero page.
pub(crate) fn zero_hash() -> u128 {
    *ZERO_HASH
}

/// A page's content hash and whether it is zero. The zero test comes first: it stops
/// at a non-zero page's first bytes, and a zero page's hash is known, so free pages
/// are never hashed.
pub(crate) fn identify(page: &[u8]) -> (u128, bool) {
    if is_zero_page(page) {
        (zero_hash(), true)
    } else {
        (hash_page(page), false)
    }
}

/// The result of scanning a memory image page by page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageScan {
    /// Number of pages scanned.
    pub pages: usize,
    /// Number of all-zero pages.
    pub zero_pages: usize,
    /// Bitmap of zero pages (bit set = page is zero).
    pub zero_bitmap: Vec<u8>,
    /// xxh3-128 of every page, 16 little-endian bytes each.
    pub hashes: Vec<u8>,
}

impl PageScan {
    /// Page `index`'s hash and whether it is zero.
    ///
    /// # Panics
    /// When `index` is not below `pages`.
    #[must_use]
    pub fn page(&self, index: usize) -> (u128, bool) {
        let mut h = [0u8; HASH_LEN];
        h.copy_from_slice(&self.hashes[index * HASH_LEN..(index + 1) * HASH_LEN]);
        let zero = self.zero_bitmap[index / 8] & (1 << (index % 8)) != 0;
        (u128::from_le_bytes(h), zero)
    }

    /// The dirty-page bitmap of the scanned image against `previous_hashes` (an
    /// earlier scan's): what [`dirty_bitmap`] returns, from the hashes already taken.
    ///
    /// # Errors
    /// When the hash table is not a whole number of hashes or describes another page
    /// count.
    pub fn dirty_since(&self, previous_hashes: &[u8]) -> Result<Vec<u8>> {
        check_hash_table(previous_hashes, self.pages)?;
        let mut bitmap = vec![0u8; self.pages.div_ceil(8)];
        let pairs = self
            .hashes
            .chunks_exact(HASH_LEN)
            .zip(previous_hashes.chunks_exact(HASH_LEN));
        for (index, (now, old)) in pairs.enumerate() {
            if now != old {
                set_bit(&mut bitmap, index);
            }
        }
        Ok(bitmap)
    }
}

fn check_hash_table(hashes: &[u8], pages: usize) -> Result<()> {
    if hashes.len() % HASH_LEN != 0 {
        return Err(EngineError::BadHashTable { len: hashes.len() });
    }
    let count = hashes.len() / HASH_LEN;
    if count != pages {
        return Err(EngineError::PageCountMismatch {
            hashes: count,
            pages,
        });
    }
    Ok(())
}

fn page_count(image: &[u8]) -> Result<usize> {
    if image.len() % PAGE_SIZE != 0 {
        return Err(EngineError::NotPageAligned { len: image.len() });
    }
    Ok(image.len() / PAGE_SIZE)
}

fn set_bit(bitmap: &mut [u8], index: usize) {
    bitmap[index / 8] |= 1 << (index % 8);
}

/// Scans `image`, which must be a whole number of pages.
///
/// # Errors
/// [`EngineError::NotPageAligned`] when the length is not a multiple of [`PAGE_SIZE`].
pub fn scan_pages(image: &[u8]) -> Result<PageScan> {
    let pages = page_count(image)?;
    let mut zero_bitmap = vec![0u8; pages.div_ceil(8)];
    let mut hashes = Vec::with_capacity(pages * HASH_LEN);
    let mut zero_pages = 0;
    for (index, page) in image.chunks_exact(PAGE_SIZE).enumerate() {
        let (hash, zero) = identify(page);
        if zero {
            zero_pages += 1;
            set_bit(&mut zero_bitmap, index);
        }
        hashes.extend_from_slice(&hash.to_le_bytes());
    }
    Ok(PageScan {
        pages,
        zero_pages,
        zero_bitmap,
        hashes,
    })
}

/// The dirty-page bitmap of `image` against `previous_hashes` (as produced by
/// [`scan_pages`]): bit `i` is set when page `i` no longer has its earlier hash.
///
/// # Errors
/// When the image is not page aligned, the hash table is not a whole number of
/// hashes, or the two describe different page counts.
pub fn dirty_bitmap(previous_hashes: &[u8], image: &[u8]) -> Result<Vec<u8>> {
    let pages = page_count(image)?;
    check_hash_table(previous_hashes, pages)?;
    let mut bitmap = vec![0u8; pages.div_ceil(8)];
    let pairs = image
        .chunks_exact(PAGE_SIZE)
        .zip(previous_hashes.chunks_exact(HASH_LEN));
    for (index, (page, old)) in pairs.enumerate() {
        if hash_page(page).to_le_bytes() != old {
            set_bit(&mut bitmap, index);
        }
    }
    Ok(bitmap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bit(bitmap: &[u8], i: usize) -> bool {
        bitmap[i / 8] & (1 << (i % 8)) != 0
    }

    #[test]
    fn zero_page_detects_any_nonzero_byte() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert!(is_zero_page(&page));
        for pos in [0, 7, 8, 63, 64, 2047, PAGE_SIZE - 1] {
            page[pos] = 1;
            assert!(!is_zero_page(&page), "byte {pos}");
            page[pos] = 0;
        }
    }

    #[test]
    fn zero_check_handles_short_tails() {
        assert!(is_zero_page(&[0u8; 13]));
        assert!(!is_zero_page(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]));
        assert!(is_zero_page(&[]));
    }

    #[test]
    fn scan_rejects_unaligned_images() {
        assert_eq!(
            scan_pages(&[0u8; 100]),
            Err(EngineError::NotPageAligned { len: 100 })
        );
    }

    #[test]
    fn dirty_bitmap_rejects_mismatched_tables() {
        let image = vec![0u8; PAGE_SIZE * 2];
        assert_eq!(
            dirty_bitmap(&[0u8; 15], &image),
            Err(EngineError::BadHashTable { len: 15 })
        );
        assert_eq!(
            dirty_bitmap(&[0u8; 16], &image),
            Err(EngineError::PageCountMismatch {
                hashes: 1,
                pages: 2
            })
        );
    }

    proptest! {
        #[test]
        fn scan_matches_naive_definition(seed in proptest::collection::vec((0u8..4, any::<u8>(), 0usize..PAGE_SIZE), 0..24)) {
            let mut image = vec![0u8; seed.len() * PAGE_SIZE];
            for (i, (kind, byte, pos)) in seed.iter().enumerate() {
                let page = &mut image[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                match kind {
                    0 => {}
                    1 => page[*pos] = byte | 1,
                    _ => page.iter_mut().enumerate().for_each(|(j, b)| *b = (j as u8) ^ byte),
                }
            }
            let scan = scan_pages(&image).unwrap();
            prop_assert_eq!(scan.pages, seed.len());
            let mut zeros = 0;
            for (i, page) in image.chunks_exact(PAGE_SIZE).enumerate() {
                let naive_zero = page.iter().all(|&b| b == 0);
                zeros += usize::from(naive_zero);
                prop_assert_eq!(bit(&scan.zero_bitmap, i), naive_zero);
                prop_assert_eq!(&scan.hashes[i * 16..(i + 1) * 16], &xxh3_128(page).to_le_bytes()[..]);
            }
            prop_assert_eq!(scan.zero_pages, zeros);
        }

        #[test]
        fn dirty_bitmap_flags_exactly_the_changed_pages(pages in 1usize..20, changes in proptest::collection::vec((0usize..20, 0usize..PAGE_SIZE), 0..10)) {
            let before: Vec<u8> = (0..pages * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
            let old = scan_pages(&before).unwrap();
            let mut after = before.clone();
            for (page, pos) in &changes {
                if *page < pages {
                    after[page * PAGE_SIZE + pos] ^= 0xA5;
                }
            }
            let bitmap = dirty_bitmap(&old.hashes, &after).unwrap();
            let scan = scan_pages(&after).unwrap();
            prop_assert_eq!(&scan.dirty_since(&old.hashes).unwrap(), &bitmap);
            for i in 0..pages {
                let page = &after[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                prop_assert_eq!(scan.page(i), identify(page));
            }
            for i in 0..pages {
                let changed = before[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] != after[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                prop_assert_eq!(bit(&bitmap, i), changed);
            }
        }
    }
}
