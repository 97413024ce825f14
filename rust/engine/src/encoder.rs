//! The sender: turns rounds of offered pages into batches of the wire format.

use std::collections::{HashMap, VecDeque};

use crate::error::{EngineError, Result};
use crate::holdings::Holdings;
use crate::wire::{Codec, Header, Kind, MAX_DELTA, MAX_RECORDS};
use crate::{delta, hash_page, is_zero_page, varint, PAGE_SIZE};

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Compression of each batch's block.
    pub codec: Codec,
    /// zstd level (ignored for other codecs).
    pub zstd_level: i32,
    /// Send pages the receiver already holds elsewhere as 16-byte references.
    pub dedup: bool,
    /// Pages whose previous version is kept for deltas (0 disables deltas).
    pub delta_cache_pages: usize,
    /// Pages per batch.
    pub batch_pages: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            codec: Codec::Lz4,
            zstd_level: 1,
            dedup: true,
            delta_cache_pages: 8192,
            batch_pages: 1024,
        }
    }
}

/// Counts of the records an encoder produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Pages offered.
    pub pages: u64,
    /// Zero records.
    pub zero: u64,
    /// Unchanged records.
    pub unchanged: u64,
    /// Duplicate references.
    pub dup: u64,
    /// Deltas.
    pub delta: u64,
    /// Pages in compressed blocks.
    pub compressed: u64,
    /// Raw pages.
    pub raw: u64,
    /// Bytes written.
    pub wire_bytes: u64,
}

/// The sender's state for one guest.
pub struct Encoder {
    config: EncoderConfig,
    held: Holdings,
    previous: HashMap<u64, Box<[u8]>>,
    order: VecDeque<u64>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// Running totals.
    pub stats: EncodeStats,
}

/// Heuristic for pages not worth compressing: many distinct byte values in a sample.
fn looks_incompressible(page: &[u8]) -> bool {
    let mut seen = [false; 256];
    let mut distinct = 0;
    for &b in page.iter().step_by(8) {
        if !seen[b as usize] {
            seen[b as usize] = true;
            distinct += 1;
        }
    }
    distinct > 200
}

impl Encoder {
    /// A new encoder for a guest of `pages` pages.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] for a zero batch size or a zstd context error.
    pub fn new(pages: usize, config: EncoderConfig) -> Result<Self> {
        if config.batch_pages == 0 || config.batch_pages > MAX_RECORDS as usize {
            return Err(EngineError::invalid("batch_pages must be 1..=65536"));
        }
        let zstd = match config.codec {
            Codec::Zstd => Some(
                zstd::bulk::Compressor::new(config.zstd_level)
                    .map_err(|e| EngineError::invalid(format!("zstd: {e}")))?,
            ),
            _ => None,
        };
        Ok(Self {
            config,
            held: Holdings::new(pages),
            previous: HashMap::new(),
            order: VecDeque::new(),
            zstd,
            stats: EncodeStats::default(),
        })
    }

    fn remember(&mut self, index: u64, page: &[u8]) {
        if self.config.delta_cache_pages == 0 {
            return;
        }
        if let Some(slot) = self.previous.get_mut(&index) {
            slot.copy_from_slice(page);
            return;
        }
        if self.previous.len() >= self.config.delta_cache_pages {
            if let Some(oldest) = self.order.pop_front() {
                self.previous.remove(&oldest);
            }
        }
        self.previous.insert(index, page.into());
        self.order.push_back(index);
    }

    /// Encodes the pages `indices` of `image` (a whole guest image) into batches.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] when the image does not match the guest size or
    /// an index is out of range.
    pub fn encode(&mut self, image: &[u8], indices: &[u64]) -> Result<Vec<u8>> {
        if image.len() != self.held.pages() * PAGE_SIZE {
            return Err(EngineError::invalid("image size differs from the guest's"));
        }
        let mut out = Vec::new();
        for chunk in indices.chunks(self.config.batch_pages) {
            let batch = self.encode_batch(image, chunk)?;
            out.extend_from_slice(&batch);
        }
        self.stats.wire_bytes += out.len() as u64;
        Ok(out)
    }

    fn encode_batch(&mut self, image: &[u8], indices: &[u64]) -> Result<Vec<u8>> {
        let mut records = Vec::with_capacity(indices.len() * 4);
        let mut block = Vec::new();
        let mut raw = Vec::new();
        let block_kind = match self.config.codec {
            Codec::Lz4 => Some(Kind::Lz4),
            Codec::Zstd => Some(Kind::Zstd),
            Codec::None => None,
        };
        for &index in indices {
            let i = usize::try_from(index)
                .ok()
                .filter(|&i| i < self.held.pages())
                .ok_or_else(|| EngineError::invalid(format!("page index {index} out of range")))?;
            let page = &image[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            let hash = hash_page(page);
            self.stats.pages += 1;
            let kind = if is_zero_page(page) {
                Kind::Zero
            } else if self.held.hash_of(i) == Some(hash) {
                Kind::Unchanged
            } else if self.config.dedup && self.held.holder_of(hash).is_some() {
                Kind::DupRef
            } else {
                let old_matches = self.held.hash_of(i).is_some();
                let delta = self
                    .previous
                    .get(&index)
                    .filter(|_| old_matches)
                    .and_then(|old| delta::encode(old, page, MAX_DELTA / 4));
                if let Some(d) = delta {
                    records.push(Kind::Delta as u8);
                    varint::put(&mut records, index);
                    varint::put(&mut records, d.len() as u64);
                    raw.extend_from_slice(&d);
                    self.stats.delta += 1;
                    self.finish_page(i, index, page, hash);
                    continue;
                }
                match block_kind {
                    Some(kind) if !looks_incompressible(page) => {
                        block.extend_from_slice(page);
                        kind
                    }
                    _ => {
                        raw.extend_from_slice(page);
                        Kind::Raw
                    }
                }
            };
            records.push(kind as u8);
            varint::put(&mut records, index);
            match kind {
                Kind::Zero => self.stats.zero += 1,
                Kind::Unchanged => self.stats.unchanged += 1,
                Kind::DupRef => {
                    records.extend_from_slice(&hash.to_le_bytes());
                    self.stats.dup += 1;
                }
                Kind::Raw => self.stats.raw += 1,
                _ => self.stats.compressed += 1,
            }
            self.finish_page(i, index, page, hash);
        }
        let (codec, compressed) = if block.is_empty() {
            (Codec::None, Vec::new())
        } else {
            match self.config.codec {
                Codec::Lz4 => (Codec::Lz4, lz4_flex::compress(&block)),
                Codec::Zstd => {
                    let ctx = self.zstd.as_mut().expect("zstd context exists for zstd");
                    let out = ctx
                        .compress(&block)
                        .map_err(|e| EngineError::invalid(format!("zstd: {e}")))?;
                    (Codec::Zstd, out)
                }
                Codec::None => unreachable!("no block without a codec"),
            }
        };
        let header = Header {
            codec,
            records: u32::try_from(indices.len()).expect("batch size bounded"),
            records_len: u32::try_from(records.len()).expect("records bounded"),
            block_raw_len: u32::try_from(block.len()).expect("block bounded"),
            block_len: u32::try_from(compressed.len()).expect("block bounded"),
            raw_len: u32::try_from(raw.len()).expect("raw bounded"),
        };
        let mut body = records;
        body.extend_from_slice(&compressed);
        body.extend_from_slice(&raw);
        Ok(header.frame(&body))
    }

    fn finish_page(&mut self, i: usize, index: u64, page: &[u8], hash: u128) {
        self.held.wrote(i, hash);
        // the delta base must be exactly the receiver's copy: remember every page sent
        self.remember(index, page);
    }
}
