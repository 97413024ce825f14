//! XBZRLE-style delta of a page against the version the receiver holds.
//!
//! Encoding: a sequence of `(skip, copy)` pairs, each a LEB128 varint, the `copy`
//! literal bytes following their pair. `skip` bytes are unchanged from the old page,
//! then `copy` bytes are replaced. The pairs must cover the page exactly (a trailing
//! unchanged run is implied).

use crate::error::{EngineError, Result};
use crate::varint;

fn word(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The first position at or after `from` where `a` and `b` differ (`a.len()` if none),
/// skipping equal 32-byte stretches as four words folded together (which the compiler
/// vectorises), then eight bytes at a time.
fn first_difference(a: &[u8], b: &[u8], from: usize) -> usize {
    let mut pos = from;
    while pos + 32 <= a.len() {
        let mut diff = 0;
        for k in 0..4 {
            diff |= word(a, pos + 8 * k) ^ word(b, pos + 8 * k);
        }
        if diff != 0 {
            break;
        }
        pos += 32;
    }
    while pos + 8 <= a.len() {
        let diff = word(a, pos) ^ word(b, pos);
        if diff != 0 {
            return pos + (diff.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while pos < a.len() && a[pos] == b[pos] {
        pos += 1;
    }
    pos
}

/// Words compared by [`mostly_different`]: one in every 64 bytes (every cache line of a
/// 4 KiB page is touched once), at an offset within the line that turns with each line.
/// A fixed offset would see only one field of an array of 64-byte structures (the
/// kernel's `struct page` array is one): a page where that field changed everywhere
/// and nothing else did looked rewritten, though its delta is a few hundred bytes.
const SAMPLE_STRIDE: usize = 64;

/// True when most sampled words differ: a rewritten page, whose delta could not be
/// small. Saves walking it byte by byte only to give up at the limit.
fn mostly_different(a: &[u8], b: &[u8]) -> bool {
    let mut sampled = 0;
    let mut differ = 0;
    let mut line = 0;
    while line + SAMPLE_STRIDE <= a.len() {
        let pos = line + (sampled % (SAMPLE_STRIDE / 8)) * 8;
        sampled += 1;
        differ += usize::from(a[pos..pos + 8] != b[pos..pos + 8]);
        line += SAMPLE_STRIDE;
    }
    differ * 4 > sampled * 3
}

/// Where a literal run that began before `from` ends: the first position at or after
/// `from` that starts a stretch of >= 3 equal bytes, or from which every byte to the
/// end is equal (shorter matches cost more as a new pair than as literals); the page's
/// end if there is none. `None` once `over(position)` says a literal reaching that far
/// is too long (it is asked of positions the literal reaches, not of every one: the
/// caller still checks the length it gets). Steps six bytes at a time through a word of
/// equal-byte flags, the last few bytes one at a time.
fn literal_end(old: &[u8], new: &[u8], from: usize, over: impl Fn(usize) -> bool) -> Option<usize> {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    /// the high bit of each of the first six bytes (a stretch of three starting there
    /// lies within the word)
    const STARTS: u64 = 0x0000_8080_8080_8080;
    let len = new.len();
    let mut pos = from;
    while pos + 8 <= len {
        if over(pos) {
            return None;
        }
        let x = word(old, pos) ^ word(new, pos);
        // high bit set in exactly the bytes where x is zero (no carry crosses bytes)
        let equal = !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7);
        let three = equal & (equal >> 8) & (equal >> 16) & STARTS;
        if three != 0 {
            return Some(pos + (three.trailing_zeros() / 8) as usize);
        }
        pos += 6;
    }
    while pos < len {
        if over(pos) {
            return None;
        }
        if old[pos] == new[pos] {
            let mut run = 1;
            while pos + run < len && run < 3 && old[pos + run] == new[pos + run] {
                run += 1;
            }
            if run >= 3 || pos + run == len {
                break;
            }
            pos += run;
        } else {
            pos += 1;
        }
    }
    Some(pos)
}

/// Encodes `new` against `old` (same length); `None` when the delta would exceed `limit` bytes.
#[must_use]
pub fn encode(old: &[u8], new: &[u8], limit: usize) -> Option<Vec<u8>> {
    debug_assert_eq!(old.len(), new.len());
    if mostly_different(old, new) {
        return None;
    }
    // room for the longest delta there can be, so it never grows (a growth is a copy):
    // it is given up past `limit` plus one run's two varints (of a page's 2 bytes each)
    let mut out = Vec::with_capacity(limit.min(new.len()) + 8);
    let mut pos = 0;
    let len = new.len();
    while pos < len {
        let start = pos;
        pos = first_difference(old, new, pos);
        if pos == len {
            break;
        }
        let skip = pos - start;
        let lit_start = pos;
        pos = literal_end(old, new, pos + 1, |at| out.len() + (at - lit_start) > limit)?;
        varint::put(&mut out, skip as u64);
        varint::put(&mut out, (pos - lit_start) as u64);
        out.extend_from_slice(&new[lit_start..pos]);
        if out.len() > limit {
            return None;
        }
    }
    Some(out)
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

    /// [`literal_end`]'s rule, a byte at a time.
    fn literal_end_bytewise(old: &[u8], new: &[u8], from: usize) -> usize {
        let len = new.len();
        (from..len)
            .find(|&p| {
                old[p] == new[p]
                    && ((p + 3 <= len && old[p..p + 3] == new[p..p + 3]) || old[p..] == new[p..])
            })
            .unwrap_or(len)
    }

    proptest! {
        #[test]
        fn literal_end_matches_its_rule(
            old in proptest::collection::vec(0u8..3, 1..80),
            new in proptest::collection::vec(0u8..3, 80),
            from in 0usize..80,
        ) {
            // bytes from {0, 1, 2}: equal and unequal stretches of every length
            let new = &new[..old.len()];
            let from = from.min(old.len());
            prop_assert_eq!(
                literal_end(&old, new, from, |_| false),
                Some(literal_end_bytewise(&old, new, from))
            );
            // a limit stops it only when the literal really reaches past it, and
            // changes nothing otherwise
            let end = literal_end_bytewise(&old, new, from);
            let stop = from + 5;
            match literal_end(&old, new, from, |at| at > stop) {
                None => prop_assert!(end > stop, "end {} stop {}", end, stop),
                Some(found) => prop_assert_eq!(found, end),
            }
        }
    }

    #[test]
    fn first_difference_finds_every_position() {
        let a = vec![5u8; 200];
        for from in [0, 1, 31, 32, 33, 150] {
            for at in from..200 {
                let mut b = a.clone();
                b[at] = 6;
                assert_eq!(first_difference(&a, &b, from), at, "from {from} at {at}");
            }
            assert_eq!(first_difference(&a, &a, from), 200);
        }
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
