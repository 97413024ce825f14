//! Which bytes of two equal-length buffers are equal, as a bitmap: bit `i % 64` of word
//! `i / 64` is set when byte `i` is the same in both. Bits past the buffers' end are
//! set (a byte that is not there never differs).
//!
//! A 4 KiB page's bitmap is 64 words. The delta encoder ([`crate::delta`]) reads its
//! runs of changed and unchanged bytes from the bitmap with bit operations instead of
//! comparing the pages a word at a time for each run.

/// Words of the bitmap for `len` bytes, with one word past them (all set), so that every
/// run of changed bytes ends within the bitmap.
pub(crate) const fn words_for(len: usize) -> usize {
    len.div_ceil(64) + 1
}

/// Fills `bits` (at least [`words_for`]`(a.len())` words) with the equality bitmap of
/// `a` and `b`.
pub(crate) fn fill(a: &[u8], b: &[u8], bits: &mut [u64]) {
    assert_eq!(a.len(), b.len(), "equal lengths");
    let whole = a.len() / 64;
    assert!(bits.len() >= words_for(a.len()), "room for the bitmap");
    let (head, rest) = bits.split_at_mut(whole);
    whole_chunks(&a[..whole * 64], &b[..whole * 64], head);
    let tail = whole * 64;
    let mut last = !0u64; // bits past the end set
    for (i, (x, y)) in a[tail..].iter().zip(&b[tail..]).enumerate() {
        if x != y {
            last &= !(1 << i);
        }
    }
    for word in rest.iter_mut() {
        *word = !0;
    }
    rest[0] = last;
}

/// The bitmap of whole 64-byte chunks (`a.len() == 64 * bits.len()`).
fn whole_chunks(a: &[u8], b: &[u8], bits: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above); the lengths agree (asserted
            // by `fill`, the only caller)
            unsafe { x86::chunks_avx2(a, b, bits) };
        } else {
            x86::chunks_sse2(a, b, bits);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    chunks_portable(a, b, bits);
}

/// A byte-equality bitmap eight bytes at a time, without vector instructions.
#[cfg(any(not(target_arch = "x86_64"), test))]
fn chunks_portable(a: &[u8], b: &[u8], bits: &mut [u64]) {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // gathers the high bit of each byte into the top byte (bit k from byte k)
    const GATHER: u64 = 0x0102_0408_1020_4080;
    for (w, bit) in bits.iter_mut().enumerate() {
        let mut word = 0u64;
        for k in 0..8 {
            let at = w * 64 + k * 8;
            let x = u64::from_le_bytes(a[at..at + 8].try_into().expect("8 bytes"))
                ^ u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
            // high bit set in exactly the bytes where x is zero (no carry crosses bytes)
            let equal = !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7);
            let flags = ((equal >> 7).wrapping_mul(GATHER)) >> 56;
            word |= flags << (8 * k);
        }
        *bit = word;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8,
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8,
    };

    /// # Safety
    /// The CPU must have AVX2; `a` and `b` must hold `64 * bits.len()` bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn chunks_avx2(a: &[u8], b: &[u8], bits: &mut [u64]) {
        debug_assert!(a.len() == 64 * bits.len() && b.len() == a.len());
        for (w, bit) in bits.iter_mut().enumerate() {
            let mut word = 0u64;
            for half in 0..2 {
                let at = w * 64 + half * 32;
                // SAFETY: `at + 32 <= a.len() == b.len()` (the caller's promise); unaligned
                // loads
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_si256(a.as_ptr().add(at).cast::<__m256i>()),
                        _mm256_loadu_si256(b.as_ptr().add(at).cast::<__m256i>()),
                    )
                };
                let mask = _mm256_movemask_epi8(_mm256_cmpeq_epi8(x, y)) as u32;
                word |= u64::from(mask) << (32 * half);
            }
            *bit = word;
        }
    }

    /// SSE2, which every x86-64 CPU has.
    pub(super) fn chunks_sse2(a: &[u8], b: &[u8], bits: &mut [u64]) {
        assert!(a.len() == 64 * bits.len() && b.len() == a.len());
        for (w, bit) in bits.iter_mut().enumerate() {
            let mut word = 0u64;
            for quarter in 0..4 {
                let at = w * 64 + quarter * 16;
                // SAFETY: `at + 16 <= a.len() == b.len()` (asserted above); unaligned loads;
                // SSE2 is part of x86-64
                let mask = unsafe {
                    let x = _mm_loadu_si128(a.as_ptr().add(at).cast::<__m128i>());
                    let y = _mm_loadu_si128(b.as_ptr().add(at).cast::<__m128i>());
                    _mm_movemask_epi8(_mm_cmpeq_epi8(x, y)) as u32 & 0xffff
                };
                word |= u64::from(mask) << (16 * quarter);
            }
            *bit = word;
        }
    }
}

/// The first position at or after `from` whose bit is clear in `bits`, or `None`.
pub(crate) fn next_clear(bits: &[u64], from: usize) -> Option<usize> {
    let mut w = from / 64;
    let mut word = !*bits.get(w)? & (!0u64 << (from % 64));
    loop {
        if word != 0 {
            return Some(w * 64 + word.trailing_zeros() as usize);
        }
        w += 1;
        word = !*bits.get(w)?;
    }
}

/// Word `w` of the bitmap whose bit `i` is set when bits `i`, `i + 1` and `i + 2` of
/// `bits` all are (the last word's missing neighbours taken as set).
#[inline]
pub(crate) fn run_of_three(bits: &[u64], w: usize) -> u64 {
    let here = bits[w];
    let next = bits.get(w + 1).copied().unwrap_or(!0);
    let one = (here >> 1) | (next << 63);
    let two = (here >> 2) | (next << 62);
    here & one & two
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytewise(a: &[u8], b: &[u8]) -> Vec<u64> {
        let mut bits = vec![!0u64; words_for(a.len())];
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            if x != y {
                bits[i / 64] &= !(1 << (i % 64));
            }
        }
        bits
    }

    proptest! {
        #[test]
        fn fill_matches_a_byte_by_byte_comparison(
            a in proptest::collection::vec(0u8..3, 0..400),
            flips in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let mut b = a.clone();
            for f in flips {
                if !b.is_empty() {
                    let at = f % b.len();
                    b[at] = b[at].wrapping_add(1 + (f % 200) as u8);
                }
            }
            let mut bits = vec![0u64; words_for(a.len())];
            fill(&a, &b, &mut bits);
            prop_assert_eq!(&bits, &bytewise(&a, &b));
            // every way of computing the whole chunks agrees
            let whole = a.len() / 64 * 64;
            let mut portable = vec![0u64; whole / 64];
            chunks_portable(&a[..whole], &b[..whole], &mut portable);
            prop_assert_eq!(&portable[..], &bits[..whole / 64]);
            #[cfg(target_arch = "x86_64")]
            {
                let mut sse2 = vec![0u64; whole / 64];
                x86::chunks_sse2(&a[..whole], &b[..whole], &mut sse2);
                prop_assert_eq!(&sse2[..], &bits[..whole / 64]);
            }
        }

        #[test]
        fn next_clear_finds_the_first_clear_bit(words in proptest::collection::vec(any::<u64>(), 1..6), from in 0usize..400) {
            let bit = |i: usize| words.get(i / 64).map(|w| w >> (i % 64) & 1);
            let clear = (from..words.len() * 64).find(|&i| bit(i) == Some(0));
            prop_assert_eq!(next_clear(&words, from), clear);
        }

        #[test]
        fn run_of_three_by_its_rule(words in proptest::collection::vec(any::<u64>(), 1..6)) {
            let bit = |i: usize| words.get(i / 64).is_none_or(|w| w >> (i % 64) & 1 == 1);
            for i in 0..words.len() * 64 {
                let want = bit(i) && bit(i + 1) && bit(i + 2);
                prop_assert_eq!(run_of_three(&words, i / 64) >> (i % 64) & 1 == 1, want, "bit {}", i);
            }
        }
    }
}
