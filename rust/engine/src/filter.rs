//! Word-difference filters for the pages of a batch's block (wire format 5, the
//! `filtered` record; `docs/migration-wire.md`).
//!
//! A filter reads a page as little-endian words of 4 or 8 bytes and replaces each word
//! from the `distance`-th on by its difference (wrapping) from the word `distance`
//! before it. Tables of counters, offsets and addresses that grow by a fixed step —
//! page tables, the kernel's `struct page` array, arrays of sorted 32-bit values —
//! turn into runs of one repeated small word, which lz4 (no entropy coding) and zstd
//! then compress far better than the words themselves.
//!
//! The encoder picks a filter with [`choose`], from the repeats a sample of the page
//! shows with each filter and without: a guess, cheap next to compressing the page
//! twice, and never wrong about the content (any filter is undone exactly).

use crate::error::{EngineError, Result};
use crate::PAGE_SIZE;

/// One filter: its wire byte (bit 4: 8-byte words, else 4-byte; bits 0–3: the distance
/// in words, minus one; bits 5–7: zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Filter(u8);

/// The filters the encoder tries: differences of 4-byte words from the previous one,
/// of 8-byte words from the previous one, and from the one eight before (64-byte
/// structures). (8-byte words from the one two before, tried too, gained 0.05 % on a
/// real guest's first round.)
const TRIED: [Filter; 3] = [Filter::new(4, 1), Filter::new(8, 1), Filter::new(8, 8)];

/// The part of a page the choice looks at (256 bytes of its second KiB: a page's first
/// words are more often a header unlike the rest). On the 256 MiB test guest's first
/// round (estimated with lz4 over the same blocks), filters chosen on 512 bytes with
/// one more distance and filter saved 0.15 % more of the block than these choices (8.3
/// %), and each page compressed with and without each filter, keeping the smallest,
/// 0.7 % more; this choice costs about a third of that one.
const SAMPLE: std::ops::Range<usize> = 1024..1280;

/// The distances, in 4-byte words, at which a word equal to an earlier one counts as
/// a repeat.
const LAGS: [usize; 4] = [1, 2, 4, 16];

/// How many more repeats a filter must show in the sample than the page as it is
/// (out of 4 × ~64 compared 4-byte words), so that pages it would barely change stay
/// as they are.
const MARGIN: u32 = 4;

/// A sample with at least this many repeats as it is (half of those compared) is left
/// as it is without trying the filters: most of it compresses well already.
const ENOUGH: u32 = 128;

impl Filter {
    /// The filter of `width`-byte words (4 or 8), each minus the one `distance` words
    /// before (1 to 16).
    #[must_use]
    pub const fn new(width: usize, distance: usize) -> Self {
        assert!((width == 4 || width == 8) && distance >= 1 && distance <= 16);
        Self(if width == 8 { 0x10 } else { 0 } | (distance - 1) as u8)
    }

    /// Parses a filter's wire byte.
    ///
    /// # Errors
    /// [`EngineError::Malformed`] when bits 5–7 are set.
    pub fn from_byte(byte: u8) -> Result<Self> {
        if byte & 0xe0 != 0 {
            return Err(EngineError::malformed(format!(
                "unknown filter {byte:#04x}"
            )));
        }
        Ok(Self(byte))
    }

    /// The wire byte.
    #[must_use]
    pub fn byte(self) -> u8 {
        self.0
    }

    /// Bytes per word.
    #[must_use]
    pub fn width(self) -> usize {
        if self.0 & 0x10 != 0 {
            8
        } else {
            4
        }
    }

    /// How many words back each word is taken from.
    #[must_use]
    pub fn distance(self) -> usize {
        usize::from(self.0 & 0x0f) + 1
    }

    /// Appends `data` (a whole number of words) filtered to `out`.
    pub fn apply_into(self, data: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(data);
        self.apply(data, &mut out[start..]);
    }

    /// `data` (a whole number of words) filtered into `filtered`, as long.
    pub fn apply(self, data: &[u8], filtered: &mut [u8]) {
        let lag = (self.distance() * self.width()).min(data.len());
        filtered[..lag].copy_from_slice(&data[..lag]);
        match self.width() {
            8 => subtract::<8>(data, lag, filtered),
            _ => subtract::<4>(data, lag, filtered),
        }
    }

    /// Undoes the filter on `data` (a whole number of words) where it is.
    pub fn undo(self, data: &mut [u8]) {
        let lag = self.distance() * self.width();
        match self.width() {
            8 => add_back::<8>(data, lag),
            _ => add_back::<4>(data, lag),
        }
    }
}

/// Each `W`-byte word of `data` from `lag` bytes on, minus the word `lag` bytes before
/// (modulo 2^(8W)), into `filtered`.
fn subtract<const W: usize>(data: &[u8], lag: usize, filtered: &mut [u8]) {
    for at in (lag..data.len()).step_by(W) {
        let d = word::<W>(data, at).wrapping_sub(word::<W>(data, at - lag));
        filtered[at..at + W].copy_from_slice(&d.to_le_bytes()[..W]);
    }
}

/// [`subtract`] undone in place, from the first word on.
fn add_back<const W: usize>(data: &mut [u8], lag: usize) {
    for at in (lag..data.len()).step_by(W) {
        let w = word::<W>(data, at).wrapping_add(word::<W>(data, at - lag));
        data[at..at + W].copy_from_slice(&w.to_le_bytes()[..W]);
    }
}

/// The little-endian `W`-byte word at `at` (W ≤ 8; only its low `W` bytes are written
/// back, so sums and differences wrap at 2^(8W)).
fn word<const W: usize>(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..W].copy_from_slice(&data[at..at + W]);
    u64::from_le_bytes(bytes)
}

/// The filter that makes `page` most repetitive, if one does by a margin: counted on a
/// sample, as 4-byte words equal to the one 1, 2, 4 or 16 words before.
#[must_use]
pub fn choose(page: &[u8]) -> Option<Filter> {
    debug_assert_eq!(page.len(), PAGE_SIZE);
    let sample = &page[SAMPLE];
    let plain = repeats(sample);
    if plain >= ENOUGH {
        return None;
    }
    let mut best = (None, plain + MARGIN);
    let mut filtered = [0u8; SAMPLE.end - SAMPLE.start];
    for filter in TRIED {
        filter.apply(sample, &mut filtered);
        let n = repeats(&filtered);
        if n > best.1 {
            best = (Some(filter), n);
        }
    }
    best.0
}

/// The 4-byte words of `sample` equal to the word 1, 2, 4 or 16 before (each distance
/// counted).
fn repeats(sample: &[u8]) -> u32 {
    let mut words = [0u32; (SAMPLE.end - SAMPLE.start) / 4];
    for (w, at) in words.iter_mut().zip((0..sample.len()).step_by(4)) {
        *w = word::<4>(sample, at) as u32;
    }
    let mut n = 0;
    for lag in LAGS {
        n += words[lag..]
            .iter()
            .zip(&words)
            .map(|(a, b)| u32::from(a == b))
            .sum::<u32>();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::{choose, Filter};
    use crate::PAGE_SIZE;
    use proptest::prelude::*;

    /// A page of 8-byte entries growing by `step` from `start` (a page table's shape).
    fn table(start: u64, step: u64) -> Vec<u8> {
        (0..PAGE_SIZE as u64 / 8)
            .flat_map(|k| start.wrapping_add(k * step).to_le_bytes())
            .collect()
    }

    #[test]
    fn wire_bytes_name_width_and_distance() {
        assert_eq!(Filter::new(4, 1).byte(), 0x00);
        assert_eq!(Filter::new(8, 1).byte(), 0x10);
        assert_eq!(Filter::new(8, 16).byte(), 0x1f);
        for byte in 0..0x20u8 {
            let f = Filter::from_byte(byte).unwrap();
            assert_eq!(Filter::new(f.width(), f.distance()), f);
        }
        for byte in 0x20..=0xffu8 {
            assert!(Filter::from_byte(byte).is_err(), "{byte:#x}");
        }
    }

    #[test]
    fn a_table_growing_by_a_step_becomes_that_step_repeated() {
        let page = table(0x8000_0001_2345_6067, 0x1000);
        let mut out = Vec::new();
        Filter::new(8, 1).apply_into(&page, &mut out);
        assert_eq!(out[..8], page[..8]);
        assert!(out[8..].chunks(8).all(|w| w == 0x1000u64.to_le_bytes()));
        Filter::new(8, 1).undo(&mut out);
        assert_eq!(out, page);
    }

    #[test]
    fn the_choice_takes_the_filter_a_table_needs_and_none_for_text_or_zeros() {
        assert_eq!(
            choose(&table(0xffff_8880_0000_0000, 0x40)),
            Some(Filter::new(8, 1))
        );
        let u32s: Vec<u8> = (0..PAGE_SIZE as u32 / 4)
            .flat_map(|k| (k * 12 + 7).to_le_bytes())
            .collect();
        assert_eq!(choose(&u32s), Some(Filter::new(4, 1)));
        // 64-byte structures: pointers to neighbours that grow by 64 from one to the
        // next, an index, and fields that vary at random (a `struct page` array)
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let structs: Vec<u8> = (0..PAGE_SIZE as u64 / 64)
            .flat_map(|k| {
                let mut fields = [0u64; 8];
                for (n, field) in fields.iter_mut().enumerate() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *field = match n {
                        1 | 2 | 5 => 0xffff_ea00_0012_3440 + (n as u64) * 8 + 64 * k,
                        3 => 0x1_0000 + k,
                        _ => x,
                    };
                }
                fields.into_iter().flat_map(u64::to_le_bytes)
            })
            .collect();
        assert_eq!(choose(&structs), Some(Filter::new(8, 8)));
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .copied()
            .cycle()
            .take(PAGE_SIZE)
            .collect();
        assert_eq!(choose(&text), None);
        assert_eq!(choose(&[0; PAGE_SIZE]), None);
    }

    proptest! {
        #[test]
        fn any_filter_is_undone_exactly(
            page in proptest::collection::vec(any::<u8>(), PAGE_SIZE),
            byte in 0u8..0x20,
        ) {
            let filter = Filter::from_byte(byte).unwrap();
            let mut out = vec![1, 2, 3];
            filter.apply_into(&page, &mut out);
            prop_assert_eq!(&out[..3], &[1, 2, 3]);
            filter.undo(&mut out[3..]);
            prop_assert_eq!(&out[3..], &page[..]);
        }
    }
}
