//! The page stream's wire format, version 5 (see `docs/migration-wire.md`); version 4
//! batches (no `filtered` records) are written and read too.
//!
//! A stream is a sequence of self-contained batches. Every batch starts with a fixed
//! 40-byte little-endian header and ends with its body; the header's xxh3-64 checksum
//! covers the first 32 header bytes and the whole body.

use crate::error::{EngineError, Result};

/// First bytes of every batch.
pub const MAGIC: [u8; 4] = *b"NCPB";
/// The newest wire format version, written unless an encoder is told to write the
/// older one (for a receiver that reads only that).
pub const VERSION: u8 = 5;
/// The oldest version read and written: version 5 without `filtered` records.
pub const OLDEST_VERSION: u8 = 4;
/// Size of the batch header.
pub const HEADER_LEN: usize = 40;
/// Most pages one batch's records may name (bounds the decoder's work per batch).
pub const MAX_RECORDS: u32 = 1 << 16;
/// Longest delta accepted for one page.
pub const MAX_DELTA: usize = crate::PAGE_SIZE;

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An all-zero page.
    Zero = 0,
    /// The receiver's copy is already current.
    Unchanged = 1,
    /// A page the receiver holds elsewhere, named by its 16-byte hash.
    DupRef = 2,
    /// An XBZRLE-style delta against the receiver's copy of this page (its bytes are
    /// the block's next).
    Delta = 3,
    /// The next page of the batch's lz4 block.
    Lz4 = 4,
    /// The next page of the batch's zstd block.
    Zstd = 5,
    /// The next 4096 bytes of the raw area.
    Raw = 6,
    /// A page the receiver announced, named by its position in the announcement:
    /// zigzag varint of the position minus the previous such record's in the batch
    /// (0 for the batch's first).
    AnnouncedRef = 7,
    /// An XBZRLE-style delta against the content another page (or this one) held when
    /// the batch began, named by its index (its bytes are the block's next).
    DeltaFrom = 8,
    /// All-zero pages: this record's page and the next `more` (a varint after the
    /// index step), in ascending order.
    ZeroRun = 9,
    /// Pages whose receiver's copies are current: this record's page and the next
    /// `more`, as [`Kind::ZeroRun`].
    UnchangedRun = 10,
    /// The next page of the batch's block with a word-difference filter undone (the
    /// filter's byte follows the index step); version 5 on.
    Filtered = 11,
}

impl Kind {
    /// Parses a record kind byte.
    ///
    /// # Errors
    /// [`EngineError::Malformed`] for an unknown kind.
    pub fn from_byte(byte: u8) -> Result<Self> {
        Ok(match byte {
            0 => Self::Zero,
            1 => Self::Unchanged,
            2 => Self::DupRef,
            3 => Self::Delta,
            4 => Self::Lz4,
            5 => Self::Zstd,
            6 => Self::Raw,
            7 => Self::AnnouncedRef,
            8 => Self::DeltaFrom,
            9 => Self::ZeroRun,
            10 => Self::UnchangedRun,
            11 => Self::Filtered,
            other => {
                return Err(EngineError::malformed(format!(
                    "unknown record kind {other}"
                )))
            }
        })
    }
}

/// Compression of a batch's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The block is stored as it is.
    None = 0,
    /// lz4 block format.
    Lz4 = 1,
    /// zstd frame.
    Zstd = 2,
}

impl Codec {
    fn from_byte(byte: u8) -> Result<Self> {
        Ok(match byte {
            0 => Self::None,
            1 => Self::Lz4,
            2 => Self::Zstd,
            other => return Err(EngineError::malformed(format!("unknown codec {other}"))),
        })
    }
}

/// The parsed fixed part of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Wire format version ([`OLDEST_VERSION`] to [`VERSION`]).
    pub version: u8,
    /// Block compression.
    pub codec: Codec,
    /// Number of pages the records name (a run record names several).
    pub records: u32,
    /// Length of the record section.
    pub records_len: u32,
    /// Decompressed length of the block (4096 per lz4/zstd record plus the delta
    /// payloads).
    pub block_raw_len: u32,
    /// Length of the block on the wire.
    pub block_len: u32,
    /// Length of the raw area (4096 per raw record).
    pub raw_len: u32,
}

impl Header {
    /// Body length announced by the header.
    #[must_use]
    pub fn body_len(&self) -> usize {
        self.records_len as usize + self.block_len as usize + self.raw_len as usize
    }

    /// Writes the header (checksum over `body`) followed by the body.
    #[must_use]
    pub fn frame(&self, body: &[u8]) -> Vec<u8> {
        self.frame_parts(&[body])
    }

    /// Writes the header followed by `parts` (the body in pieces), in one allocation.
    #[must_use]
    pub fn frame_parts(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        self.frame_into(parts, &mut out);
        out
    }

    /// Appends the header and `parts` (the body in pieces) to `out`.
    pub fn frame_into(&self, parts: &[&[u8]], out: &mut Vec<u8>) {
        let body_len: usize = parts.iter().map(|p| p.len()).sum();
        crate::mem::reserve(out, HEADER_LEN + body_len);
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(self.version);
        out.push(self.codec as u8);
        out.extend_from_slice(&0u16.to_le_bytes());
        for v in [
            self.records,
            self.records_len,
            self.block_raw_len,
            self.block_len,
            self.raw_len,
            0,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let head: [u8; 32] = out[start..].try_into().expect("32 header bytes");
        out.extend_from_slice(&checksum(&head, parts).to_le_bytes());
        for part in parts {
            out.extend_from_slice(part);
        }
    }

    /// Parses and verifies one batch at the start of `input`.
    /// Returns the header, its body and the rest of the input.
    ///
    /// # Errors
    /// [`EngineError::Malformed`] for a bad magic, version, codec, size or checksum,
    /// or a batch longer than `input`.
    pub fn parse(input: &[u8]) -> Result<(Self, &[u8], &[u8])> {
        let (header, end) = Self::read(input)?;
        let body = header.verified_body(&input[..end])?;
        Ok((header, body, &input[end..]))
    }

    /// The body of `batch`, this header's whole batch (as [`Header::read`] found it),
    /// once its checksum matches.
    ///
    /// # Errors
    /// [`EngineError::Malformed`] for a checksum mismatch, or a batch not as long as
    /// the header says.
    pub(crate) fn verified_body(self, batch: &[u8]) -> Result<&[u8]> {
        if batch.len() != HEADER_LEN + self.body_len() {
            return Err(EngineError::malformed(
                "batch not as long as its header says",
            ));
        }
        let mut stored = [0u8; 8];
        stored.copy_from_slice(&batch[32..40]);
        let body = &batch[HEADER_LEN..];
        if checksum(&batch[..32], &[body]) != u64::from_le_bytes(stored) {
            return Err(EngineError::malformed("batch checksum mismatch"));
        }
        Ok(body)
    }

    /// Parses the header of the batch at the start of `input` and checks everything
    /// but the checksum (see [`Header::parse`]). Returns the header and the batch's
    /// whole length (`input` holds at least that much): a stream is cut into batches
    /// this way, and each batch then verified on its own.
    ///
    /// # Errors
    /// As [`Header::parse`], but for the checksum.
    pub fn read(input: &[u8]) -> Result<(Self, usize)> {
        if input.len() < HEADER_LEN {
            return Err(EngineError::malformed("truncated batch header"));
        }
        if input[0..4] != MAGIC {
            return Err(EngineError::malformed("bad batch magic"));
        }
        let version = input[4];
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(EngineError::malformed(format!(
                "unsupported wire version {}",
                input[4]
            )));
        }
        let codec = Codec::from_byte(input[5])?;
        let u32_at = |at: usize| {
            u32::from_le_bytes([input[at], input[at + 1], input[at + 2], input[at + 3]])
        };
        if input[6] != 0 || input[7] != 0 || u32_at(28) != 0 {
            return Err(EngineError::malformed("reserved header bytes are not zero"));
        }
        let header = Self {
            version,
            codec,
            records: u32_at(8),
            records_len: u32_at(12),
            block_raw_len: u32_at(16),
            block_len: u32_at(20),
            raw_len: u32_at(24),
        };
        if header.records > MAX_RECORDS {
            return Err(EngineError::malformed("too many pages in one batch"));
        }
        let max_block = header.records as usize * crate::PAGE_SIZE;
        if header.block_raw_len as usize > max_block
            || header.raw_len as usize > max_block
            || (codec == Codec::None && header.block_len != header.block_raw_len)
        {
            return Err(EngineError::malformed(
                "batch areas larger than its records allow",
            ));
        }
        let end = HEADER_LEN + header.body_len();
        if input.len() < end {
            return Err(EngineError::malformed("truncated batch body"));
        }
        Ok((header, end))
    }
}

/// A batch's checksum: xxh3-64 of its header's first 32 bytes `head`, then its body
/// (in at most three pieces: records, block, raw area), gathered on the stack.
fn checksum(head: &[u8], body: &[&[u8]]) -> u64 {
    let mut pieces: [&[u8]; 4] = [head, &[], &[], &[]];
    pieces[1..=body.len()].copy_from_slice(body);
    crate::xxh3::hash64(&pieces[..=body.len()])
}
