//! Hashing for maps keyed by page-content hashes or page indices.
//!
//! Content hashes are xxh3-128 values: already uniform, so folding them to 64 bits is
//! a perfect hash for a table; SipHash (the std default, built against hash flooding)
//! would only cost time. Page indices are small integers; a multiplicative mix spreads
//! them. Keys never come from an untrusted party unhashed: a peer can only make us
//! store pages, whose keys are our own hash of their content.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for `u128` content hashes and `u64`/`usize` indices.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // not used by integer keys; a simple fallback for completeness
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u128(&mut self, n: u128) {
        // already uniform: fold the halves
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }
}

/// A map with [`KeyHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;
/// A set with [`KeyHasher`].
pub type FastSet<K> = HashSet<K, BuildHasherDefault<KeyHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_spread_and_hashes_fold() {
        let mut indices: FastMap<u64, ()> = FastMap::default();
        for i in 0..100_000u64 {
            indices.insert(i, ());
        }
        assert_eq!(indices.len(), 100_000);
        let mut map: FastMap<u128, u32> = FastMap::default();
        map.insert(u128::MAX, 1);
        map.insert(1 << 64, 2);
        assert_eq!((map[&u128::MAX], map[&(1 << 64)]), (1, 2));
    }
}
