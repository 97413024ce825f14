//! Decompression of one LZ4 block (the LZ4 block format: sequences of a token, literals,
//! a 2-byte offset and a match), for the receiver's compressed blocks.
//!
//! Written here rather than taken from `lz4_flex`'s safe decoder, which copies a match
//! that overlaps its own output (offset shorter than the match: a repeated 2-, 4- or
//! 8-byte pattern, common in guest memory) one byte at a time; that loop was 13 % of
//! decoding a later round. Here such a match is copied eight bytes at a time when the
//! offset allows, and a long one in chunks that double: the bytes from the match's
//! start repeat with the offset's period, so copying what is already there again keeps
//! the pattern. Short literals and matches are copied as a fixed 16-, 18-, 32- or
//! 64-byte block when there is room (the bytes past the real length are written again
//! by what follows). Safe code only: every length is checked against the input and the
//! output before it is used, so hostile input gives an error, never a panic or a write
//! outside the output.

use crate::error::{EngineError, Result};

/// As [`WILD`], for a match (the longest a token alone gives is 14 + 4).
const WILD_MATCH: usize = 18;

/// Overlapping matches up to this long are copied a byte at a time.
const SHORT_OVERLAP: usize = 32;

/// The most bytes one byte of an LZ4 block decompresses to: a sequence of a token, a
/// 2-byte offset and `k` length bytes gives at most 19 + 255·k bytes (≤ 255 × its
/// 3 + k bytes); literals give one byte each.
const MAX_EXPANSION: usize = 255;

/// Matches are at least this long (the token's match length counts from it).
const MIN_MATCH: usize = 4;

/// Short literals and matches are copied as this many bytes at once when both sides have
/// room: the bytes past the real length are written again by what follows.
const WILD: usize = 16;

/// The `size` bytes `input` decompresses to; an error unless it is one whole block that
/// decompresses to exactly `size` bytes.
///
/// # Errors
/// [`EngineError::Malformed`] for a truncated block, literals or a match past the
/// output's `size`, a match offset of zero or before the output's start, or a block
/// that ends short of `size`.
pub(crate) fn decompress(input: &[u8], size: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_into(input, size, &mut out)?;
    Ok(out)
}

/// As [`decompress`], into `out` (any buffer: it is made `size` long, and its old
/// bytes, not zeroed first, are all overwritten on success).
///
/// # Errors
/// As [`decompress`].
pub(crate) fn decompress_into(input: &[u8], size: usize, out: &mut Vec<u8>) -> Result<()> {
    // refused before `out` grows: a claimed size is not written until a block that
    // could fill it has arrived
    fits(input, size)?;
    out.resize(size, 0);
    decompress_fitting(input, out)
}

/// An error unless `input` could decompress to `size` bytes.
fn fits(input: &[u8], size: usize) -> Result<()> {
    if size > input.len().saturating_mul(MAX_EXPANSION) {
        return Err(EngineError::malformed(format!(
            "lz4: a block of {} bytes cannot decompress to {size}",
            input.len()
        )));
    }
    Ok(())
}

/// As [`decompress`], into `out`, which must come out exactly full (its old bytes are
/// overwritten; on an error some may be).
///
/// # Errors
/// As [`decompress`].
pub(crate) fn decompress_to(input: &[u8], out: &mut [u8]) -> Result<()> {
    fits(input, out.len())?;
    decompress_fitting(input, out)
}

/// [`decompress_to`], `out`'s length already checked by [`fits`].
fn decompress_fitting(input: &[u8], out: &mut [u8]) -> Result<()> {
    let size = out.len();
    let (mut i, mut o) = (0usize, 0usize);
    loop {
        let Some(&token) = input.get(i) else {
            return Err(EngineError::malformed("lz4: block truncated"));
        };
        i += 1;
        // the common sequence: at most 14 literals and a match of at most 18 bytes, far
        // from both ends (so it is not the last: a match follows its literals)
        if token >> 4 < 15
            && token & 15 < 15
            && input.len() - i >= WILD
            && size - o >= WILD + WILD_MATCH
        {
            let literals = usize::from(token >> 4);
            let window: &[u8; WILD] = input[i..i + WILD].try_into().expect("WILD bytes");
            out[o..o + WILD].copy_from_slice(window);
            let at: &[u8; 2] = window[literals..literals + 2].try_into().expect("2 bytes");
            let offset = usize::from(u16::from_le_bytes(*at));
            i += literals + 2;
            o += literals;
            if offset == 0 || offset > o {
                return Err(EngineError::malformed("lz4: match offset out of range"));
            }
            let length = usize::from(token & 15) + MIN_MATCH;
            let start = o - offset;
            if offset >= length {
                // (room for it: checked above)
                out.copy_within(start..start + WILD_MATCH, o);
            } else if offset >= 8 && size - o >= 24 {
                // eight bytes at a time: each eight lie wholly before where they go
                for p in (o..o + length).step_by(8) {
                    let word: [u8; 8] = out[p - offset..p - offset + 8].try_into().expect("8");
                    out[p..p + 8].copy_from_slice(&word);
                }
            } else {
                for p in o..o + length {
                    out[p] = out[p - offset];
                }
            }
            o += length;
            continue;
        }
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            literals += extension(input, &mut i)?;
        }
        if literals <= 32 && input.len() - i >= 32 && size - o >= 32 {
            out[o..o + 32].copy_from_slice(&input[i..i + 32]);
        } else {
            if literals > input.len() - i {
                return Err(EngineError::malformed("lz4: literals run past the block"));
            }
            if literals > size - o {
                return Err(EngineError::malformed(
                    "lz4: more bytes than the block holds",
                ));
            }
            out[o..o + literals].copy_from_slice(&input[i..i + literals]);
        }
        i += literals;
        o += literals;
        // the last sequence has literals only
        if i == input.len() {
            break;
        }
        let Some(&[low, high]) = input.get(i..i + 2) else {
            return Err(EngineError::malformed("lz4: match offset truncated"));
        };
        i += 2;
        let offset = usize::from(u16::from_le_bytes([low, high]));
        if offset == 0 || offset > o {
            return Err(EngineError::malformed("lz4: match offset out of range"));
        }
        let mut length = usize::from(token & 15) + MIN_MATCH;
        if token & 15 == 15 {
            length += extension(input, &mut i)?;
        }
        if length > size - o {
            return Err(EngineError::malformed(
                "lz4: more bytes than the block holds",
            ));
        }
        copy_match(out, o, offset, length);
        o += length;
    }
    if o != size {
        return Err(EngineError::malformed(
            "lz4: block decompressed to the wrong size",
        ));
    }
    Ok(())
}

/// The bytes that extend a length of 15: each adds its value, and a 255 means another
/// follows.
fn extension(input: &[u8], i: &mut usize) -> Result<usize> {
    let mut n = 0usize;
    loop {
        let Some(&b) = input.get(*i) else {
            return Err(EngineError::malformed("lz4: length truncated"));
        };
        *i += 1;
        // (cannot overflow: at most 255 per byte of a block that is in memory)
        n += usize::from(b);
        if b != 255 {
            return Ok(n);
        }
    }
}

/// Appends at `at` the `length` bytes that start `offset` bytes back, as if copied one
/// byte at a time (`0 < offset <= at`, `at + length <= out.len()`).
#[inline(always)]
fn copy_match(out: &mut [u8], at: usize, offset: usize, length: usize) {
    let start = at - offset;
    if offset >= length {
        // (a copy within one buffer reads the source as it was: the bytes past `length`
        // it reads may lie at or after `at`, and are written again later)
        let room = out.len() - at;
        if length <= 32 && room >= 32 {
            out.copy_within(start..start + 32, at);
        } else if length <= 64 && room >= 64 {
            out.copy_within(start..start + 64, at);
        } else {
            out.copy_within(start..start + length, at);
        }
    } else if offset == 1 {
        let byte = out[start];
        out[at..at + length].fill(byte);
    } else if length <= SHORT_OVERLAP {
        // (a few bytes: a call per doubling would cost more than the bytes)
        for p in at..at + length {
            out[p] = out[p - offset];
        }
    } else {
        // what lies from `start` repeats with period `offset`, and the copied stretch
        // stays a whole number of periods until the last chunk: each chunk copies all
        // of it again (doubling it) from `start`
        let end = at + length;
        let mut pos = at;
        while pos < end {
            let n = (pos - start).min(end - pos);
            out.copy_within(start..start + n, pos);
            pos += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes with repeats at many distances, long runs and short patterns.
    fn patterned() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((0u8..4, 1usize..300, 1usize..20, any::<u8>()), 0..40).prop_map(
            |parts| {
                let mut out: Vec<u8> = Vec::new();
                for (kind, len, period, byte) in parts {
                    match kind {
                        0 => out.extend(std::iter::repeat_n(byte, len)),
                        1 => out.extend((0..len).map(|k| byte.wrapping_add((k % period) as u8))),
                        2 if !out.is_empty() => {
                            let from = (byte as usize * 7) % out.len();
                            let copy: Vec<u8> = out[from..].iter().copied().take(len).collect();
                            out.extend(copy);
                        }
                        _ => out.extend((0..len).map(|k| (k as u8).wrapping_mul(byte) ^ 0x5a)),
                    }
                }
                out
            },
        )
    }

    #[test]
    fn a_size_no_block_that_short_can_fill_is_refused_before_the_output_grows() {
        let mut out = Vec::new();
        let err = decompress_into(&[0x1F, 1, 0, 0xFF, 0x10], 1 << 20, &mut out).unwrap_err();
        assert!(
            err.to_string()
                .contains("5 bytes cannot decompress to 1048576"),
            "{err}"
        );
        assert_eq!(out.capacity(), 0, "nothing was allocated for the claim");
        // the bound holds for the most an LZ4 block expands: one long match of zeros
        for len in [19, 4096, 1 << 20] {
            let data = vec![0u8; len];
            let block = lz4_flex::block::compress(&data);
            assert!(
                data.len() <= block.len() * MAX_EXPANSION,
                "{len}: {}",
                block.len()
            );
            assert_eq!(decompress(&block, len).unwrap(), data);
        }
    }

    proptest! {
        #[test]
        fn reads_what_lz4_flex_writes(data in patterned(), stale in 0usize..20_000) {
            let block = lz4_flex::block::compress(&data);
            prop_assert_eq!(&decompress(&block, data.len()).unwrap(), &data);
            // into a buffer an earlier block left longer or shorter: the same bytes
            let mut reused = vec![0xA5; stale];
            decompress_into(&block, data.len(), &mut reused).unwrap();
            prop_assert_eq!(reused, data);
        }

        #[test]
        fn any_bytes_give_an_error_or_what_the_reference_reads(
            input in proptest::collection::vec(any::<u8>(), 0..200),
            size in 0usize..400,
        ) {
            // never a panic; and whatever this accepts, lz4_flex's safe decoder reads alike
            if let Ok(out) = decompress(&input, size) {
                prop_assert_eq!(lz4_flex::decompress(&input, size).ok(), Some(out));
            }
        }

        #[test]
        fn bytes_changed_in_a_real_block_give_an_error_or_the_references_bytes(
            data in patterned(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut block = lz4_flex::block::compress(&data);
            for (at, value) in edits {
                if !block.is_empty() {
                    let n = block.len();
                    block[at % n] = value;
                }
            }
            if let Ok(out) = decompress(&block, data.len()) {
                prop_assert_eq!(lz4_flex::decompress(&block, data.len()).ok(), Some(out));
            }
        }
    }

    /// A block of one sequence: `literals`, then a match (`offset`, `length`), then
    /// `tail` as the last literals.
    fn block(literals: &[u8], offset: u16, length: usize, tail: &[u8]) -> Vec<u8> {
        fn lengths(out: &mut Vec<u8>, mut rest: usize) {
            while rest >= 255 {
                out.push(255);
                rest -= 255;
            }
            out.push(rest as u8);
        }
        let (lit, len) = (literals.len(), length - MIN_MATCH);
        let mut out = vec![(lit.min(15) as u8) << 4 | len.min(15) as u8];
        if lit >= 15 {
            lengths(&mut out, lit - 15);
        }
        out.extend_from_slice(literals);
        out.extend_from_slice(&offset.to_le_bytes());
        if len >= 15 {
            lengths(&mut out, len - 15);
        }
        out.push((tail.len().min(15) as u8) << 4);
        if tail.len() >= 15 {
            lengths(&mut out, tail.len() - 15);
        }
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn overlapping_matches_repeat_the_pattern_at_every_offset() {
        let pattern: Vec<u8> = (1..=40).collect();
        // (a long tail puts the short sequences far from the end: the common path)
        let long_tail = [7u8; 40];
        for tail in [&b"end"[..], &long_tail[..]] {
            for offset in 1..=40usize {
                for length in [4, 5, 8, 9, 15, 16, 17, 18, 19, 20, 63, 300, 1000] {
                    let input = block(&pattern[..offset], offset as u16, length, tail);
                    let mut want = pattern[..offset].to_vec();
                    for k in 0..length {
                        want.push(want[k]);
                    }
                    want.extend_from_slice(tail);
                    let got = decompress(&input, want.len()).unwrap();
                    assert_eq!(got, want, "{offset} {length} {}", tail.len());
                }
            }
        }
    }

    #[test]
    fn bad_blocks_are_refused() {
        let good = block(b"abcdefgh", 8, 20, b"xyz");
        assert_eq!(decompress(&good, 31).unwrap().len(), 31);
        let refused = |input: &[u8], size: usize| {
            let err = decompress(input, size).unwrap_err().to_string();
            assert!(err.contains("lz4"), "{err}");
        };
        refused(&good, 30); // more than the block holds
        refused(&good, 32); // ends short
        refused(&good[..good.len() - 1], 31); // truncated literals
        refused(&good[..10], 31); // offset truncated
        refused(&block(b"abcd", 0, 4, b""), 8); // offset zero
        refused(&block(b"abcd", 5, 4, b""), 8); // before the output's start
        refused(&[], 0); // no token
        refused(&[0xf0, 255, 255], 600); // literal length truncated
        refused(&[0x0f], 19); // a token and nothing else
    }
}
