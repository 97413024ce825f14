//! The receiver: verifies batches and applies them to its copy of the guest's memory.
//!
//! Memory is bounded by the guest size given at construction, whatever the input
//! claims: every length is checked against the header and the guest before use, and a
//! batch is verified (checksum, sizes, indices) before any page of it is written.

use crate::error::{EngineError, Result};
use crate::holdings::Holdings;
use crate::store::{PageStore, Pinned};
use crate::wire::{Codec, Header, Kind, MAX_DELTA};
use crate::{delta, hash_page, varint, PAGE_SIZE};

/// The receiver's state for one guest.
pub struct Decoder {
    image: Vec<u8>,
    held: Holdings,
    zstd: zstd::bulk::Decompressor<'static>,
    pinned: Pinned,
    zero_hash: u128,
    /// Batches applied.
    pub batches: u64,
    /// Pages written.
    pub pages: u64,
}

enum Op<'a> {
    Zero,
    Unchanged,
    Dup(u128),
    Delta(&'a [u8]),
    Page(&'a [u8]),
}

impl Decoder {
    /// A receiver for a guest of `pages` pages, all zero initially.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] if the zstd context cannot be created.
    pub fn new(pages: usize) -> Result<Self> {
        Ok(Self {
            image: crate::mem::zeroed(pages * PAGE_SIZE),
            held: Holdings::new(pages),
            zstd: zstd::bulk::Decompressor::new()
                .map_err(|e| EngineError::invalid(format!("zstd: {e}")))?,
            pinned: Pinned::new(),
            zero_hash: hash_page(&[0u8; PAGE_SIZE]),
            batches: 0,
            pages: 0,
        })
    }

    /// Pins every page of `store` for this stream and returns their hashes (16 bytes
    /// each, little-endian) to announce to the sender: `dup-ref` records may then name
    /// them even though this guest never held them.
    pub fn announce(&mut self, store: &PageStore) -> Vec<u8> {
        self.pinned = store.pin_all();
        let mut out = Vec::with_capacity(self.pinned.len() * 16);
        for hash in self.pinned.keys() {
            out.extend_from_slice(&hash.to_le_bytes());
        }
        out
    }

    /// The receiver's copy of the guest memory.
    #[must_use]
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// Decodes and applies every batch in `input`; returns the number of batches.
    ///
    /// # Errors
    /// [`EngineError::Malformed`] for anything that is not a valid stream for this guest.
    /// Batches before the bad one stay applied; the bad one changes nothing.
    pub fn decode(&mut self, mut input: &[u8]) -> Result<u64> {
        let mut count = 0;
        while !input.is_empty() {
            let (header, body, rest) = Header::parse(input)?;
            self.apply(&header, body)?;
            input = rest;
            count += 1;
        }
        self.batches += count;
        Ok(count)
    }

    fn apply(&mut self, header: &Header, body: &[u8]) -> Result<()> {
        let records_len = header.records_len as usize;
        let block_len = header.block_len as usize;
        let records_area = &body[..records_len];
        let block_wire = &body[records_len..records_len + block_len];
        let raw_area = &body[records_len + block_len..];
        let block_raw_len = header.block_raw_len as usize;
        let block = match header.codec {
            Codec::None if block_len == 0 && block_raw_len == 0 => Vec::new(),
            Codec::None => return Err(EngineError::malformed("block without a codec")),
            Codec::Lz4 => lz4_flex::decompress(block_wire, block_raw_len)
                .map_err(|e| EngineError::malformed(format!("lz4: {e}")))?,
            Codec::Zstd => self
                .zstd
                .decompress(block_wire, block_raw_len)
                .map_err(|e| EngineError::malformed(format!("zstd: {e}")))?,
        };
        if block.len() != block_raw_len {
            return Err(EngineError::malformed(
                "block decompressed to the wrong size",
            ));
        }
        // parse and check everything first: a bad batch changes nothing
        let mut ops = Vec::with_capacity(header.records as usize);
        let (mut input, mut block_at, mut raw_at) = (records_area, 0usize, 0usize);
        let block_kind = match header.codec {
            Codec::Lz4 => Some(Kind::Lz4),
            Codec::Zstd => Some(Kind::Zstd),
            Codec::None => None,
        };
        // pages this batch writes before a later record of the same batch relies on them
        let mut written = std::collections::HashSet::new();
        for _ in 0..header.records {
            let kind_byte = *input
                .first()
                .ok_or_else(|| EngineError::malformed("truncated record"))?;
            input = &input[1..];
            let kind = Kind::from_byte(kind_byte)?;
            let index = varint::get(&mut input)?;
            let index = usize::try_from(index)
                .ok()
                .filter(|&i| i < self.held.pages())
                .ok_or_else(|| {
                    EngineError::malformed(format!("page index {index} out of range"))
                })?;
            let op = match kind {
                Kind::Zero => Op::Zero,
                Kind::Unchanged => {
                    if self.held.hash_of(index).is_none() && !written.contains(&index) {
                        return Err(EngineError::malformed(
                            "unchanged page the receiver never had",
                        ));
                    }
                    Op::Unchanged
                }
                Kind::DupRef => {
                    if input.len() < 16 {
                        return Err(EngineError::malformed("truncated dup reference"));
                    }
                    let mut h = [0u8; 16];
                    h.copy_from_slice(&input[..16]);
                    input = &input[16..];
                    Op::Dup(u128::from_le_bytes(h))
                }
                Kind::Delta => {
                    let len = usize::try_from(varint::get(&mut input)?)
                        .ok()
                        .filter(|&l| l <= MAX_DELTA)
                        .ok_or_else(|| EngineError::malformed("delta too long"))?;
                    let end = raw_at + len;
                    if end > raw_area.len() {
                        return Err(EngineError::malformed("delta runs past the raw area"));
                    }
                    if self.held.hash_of(index).is_none() {
                        return Err(EngineError::malformed(
                            "delta for a page the receiver never had",
                        ));
                    }
                    let d = &raw_area[raw_at..end];
                    raw_at = end;
                    Op::Delta(d)
                }
                Kind::Lz4 | Kind::Zstd => {
                    if Some(kind) != block_kind {
                        return Err(EngineError::malformed(
                            "record kind does not match the batch codec",
                        ));
                    }
                    let end = block_at + PAGE_SIZE;
                    if end > block.len() {
                        return Err(EngineError::malformed(
                            "compressed pages run past the block",
                        ));
                    }
                    block_at = end;
                    Op::Page(&block[end - PAGE_SIZE..end])
                }
                Kind::Raw => {
                    let end = raw_at + PAGE_SIZE;
                    if end > raw_area.len() {
                        return Err(EngineError::malformed("raw page runs past the raw area"));
                    }
                    let page = &raw_area[raw_at..end];
                    raw_at = end;
                    Op::Page(page)
                }
            };
            if !matches!(op, Op::Unchanged) {
                written.insert(index);
            }
            ops.push((index, op));
        }
        if !input.is_empty() || block_at != block.len() || raw_at != raw_area.len() {
            return Err(EngineError::malformed("batch areas have unused bytes"));
        }
        self.write_all(ops)
    }

    fn write_all(&mut self, ops: Vec<(usize, Op<'_>)>) -> Result<()> {
        // A dup reference or a delta can only be found bad while applying (they depend
        // on earlier writes of the same batch): keep what is needed to undo the batch.
        // Pages the receiver never had are zero, so only held pages need a copy.
        let mut journal = Vec::new();
        let mut old_pages: Vec<(usize, Option<Box<[u8]>>)> = Vec::new();
        for (index, op) in ops {
            if matches!(op, Op::Unchanged) {
                // the sender re-files an unchanged page in its content index (it may
                // have lost its entry when another holder of that content changed);
                // mirror that, or a later dup reference finds no holder here
                if let Some(hash) = self.held.hash_of(index) {
                    self.held.wrote_logged(index, hash, Some(&mut journal));
                }
                continue;
            }
            let range = index * PAGE_SIZE..(index + 1) * PAGE_SIZE;
            let saved = self
                .held
                .hash_of(index)
                .map(|_| Box::<[u8]>::from(&self.image[range.clone()]));
            old_pages.push((index, saved));
            let written: Result<u128> = match op {
                Op::Zero => {
                    self.image[range.clone()].fill(0);
                    Ok(self.zero_hash)
                }
                Op::Page(src) => {
                    self.image[range.clone()].copy_from_slice(src);
                    Ok(hash_page(src))
                }
                Op::Delta(d) => delta::apply(&mut self.image[range.clone()], d)
                    .map(|()| hash_page(&self.image[range.clone()])),
                Op::Dup(hash) => match (self.held.holder_of(hash), self.pinned.get(&hash)) {
                    (Some(from), _) => {
                        let from = from as usize * PAGE_SIZE;
                        self.image.copy_within(from..from + PAGE_SIZE, range.start);
                        Ok(hash)
                    }
                    (None, Some(page)) => {
                        self.image[range.clone()].copy_from_slice(page);
                        Ok(hash)
                    }
                    (None, None) => Err(EngineError::malformed(
                        "dup reference to a page the receiver does not hold",
                    )),
                },
                Op::Unchanged => unreachable!("skipped above"),
            };
            match written {
                Ok(hash) => {
                    self.held.wrote_logged(index, hash, Some(&mut journal));
                    self.pages += 1;
                }
                Err(err) => {
                    for (i, old) in old_pages.into_iter().rev() {
                        let page = &mut self.image[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                        match old {
                            Some(old) => page.copy_from_slice(&old),
                            None => page.fill(0),
                        }
                    }
                    self.held.undo(journal);
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}
