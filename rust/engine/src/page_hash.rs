//! xxh3-128 of one 4 KiB page, with AVX2 when the CPU has it.
//!
//! `xxhash-rust` picks its vector code when it is compiled (`target_feature`), so a
//! build for any x86-64 CPU hashes with SSE2, 16 bytes per instruction. Pages are
//! hashed everywhere (the scan, the encoder, every new page the receiver keeps), so
//! a page's hash checks the CPU at run time and takes 32 bytes at once where it can.
//! The result is xxh3-128 exactly (the wire names contents by it): the long-input
//! path of XXH3 with the default secret and seed 0, written for 4096-byte inputs;
//! tests compare it with `xxhash-rust` on any page.

/// XXH3's default secret (192 bytes), a constant of the format.
const SECRET: [u8; 192] = [
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
];

const PRIME32_1: u64 = 0x9E37_79B1;
const PRIME32_2: u64 = 0x85EB_CA77;
const PRIME32_3: u64 = 0xC2B2_AE3D;
const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;

const PAGE: usize = crate::PAGE_SIZE;
/// A stripe: 64 bytes of input, one step of the eight accumulators.
const STRIPE: usize = 64;
/// Stripes per block (the secret's length less a stripe, 8 bytes a stripe), after
/// which the accumulators are scrambled.
const STRIPES: usize = (SECRET.len() - STRIPE) / 8;
const BLOCK: usize = STRIPE * STRIPES;

/// Where the input's stripes are and which secret bytes each takes: the full blocks
/// (each followed by a scramble), then the stripes of the last block but its last,
/// then the input's last 64 bytes with the secret's last 64 less 7.
const FULL_BLOCKS: usize = (PAGE - 1) / BLOCK;
const LAST_STRIPES: usize = (PAGE - 1 - FULL_BLOCKS * BLOCK) / STRIPE;
const LAST_SECRET: usize = SECRET.len() - STRIPE - 7;

/// The xxh3-128 hash of `page` (exactly 4096 bytes).
pub(crate) fn hash(page: &[u8; PAGE]) -> u128 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above)
        return unsafe { avx2::hash(page) };
    }
    xxhash_rust::xxh3::xxh3_128(page)
}

/// The accumulators' start.
const INIT: [u64; 8] = [
    PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3, PRIME64_4, PRIME32_2, PRIME64_5, PRIME32_1,
];

fn read64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The 128-bit result from the accumulators after the last stripe.
fn finish(acc: &[u64; 8]) -> u128 {
    let len = PAGE as u64;
    let low = merge(acc, 11, len.wrapping_mul(PRIME64_1));
    let high = merge(
        acc,
        SECRET.len() - STRIPE - 11,
        !len.wrapping_mul(PRIME64_2),
    );
    u128::from(high) << 64 | u128::from(low)
}

fn merge(acc: &[u64; 8], secret_at: usize, start: u64) -> u64 {
    let mut result = start;
    for i in 0..4 {
        let a = acc[2 * i] ^ read64(&SECRET, secret_at + 16 * i);
        let b = acc[2 * i + 1] ^ read64(&SECRET, secret_at + 16 * i + 8);
        let product = u128::from(a) * u128::from(b);
        result = result.wrapping_add(product as u64 ^ (product >> 64) as u64);
    }
    avalanche(result)
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(0x1656_6791_9E37_79F9);
    h ^ (h >> 32)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::{
        __m256i, _mm256_add_epi64, _mm256_loadu_si256, _mm256_mul_epu32, _mm256_set1_epi64x,
        _mm256_shuffle_epi32, _mm256_slli_epi64, _mm256_srli_epi64, _mm256_storeu_si256,
        _mm256_xor_si256,
    };

    use super::{
        finish, BLOCK, FULL_BLOCKS, INIT, LAST_SECRET, LAST_STRIPES, PAGE, PRIME32_1, SECRET,
        STRIPE, STRIPES,
    };

    /// 32 bytes at `at` of `bytes` (which has them).
    #[target_feature(enable = "avx2")]
    fn load(bytes: &[u8], at: usize) -> __m256i {
        let lane: &[u8; 32] = bytes[at..at + 32].try_into().expect("32 bytes");
        // SAFETY: `lane` is 32 readable bytes; the load needs no alignment
        unsafe { _mm256_loadu_si256(lane.as_ptr().cast()) }
    }

    /// One stripe into the accumulators: each 64-bit lane adds the product of its
    /// data-xor-secret's two halves, and its neighbour's data.
    #[target_feature(enable = "avx2")]
    fn stripe(acc: &mut [__m256i; 2], input: &[u8], at: usize, secret_at: usize) {
        for (half, acc) in acc.iter_mut().enumerate() {
            let data = load(input, at + 32 * half);
            let keyed = _mm256_xor_si256(data, load(&SECRET, secret_at + 32 * half));
            // the high 32 bits of each lane moved down, for the 32 x 32 multiply
            let high = _mm256_shuffle_epi32::<0b11_11_01_01>(keyed);
            let product = _mm256_mul_epu32(keyed, high);
            // each pair of lanes swapped: lane i takes lane i ^ 1's data
            let swapped = _mm256_shuffle_epi32::<0b01_00_11_10>(data);
            *acc = _mm256_add_epi64(*acc, _mm256_add_epi64(product, swapped));
        }
    }

    /// The end of a block: each lane xor-shifted, keyed and multiplied by a prime.
    #[target_feature(enable = "avx2")]
    fn scramble(acc: &mut [__m256i; 2]) {
        let prime = _mm256_set1_epi64x(PRIME32_1 as i64);
        for (half, acc) in acc.iter_mut().enumerate() {
            let shifted = _mm256_xor_si256(*acc, _mm256_srli_epi64::<47>(*acc));
            let keyed = _mm256_xor_si256(shifted, load(&SECRET, SECRET.len() - STRIPE + 32 * half));
            // (a 64 x 32 multiply: the low half's product plus the high half's, shifted)
            let low = _mm256_mul_epu32(keyed, prime);
            let high = _mm256_mul_epu32(_mm256_srli_epi64::<32>(keyed), prime);
            *acc = _mm256_add_epi64(low, _mm256_slli_epi64::<32>(high));
        }
    }

    /// [`super::hash`] with AVX2.
    ///
    /// # Safety
    /// Only on a CPU with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hash(page: &[u8; PAGE]) -> u128 {
        let mut acc = [0, 4].map(|first| {
            let lanes: &[u64; 4] = INIT[first..first + 4].try_into().expect("4 lanes");
            // SAFETY: `lanes` is 32 readable bytes; the load needs no alignment
            unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) }
        });
        for block in 0..FULL_BLOCKS {
            for s in 0..STRIPES {
                stripe(&mut acc, page, block * BLOCK + s * STRIPE, s * 8);
            }
            scramble(&mut acc);
        }
        for s in 0..LAST_STRIPES {
            stripe(&mut acc, page, FULL_BLOCKS * BLOCK + s * STRIPE, s * 8);
        }
        stripe(&mut acc, page, PAGE - STRIPE, LAST_SECRET);
        let mut out = [0u64; 8];
        for (half, lanes) in out.chunks_exact_mut(4).enumerate() {
            let lanes: &mut [u64; 4] = lanes.try_into().expect("4 lanes");
            // SAFETY: `lanes` is 32 writable bytes; the store needs no alignment
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc[half]) };
        }
        finish(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(page: &[u8; PAGE]) -> u128 {
        xxhash_rust::xxh3::xxh3_128(page)
    }

    #[test]
    fn the_layout_is_xxh3s_for_4096_bytes() {
        assert_eq!(
            (STRIPES, BLOCK, FULL_BLOCKS, LAST_STRIPES),
            (16, 1024, 3, 15)
        );
    }

    #[test]
    fn special_pages_hash_as_xxh3_128() {
        for fill in [0u8, 1, 0x80, 0xff] {
            let page = [fill; PAGE];
            assert_eq!(hash(&page), reference(&page), "fill {fill}");
        }
        let mut counting = [0u8; PAGE];
        for (i, b) in counting.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        assert_eq!(hash(&counting), reference(&counting));
    }

    proptest! {
        #[test]
        fn any_page_hashes_as_xxh3_128(seed in any::<u64>(), sparse in any::<bool>()) {
            let mut page = [0u8; PAGE];
            let mut x = seed | 1;
            for b in page.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = if sparse && x % 7 != 0 { 0 } else { (x >> 24) as u8 };
            }
            prop_assert_eq!(hash(&page), reference(&page));
        }
    }
}
