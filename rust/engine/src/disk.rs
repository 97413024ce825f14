//! Disk extents for a storage copy (a stopped VM's volumes moving to another node).
//!
//! [`pack_extent`] cuts a read of a volume (or a stretch of a relayed NBD connection)
//! into pieces: runs of all-zero blocks (sent as holes, no bytes) and runs of data, each
//! packed with zstd level 1 or LZ4 (the caller's choice) when that makes it at least a
//! sixteenth smaller, else sent as it is. [`unpack`] restores a data piece
//! and refuses anything that does not restore to exactly the length it claims.
//! [`StreamDigest`] is the xxh3-128 both ends keep over what was sent, to compare at
//! the end of each volume.

use crate::error::{EngineError, Result};
use crate::scan::is_zero_page;

/// Zero detection works on blocks of this size (a qcow2 cluster by default): a run
/// of data is never cut for zeros shorter than that.
pub const BLOCK: usize = 64 * 1024;
/// The largest piece [`unpack`] restores (a reader's buffer, with room to spare).
pub const MAX_PIECE: usize = 16 * 1024 * 1024;

/// How a piece travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The bytes as they are.
    Raw = 0,
    /// zstd, level 1.
    Zstd = 1,
    /// All zero: no bytes travel.
    Zero = 2,
    /// One LZ4 block.
    Lz4 = 3,
}

impl Codec {
    /// The codec of its wire number.
    ///
    /// # Errors
    /// [`EngineError::Malformed`] for a number no codec has.
    pub fn from_u8(value: u8) -> Result<Self> {
        match value {
            0 => Ok(Self::Raw),
            1 => Ok(Self::Zstd),
            2 => Ok(Self::Zero),
            3 => Ok(Self::Lz4),
            other => Err(EngineError::malformed(format!(
                "unknown disk codec {other}"
            ))),
        }
    }
}

/// One piece of an extent: `len` bytes at `at` (from the extent's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Where it starts in the extent.
    pub at: usize,
    /// Its length before packing.
    pub len: usize,
    /// How it travels.
    pub codec: Codec,
    /// What travels (empty for [`Codec::Zero`]).
    pub payload: Vec<u8>,
}

/// The extent `data` as pieces, in order and covering it exactly: zero runs and
/// data runs alternate. Data runs are packed with `packer` ([`Codec::Zstd`] or
/// [`Codec::Lz4`]; [`Codec::Raw`] packs nothing) when that saves a sixteenth.
///
/// # Errors
/// [`EngineError::InvalidArgument`] for [`Codec::Zero`] as the packer.
pub fn pack_extent(data: &[u8], packer: Codec) -> Result<Vec<Piece>> {
    if packer == Codec::Zero {
        return Err(EngineError::invalid("zero is not a packer"));
    }
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut zero_run: Option<bool> = None;
    for (i, block) in data.chunks(BLOCK).enumerate() {
        let zero = is_zero_page(block);
        let at = i * BLOCK;
        match zero_run {
            Some(z) if z != zero => {
                pieces.push(piece(data, start, at, z, packer));
                start = at;
            }
            _ => {}
        }
        zero_run = Some(zero);
    }
    if let Some(z) = zero_run {
        pieces.push(piece(data, start, data.len(), z, packer));
    }
    Ok(pieces)
}

fn piece(data: &[u8], start: usize, end: usize, zero: bool, packer: Codec) -> Piece {
    let raw = &data[start..end];
    if zero {
        return Piece {
            at: start,
            len: raw.len(),
            codec: Codec::Zero,
            payload: Vec::new(),
        };
    }
    let packed = match packer {
        Codec::Zstd => zstd::bulk::compress(raw, 1).ok(),
        Codec::Lz4 => Some(lz4_flex::block::compress(raw)),
        Codec::Raw | Codec::Zero => None,
    };
    let (codec, payload) = match packed {
        Some(packed) if packed.len() < raw.len() - raw.len() / 16 => (packer, packed),
        _ => (Codec::Raw, raw.to_vec()),
    };
    Piece {
        at: start,
        len: raw.len(),
        codec,
        payload,
    }
}

/// The `len` bytes a piece packed as `codec` stands for.
///
/// # Errors
/// [`EngineError::Malformed`] when `payload` does not restore to exactly `len` bytes
/// (or a zero piece carries bytes); [`EngineError::InvalidArgument`] for a `len` over
/// [`MAX_PIECE`].
pub fn unpack(codec: Codec, payload: &[u8], len: usize) -> Result<Vec<u8>> {
    if len > MAX_PIECE {
        return Err(EngineError::invalid(format!(
            "a disk piece of {len} bytes is over the {MAX_PIECE}-byte limit"
        )));
    }
    let out = match codec {
        Codec::Raw => payload.to_vec(),
        Codec::Zero if payload.is_empty() => vec![0; len],
        Codec::Zero => return Err(EngineError::malformed("a zero disk piece carries bytes")),
        Codec::Zstd => zstd::bulk::decompress(payload, len).map_err(|e| {
            EngineError::malformed(format!("a zstd disk piece does not unpack: {e}"))
        })?,
        Codec::Lz4 => crate::lz4_block::decompress(payload, len)?,
    };
    if out.len() != len {
        return Err(EngineError::malformed(format!(
            "a disk piece unpacks to {} bytes, not the {len} it claims",
            out.len()
        )));
    }
    Ok(out)
}

/// xxh3-128 over a sequence of inputs, as if they were one.
#[derive(Clone, Default)]
pub struct StreamDigest {
    inner: xxhash_rust::xxh3::Xxh3,
}

impl StreamDigest {
    /// A digest of nothing yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// The xxh3-128 of everything added so far.
    #[must_use]
    pub fn digest(&self) -> u128 {
        self.inner.digest128()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn restore(pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            assert_eq!(p.at, out.len(), "pieces cover the extent in order");
            out.extend(unpack(p.codec, &p.payload, p.len).unwrap());
        }
        out
    }

    #[test]
    fn zero_blocks_become_zero_pieces_and_data_is_packed() {
        let mut data = vec![0u8; 4 * BLOCK + 100];
        data[BLOCK + 5] = 1; // block 1: data
        data[4 * BLOCK + 99] = 7; // the short last block: data
        let pieces = pack_extent(&data, Codec::Zstd).unwrap();
        let kinds: Vec<_> = pieces.iter().map(|p| (p.at, p.len, p.codec)).collect();
        assert_eq!(
            kinds,
            vec![
                (0, BLOCK, Codec::Zero),
                (BLOCK, BLOCK, Codec::Zstd),
                (2 * BLOCK, 2 * BLOCK, Codec::Zero),
                (4 * BLOCK, 100, Codec::Zstd),
            ]
        );
        assert!(pieces[0].payload.is_empty());
        assert_eq!(restore(&pieces), data);
    }

    #[test]
    fn incompressible_data_travels_raw() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let data: Vec<u8> = (0..BLOCK * 2)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        for packer in [Codec::Zstd, Codec::Lz4, Codec::Raw] {
            let pieces = pack_extent(&data, packer).unwrap();
            assert_eq!(pieces.len(), 1);
            assert_eq!(pieces[0].codec, Codec::Raw);
            assert_eq!(pieces[0].payload, data);
        }
    }

    #[test]
    fn an_empty_extent_has_no_pieces() {
        assert!(pack_extent(&[], Codec::Lz4).unwrap().is_empty());
        assert!(pack_extent(&[1], Codec::Zero).is_err());
    }

    #[test]
    fn bad_pieces_are_refused() {
        let packed = zstd::bulk::compress(&[5u8; 1000], 1).unwrap();
        assert!(unpack(Codec::Zstd, &packed, 999).is_err()); // longer than it claims
        assert!(unpack(Codec::Zstd, &packed, 1001).is_err()); // shorter
        assert!(unpack(Codec::Zstd, &packed[..packed.len() - 1], 1000).is_err());
        assert!(unpack(Codec::Raw, &[1, 2, 3], 4).is_err());
        assert!(unpack(Codec::Zero, &[0], 1).is_err());
        assert!(unpack(Codec::Zero, &[], MAX_PIECE + 1).is_err());
        let lz4 = lz4_flex::block::compress(&[5u8; 1000]);
        assert_eq!(unpack(Codec::Lz4, &lz4, 1000).unwrap(), vec![5u8; 1000]);
        assert!(unpack(Codec::Lz4, &lz4, 999).is_err());
        assert!(unpack(Codec::Lz4, &lz4, 1001).is_err());
        assert!(unpack(Codec::Lz4, &lz4[..lz4.len() - 1], 1000).is_err());
        assert!(Codec::from_u8(4).is_err());
        assert_eq!(unpack(Codec::Zero, &[], 3).unwrap(), vec![0, 0, 0]);
    }

    #[test]
    fn the_digest_is_xxh3_128_of_the_whole() {
        let mut d = StreamDigest::new();
        d.update(b"hello ");
        d.update(b"world");
        assert_eq!(d.digest(), xxhash_rust::xxh3::xxh3_128(b"hello world"));
    }

    proptest! {
        #[test]
        fn pieces_restore_the_extent(
            runs in prop::collection::vec((0u8..3, 1usize..3 * BLOCK), 0..6),
            lz4 in any::<bool>(),
        ) {
            let mut data = Vec::new();
            for (kind, len) in runs {
                let byte = |i: usize| match kind {
                    0 => 0,
                    1 => (i % 7) as u8,
                    _ => (i.wrapping_mul(2_654_435_761) >> 13) as u8,
                };
                data.extend((0..len).map(byte));
            }
            let packer = if lz4 { Codec::Lz4 } else { Codec::Zstd };
            let pieces = pack_extent(&data, packer).unwrap();
            prop_assert_eq!(restore(&pieces), data);
            for p in &pieces {
                prop_assert!(p.codec == packer || matches!(p.codec, Codec::Raw | Codec::Zero));
            }
            for pair in pieces.windows(2) {
                prop_assert!((pair[0].codec == Codec::Zero) != (pair[1].codec == Codec::Zero));
            }
        }
    }
}
