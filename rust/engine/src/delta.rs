//! XBZRLE-style delta of a page against the version the receiver holds.
//!
//! Encoding: a sequence of `(skip, copy)` pairs, each a LEB128 varint, the `copy`
//! literal bytes following their pair. `skip` bytes are unchanged from the old page,
//! then `copy` bytes are replaced. The pairs must cover the page exactly (a trailing
//! unchanged run is implied).

use std::cell::RefCell;

use crate::error::{EngineError, Result};
use crate::{equal_bits, varint};

/// Words compared by the rewritten-page test: one in every 64 bytes (every cache line of
/// a 4 KiB page is looked at once), at an offset within the line that turns with each
/// line. A fixed offset would see only one field of an array of 64-byte structures (the
/// kernel's `struct page` array is one): a page where that field changed everywhere and
/// nothing else did looked rewritten, though its delta is a few hundred bytes.
const SAMPLE_STRIDE: usize = 64;

/// True when most sampled words differ: a rewritten page, whose delta could not be
/// small. Saves comparing it whole only to give up at the limit.
fn mostly_different(a: &[u8], b: &[u8]) -> bool {
    let lines = a.len() / SAMPLE_STRIDE;
    let differ = (0..lines)
        .filter(|&line| {
            let at = line * SAMPLE_STRIDE + (line % 8) * 8;
            a[at..at + 8] != b[at..at + 8]
        })
        .count();
    differ * 4 > lines * 3
}

/// Literals this short are copied as this many bytes at once (the bytes past them are
/// overwritten by the next run or cut off at the end).
const OVERCOPY: usize = 16;

/// Longest page whose bitmaps [`encode_into`] keeps on the stack.
const STACK_BYTES: usize = crate::PAGE_SIZE;

/// [`encode_into`] into a buffer of its own (tests).
#[cfg(test)]
#[must_use]
pub fn encode(old: &[u8], new: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(old, new, limit, &mut out).then_some(out)
}

/// Encodes `new` against `old` (same length), appending the delta to `out` (a batch's
/// deltas share one buffer, not an allocation each); false, and `out` as it was, when
/// the delta would exceed `limit` bytes.
///
/// A run of changed bytes (a literal) ends where a stretch of at least three unchanged
/// bytes starts, or where every byte to the end is unchanged: a shorter unchanged
/// stretch costs more as a new pair than as literal bytes. Both are read from the
/// pages' equality bitmap ([`equal_bits`]), a word of 64 bytes at a time.
pub fn encode_into(old: &[u8], new: &[u8], limit: usize, out: &mut Vec<u8>) -> bool {
    assert_eq!(old.len(), new.len(), "pages of one length");
    if mostly_different(old, new) {
        return false;
    }
    let words = equal_bits::words_for(new.len());
    if new.len() <= STACK_BYTES {
        let mut equal = [0u64; equal_bits::words_for(STACK_BYTES)];
        encode_with(old, new, limit, &mut equal[..words], out)
    } else {
        encode_with(old, new, limit, &mut vec![0; words], out)
    }
}

fn encode_with(old: &[u8], new: &[u8], limit: usize, equal: &mut [u64], out: &mut Vec<u8>) -> bool {
    let len = new.len();
    // no delta is longer than this (a run's two varints for every four bytes and one
    // more, on top of the page), so a larger limit does not change the result; the room
    // below is bounded by it
    let limit = limit.min(6 * len + 2 * varint::MAX_LEN);
    equal_bits::fill(old, new, equal);
    let Some(first) = equal_bits::next_clear(equal, 0).filter(|&c| c < len) else {
        return true;
    };
    // Room for the longest delta there can be: it is given up past `limit` plus one
    // run's two varints, and a literal is copied as a whole `OVERCOPY` bytes when it is
    // shorter (one move, not a call to copy a few bytes).
    let room = limit + 2 * varint::MAX_LEN + OVERCOPY;
    SCRATCH.with_borrow_mut(|scratch| {
        if scratch.len() < room {
            scratch.resize(room, 0);
        }
        let Some(at) = write_runs(new, limit, first, equal, &mut scratch[..room]) else {
            return false;
        };
        out.extend_from_slice(&scratch[..at]);
        true
    })
}

thread_local! {
    /// Where a delta is written before it is copied out at its length: room for the
    /// longest, zeroed once a thread rather than once a page.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes the delta's runs into `out` (room for `limit` bytes, one more run's varints and
/// `OVERCOPY` bytes), from the first changed byte `first` on; returns its length, or
/// `None` past `limit`. `equal`: the pages' equality bitmap.
fn write_runs(
    new: &[u8],
    limit: usize,
    first: usize,
    equal: &[u64],
    out: &mut [u8],
) -> Option<usize> {
    let len = new.len();
    let mut at = 0;
    // end of the last literal, and start of the open one
    let mut pos = 0;
    let mut open = None;
    // The literals, from the first changed byte on, are the bytes that no stretch of three
    // unchanged bytes covers; their edges are found a word at a time, so that finding
    // one does not wait on finding the last.
    // the previous word's literal bits
    let mut below = 0u64;
    // the previous word's bits where a literal may end: three unchanged bytes start
    // there (or fewer, to the end: the bits past the end are set); none before the first
    // change's word (they would cover only bytes before the first change)
    let mut three_below = 0u64;
    let mut w = first / 64;
    while w < equal.len() {
        if below >> 63 == 0 {
            // no literal open: words with every byte unchanged neither start nor end one
            let Some(skip) = equal[w..].iter().position(|&e| e != !0) else {
                break;
            };
            if skip > 0 {
                w += skip;
                below = 0;
                three_below = equal_bits::run_of_three(equal, w - 1);
            }
        }
        let here = equal_bits::run_of_three(equal, w);
        let covered = here | (here << 1) | (three_below >> 63) | (here << 2) | (three_below >> 62);
        three_below = here;
        let mut literal = !covered;
        if w == first / 64 {
            literal &= !0u64 << (first % 64);
        }
        let mut edges = literal ^ ((literal << 1) | (below >> 63));
        below = literal;
        while edges != 0 {
            let edge = w * 64 + edges.trailing_zeros() as usize;
            edges &= edges - 1;
            let Some(changed) = open.take() else {
                open = Some(edge);
                continue;
            };
            let (end, copy) = (edge, edge - changed);
            // `at <= limit` here, so the two varints fit in the room past `limit`
            at = varint::put_at(out, at, (changed - pos) as u64);
            at = varint::put_at(out, at, copy as u64);
            if at + copy > limit {
                return None;
            }
            if copy <= OVERCOPY && changed + OVERCOPY <= len {
                out[at..at + OVERCOPY].copy_from_slice(&new[changed..changed + OVERCOPY]);
            } else {
                out[at..at + copy].copy_from_slice(&new[changed..end]);
            }
            at += copy;
            pos = end;
        }
        w += 1;
    }
    debug_assert!(open.is_none(), "the bits past the end close every literal");
    Some(at)
}

/// Applies `delta` to `page` in place.
///
/// # Errors
/// [`EngineError::Malformed`] when the delta is truncated or runs past the page.
pub fn apply(page: &mut [u8], delta: &[u8]) -> Result<()> {
    let mut pos: usize = 0;
    let mut input = delta;
    while !input.is_empty() {
        let skip = varint::get(&mut input)?;
        let copy = varint::get(&mut input)?;
        let skip = usize::try_from(skip).map_err(|_| EngineError::malformed("delta skip"))?;
        let copy = usize::try_from(copy).map_err(|_| EngineError::malformed("delta copy"))?;
        pos = pos
            .checked_add(skip)
            .filter(|&p| p <= page.len())
            .ok_or_else(|| EngineError::malformed("delta skips past the page"))?;
        let end = pos
            .checked_add(copy)
            .filter(|&e| e <= page.len())
            .ok_or_else(|| EngineError::malformed("delta writes past the page"))?;
        if input.len() < copy {
            return Err(EngineError::malformed("delta literal truncated"));
        }
        page[pos..end].copy_from_slice(&input[..copy]);
        input = &input[copy..];
        pos = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(old in proptest::collection::vec(any::<u8>(), 4096), edits in proptest::collection::vec((0usize..4096, any::<u8>()), 0..200)) {
            let mut new = old.clone();
            for (i, b) in edits { new[i] = b; }
            if let Some(d) = encode(&old, &new, 8192) {
                let mut page = old.clone();
                apply(&mut page, &d).unwrap();
                prop_assert_eq!(page, new);
            }
        }

        #[test]
        fn apply_never_panics(delta in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut page = vec![0u8; 4096];
            let _ = apply(&mut page, &delta);
        }
    }

    /// The encoding's rule, a byte at a time: the reference [`encode`] must agree with.
    fn encode_bytewise(old: &[u8], new: &[u8], limit: usize) -> Option<Vec<u8>> {
        let len = new.len();
        let lines = len / SAMPLE_STRIDE;
        let differ = (0..lines)
            .filter(|&line| {
                let at = line * SAMPLE_STRIDE + (line % 8) * 8;
                old[at..at + 8] != new[at..at + 8]
            })
            .count();
        if differ * 4 > lines * 3 {
            return None;
        }
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(changed) = (pos..len).find(|&p| old[p] != new[p]) {
            let end = (changed + 1..len)
                .find(|&p| {
                    old[p] == new[p]
                        && ((p + 3 <= len && old[p..p + 3] == new[p..p + 3])
                            || old[p..] == new[p..])
                })
                .unwrap_or(len);
            varint::put(&mut out, (changed - pos) as u64);
            varint::put(&mut out, (end - changed) as u64);
            out.extend_from_slice(&new[changed..end]);
            pos = end;
        }
        (out.len() <= limit).then_some(out)
    }

    /// A page and a changed copy: bytes from a small alphabet (unchanged stretches of
    /// every length), changes in clusters of every length, some everywhere.
    fn pages(len: std::ops::Range<usize>) -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        (
            proptest::collection::vec(0u8..3, len),
            proptest::collection::vec((any::<usize>(), 0usize..80, 0u8..3), 0..40),
        )
            .prop_map(|(old, clusters)| {
                let mut new = old.clone();
                let n = new.len();
                for (at, span, value) in clusters {
                    if n > 0 {
                        let at = at % n;
                        for byte in &mut new[at..(at + span).min(n)] {
                            *byte = value;
                        }
                    }
                }
                (old, new)
            })
    }

    proptest! {
        #[test]
        fn encode_follows_its_rule_on_pages((old, new) in pages(4096..4097), limit in 0usize..5000) {
            prop_assert_eq!(encode(&old, &new, limit), encode_bytewise(&old, &new, limit));
        }

        #[test]
        fn encode_follows_its_rule_at_any_length((old, new) in pages(0..700), limit in 0usize..800) {
            prop_assert_eq!(encode(&old, &new, limit), encode_bytewise(&old, &new, limit));
        }

        #[test]
        fn encode_into_appends_the_delta_or_nothing(
            (old, new) in pages(4096..4097),
            limit in 0usize..1500,
            before in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut out = before.clone();
            let made = encode_into(&old, &new, limit, &mut out);
            match encode_bytewise(&old, &new, limit) {
                Some(delta) => {
                    prop_assert!(made);
                    prop_assert_eq!(&out[..before.len()], &before[..]);
                    prop_assert_eq!(&out[before.len()..], &delta[..]);
                }
                None => {
                    prop_assert!(!made);
                    prop_assert_eq!(out, before);
                }
            }
        }
    }

    #[test]
    fn a_page_longer_than_the_stack_bitmaps_is_encoded_too() {
        let old: Vec<u8> = (0..10_000).map(|i| (i % 7) as u8).collect();
        let mut new = old.clone();
        new[9_000] ^= 1;
        new[5] ^= 1;
        assert_eq!(encode(&old, &new, 100), encode_bytewise(&old, &new, 100));
        assert!(encode(&old, &new, 100).is_some());
    }

    #[test]
    fn small_change_small_delta() {
        let old = vec![7u8; 4096];
        let mut new = old.clone();
        new[100] = 1;
        new[3000] = 2;
        let d = encode(&old, &new, 4096).unwrap();
        assert!(d.len() < 12, "{}", d.len());
        assert!(encode(&old, &vec![9u8; 4096], 100).is_none());
    }

    #[test]
    fn one_field_changed_in_every_64_byte_structure_is_a_delta() {
        // an array of 64-byte structures whose first word changed in each of them
        let old: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
        let mut new = old.clone();
        for line in (0..4096).step_by(64) {
            new[line] ^= 0x40;
        }
        let d = encode(&old, &new, 1024).expect("64 one-byte changes");
        assert!(d.len() <= 3 * 64, "{}", d.len());
        // a page rewritten everywhere is still given up at once
        let rewritten: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
        assert!(mostly_different(&old, &rewritten));
    }
}
