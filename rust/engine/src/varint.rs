//! LEB128 unsigned varints, and signed ones zigzag-coded (small magnitudes, either
//! sign, take few bytes).

use crate::error::{EngineError, Result};

/// Longest LEB128 varint (a `u64`).
pub const MAX_LEN: usize = 10;

/// Appends `value` as LEB128.
pub fn put(out: &mut Vec<u8>, value: u64) {
    let mut buf = [0u8; MAX_LEN];
    let len = put_at(&mut buf, 0, value);
    out.extend_from_slice(&buf[..len]);
}

/// Writes `value` as LEB128 into `out` at `at`, returning the position after it.
///
/// # Panics
/// When `out` has no room for it (up to [`MAX_LEN`] bytes).
#[inline(always)]
pub fn put_at(out: &mut [u8], mut at: usize, mut value: u64) -> usize {
    while value >= 0x80 {
        out[at] = (value as u8) | 0x80;
        value >>= 7;
        at += 1;
    }
    out[at] = value as u8;
    at + 1
}

/// Reads one LEB128 value from the front of `input`, advancing it.
///
/// # Errors
/// [`EngineError::Malformed`] when truncated or longer than ten bytes.
#[inline(always)]
pub fn get(input: &mut &[u8]) -> Result<u64> {
    // most values on the wire (delta runs, index steps) fit one byte
    match input.first() {
        Some(&byte) if byte < 0x80 => {
            *input = &input[1..];
            Ok(u64::from(byte))
        }
        _ => get_long(input),
    }
}

// (kept out of line: the one-byte path inlined where deltas are applied stays small)
#[inline(never)]
fn get_long(input: &mut &[u8]) -> Result<u64> {
    let mut value = 0u64;
    for (i, &byte) in input.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return Err(EngineError::malformed("varint overflows 64 bits"));
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Ok(value);
        }
    }
    Err(EngineError::malformed("truncated varint"))
}

/// Appends `value` zigzag-coded (0, -1, 1, -2, ... as 0, 1, 2, 3, ...) as LEB128.
pub fn put_signed(out: &mut Vec<u8>, value: i64) {
    put(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// Reads one zigzag-coded LEB128 value from the front of `input`, advancing it.
///
/// # Errors
/// As [`get`].
pub fn get_signed(input: &mut &[u8]) -> Result<i64> {
    let raw = get(input)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(v in any::<u64>()) {
            let mut buf = Vec::new();
            put(&mut buf, v);
            let mut input = &buf[..];
            prop_assert_eq!(get(&mut input).unwrap(), v);
            prop_assert!(input.is_empty());
        }

        #[test]
        fn put_at_writes_what_put_appends(v in any::<u64>(), at in 0usize..4) {
            let mut appended = Vec::new();
            put(&mut appended, v);
            let mut buf = [0xaau8; 16];
            let end = put_at(&mut buf, at, v);
            prop_assert_eq!(&buf[at..end], &appended[..]);
            prop_assert!(buf[..at].iter().chain(&buf[end..]).all(|&b| b == 0xaa));
        }

        #[test]
        fn signed_round_trip(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_signed(&mut buf, v);
            let mut input = &buf[..];
            prop_assert_eq!(get_signed(&mut input).unwrap(), v);
            prop_assert!(input.is_empty());
            prop_assert!(v.unsigned_abs() >= 64 || buf.len() == 1);
        }
    }
}
