//! XXH3 with AVX2 when the CPU has it: the xxh3-128 of a 4 KiB page and the xxh3-64
//! of a batch (its checksum).
//!
//! `xxhash-rust` picks its vector code when it is compiled (`target_feature`), so a
//! build for any x86-64 CPU hashes with SSE2, 16 bytes per instruction. Pages are
//! hashed everywhere (the scan, the encoder, every new page the receiver keeps) and
//! every batch is checksummed by its writer and its reader, so both check the CPU at
//! run time and take 32 bytes at once where they can. The results are XXH3's exactly
//! (the wire names contents by them): its long-input path with the default secret and
//! seed 0, for inputs over 240 bytes; shorter ones, and CPUs without AVX2, go to
//! `xxhash-rust`. Tests compare both with `xxhash-rust` on any input.

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
/// Where the last stripe (the input's last 64 bytes) starts in the secret.
const LAST_SECRET: usize = SECRET.len() - STRIPE - 7;
/// Inputs up to this long take XXH3's short-input paths (`xxhash-rust`'s here).
const MID_MAX: usize = 240;

/// The xxh3-128 hash of `page` (exactly 4096 bytes).
pub(crate) fn hash_page(page: &[u8; PAGE]) -> u128 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above)
        let acc = unsafe { avx2::accumulate(&mut Whole(page)) };
        return finish128(&acc, PAGE);
    }
    xxhash_rust::xxh3::xxh3_128(page)
}

/// The xxh3-64 hash of `parts` one after the other (as `Xxh3`'s `update` with each,
/// then `digest`).
pub(crate) fn hash64(parts: &[&[u8]]) -> u64 {
    let len = parts.iter().map(|part| part.len()).sum();
    #[cfg(target_arch = "x86_64")]
    if len > MID_MAX && std::is_x86_feature_detected!("avx2") {
        let mut input = Parts::new(parts, len);
        // SAFETY: the CPU has AVX2 (checked just above)
        let acc = unsafe { avx2::accumulate(&mut input) };
        return merge(&acc, 11, (len as u64).wrapping_mul(PRIME64_1));
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.digest()
}

/// An input of XXH3's long path (over 240 bytes), read in runs of whole stripes.
trait Input {
    /// Its length.
    fn len(&self) -> usize;
    /// The `stripes` stripes (at most a block's) at `at`: asked for in order from 0
    /// on, each run right after the one before, then (the last stripe, which may
    /// overlap them) one at `len() - 64`.
    fn run(&mut self, at: usize, stripes: usize) -> &[u8];
}

/// One contiguous input.
struct Whole<'a>(&'a [u8]);

impl Input for Whole<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn run(&mut self, at: usize, stripes: usize) -> &[u8] {
        &self.0[at..at + stripes * STRIPE]
    }
}

/// Pieces read as one input: a run within a piece is read where it is, one across
/// pieces is gathered first.
struct Parts<'a> {
    parts: &'a [&'a [u8]],
    len: usize,
    /// the piece the next run starts in, and where in it
    part: usize,
    offset: usize,
    gathered: [u8; BLOCK],
}

impl<'a> Parts<'a> {
    fn new(parts: &'a [&'a [u8]], len: usize) -> Self {
        Self {
            parts,
            len,
            part: 0,
            offset: 0,
            gathered: [0; BLOCK],
        }
    }

    /// Copies the input's `n` bytes from piece `part`, offset `offset` on, into
    /// `gathered`; returns where the bytes after them are.
    fn gather(&mut self, mut part: usize, mut offset: usize, n: usize) -> (usize, usize) {
        let mut filled = 0;
        while filled < n {
            let piece = &self.parts[part][offset..];
            let take = piece.len().min(n - filled);
            self.gathered[filled..filled + take].copy_from_slice(&piece[..take]);
            filled += take;
            if take == piece.len() {
                (part, offset) = (part + 1, 0);
            } else {
                offset += take;
            }
        }
        (part, offset)
    }
}

impl Input for Parts<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn run(&mut self, at: usize, stripes: usize) -> &[u8] {
        let n = stripes * STRIPE;
        if at + n == self.len {
            // the last stripe (runs in order never reach the end): found from the end
            let (mut part, mut before) = (self.parts.len(), self.len);
            while before > at {
                part -= 1;
                before -= self.parts[part].len();
            }
            self.gather(part, at - before, n);
            return &self.gathered[..n];
        }
        let piece = self.parts[self.part];
        let offset = self.offset;
        if piece.len() - offset >= n {
            self.offset += n;
            return &piece[offset..offset + n];
        }
        (self.part, self.offset) = self.gather(self.part, offset, n);
        &self.gathered[..n]
    }
}

/// The accumulators' start.
const INIT: [u64; 8] = [
    PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3, PRIME64_4, PRIME32_2, PRIME64_5, PRIME32_1,
];

fn read64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The 128-bit result from the accumulators after the last stripe of `len` bytes.
fn finish128(acc: &[u64; 8], len: usize) -> u128 {
    let len = len as u64;
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

    use super::{Input, BLOCK, INIT, LAST_SECRET, PRIME32_1, SECRET, STRIPE, STRIPES};

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

    /// XXH3's long-input loop over `input` (over 240 bytes): full blocks, each followed
    /// by a scramble, then the stripes of the last block but its last, then the input's
    /// last 64 bytes with the secret's last 64 less 7. Returns the accumulators.
    ///
    /// # Safety
    /// Only on a CPU with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn accumulate(input: &mut impl Input) -> [u64; 8] {
        let len = input.len();
        debug_assert!(len > super::MID_MAX);
        let mut acc = [0, 4].map(|first| {
            let lanes: &[u64; 4] = INIT[first..first + 4].try_into().expect("4 lanes");
            // SAFETY: `lanes` is 32 readable bytes; the load needs no alignment
            unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) }
        });
        let full_blocks = (len - 1) / BLOCK;
        for block in 0..full_blocks {
            let run = input.run(block * BLOCK, STRIPES);
            for s in 0..STRIPES {
                stripe(&mut acc, run, s * STRIPE, s * 8);
            }
            scramble(&mut acc);
        }
        let last_stripes = (len - 1 - full_blocks * BLOCK) / STRIPE;
        let run = input.run(full_blocks * BLOCK, last_stripes);
        for s in 0..last_stripes {
            stripe(&mut acc, run, s * STRIPE, s * 8);
        }
        stripe(&mut acc, input.run(len - STRIPE, 1), 0, LAST_SECRET);
        let mut out = [0u64; 8];
        for (half, lanes) in out.chunks_exact_mut(4).enumerate() {
            let lanes: &mut [u64; 4] = lanes.try_into().expect("4 lanes");
            // SAFETY: `lanes` is 32 writable bytes; the store needs no alignment
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc[half]) };
        }
        out
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
    fn the_layout_is_xxh3s() {
        assert_eq!((STRIPES, BLOCK, LAST_SECRET), (16, 1024, 121));
    }

    #[test]
    fn special_pages_hash_as_xxh3_128() {
        for fill in [0u8, 1, 0x80, 0xff] {
            let page = [fill; PAGE];
            assert_eq!(hash_page(&page), reference(&page), "fill {fill}");
        }
        let mut counting = [0u8; PAGE];
        for (i, b) in counting.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        assert_eq!(hash_page(&counting), reference(&counting));
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
            prop_assert_eq!(hash_page(&page), reference(&page));
        }
    }

    /// `len` bytes of a xorshift sequence from `seed`.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// `data` cut at `cuts` (positions, any order, duplicates giving empty pieces).
    fn pieces(data: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
        cuts.iter_mut().for_each(|c| *c %= data.len() + 1);
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut from = 0;
        for cut in cuts {
            out.push(&data[from..cut]);
            from = cut;
        }
        out.push(&data[from..]);
        out
    }

    #[test]
    fn lengths_at_every_edge_hash_as_xxh3_64() {
        // the short paths, the first long input, a block's edges, a page, a batch
        let lengths = (0..=300).chain(1000..1100).chain([
            2047,
            2048,
            2049,
            4095,
            4096,
            4097,
            4128,
            65_536,
            1 << 20,
        ]);
        for len in lengths {
            let data = bytes(len as u64, len);
            let expected = xxhash_rust::xxh3::xxh3_64(&data);
            assert_eq!(hash64(&[&data]), expected, "len {len}");
            // as a batch is framed: a 32-byte head, then the body in three pieces
            let cuts = vec![32, 32 + len / 3, 32 + len / 2];
            assert_eq!(hash64(&pieces(&data, cuts)), expected, "len {len}, pieces");
        }
    }

    proptest! {
        #[test]
        fn any_input_in_any_pieces_hashes_as_xxh3_64(
            seed in any::<u64>(),
            len in 0usize..6000,
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let data = bytes(seed, len);
            prop_assert_eq!(hash64(&pieces(&data, cuts)), xxhash_rust::xxh3::xxh3_64(&data));
        }
    }
}
