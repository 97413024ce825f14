//! Reading one batch: everything the receiver does before it touches its copy of the
//! guest. The checksum, the block's decompression, every record parsed and checked,
//! and the hash of every page sent whole: none of it depends on what the receiver
//! holds, so the batches of one stream are read in parallel and applied in order
//! ([`crate::Decoder::decode`]).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{EngineError, Result};
use crate::filter::Filter;
use crate::mem::{Shelf, Spares};
use crate::page_slab::{SlabPage, SlabRun, Slabs};
use crate::wire::{Codec, Header, Kind, MAX_DELTA};
use crate::{hash_page, varint, PAGE_SIZE};

/// What reading a batch needs of the receiver: nothing a batch changes.
pub(crate) struct Reader {
    /// pages of the guest
    pages: usize,
    /// the announced hashes in announcement order (`announced-ref` positions)
    pub(crate) announced: Vec<u128>,
    /// zstd contexts not in use (one per thread reading a zstd batch at once)
    zstd: Spares<zstd::bulk::Decompressor<'static>>,
    /// block buffers of batches applied, for the next ones (new memory costs more
    /// than decompressing into it)
    buffers: Spares<Vec<u8>>,
    /// where blocks decompressed straight into page memory are carved from (and
    /// where those of batches dropped unapplied go back)
    runs: Arc<Mutex<Slabs>>,
}

/// Block buffers kept for reuse: at most this many (as many as the decoder's read-ahead,
/// 64 MiB, holds in blocks of 1,024 pages, the encoder's default batch: reading ahead
/// into fresh memory costs the faults and clearing of every page), ...
const BUFFERS: usize = 16;
/// ... of at most this size each (a block of 1,024 pages, the encoder's default
/// batch, is 4 MiB at most).
const BUFFER_MAX: usize = 8 << 20;

/// Block buffers of readers that were dropped, for the next ones (marked
/// `MADV_FREE` while they wait).
static BLOCK_SHELF: Shelf<Vec<u8>> = Shelf::new(BUFFERS, 96 << 20);

impl Drop for Reader {
    fn drop(&mut self) {
        self.buffers.shelve(&BLOCK_SHELF);
    }
}

/// A batch read and checked, to be applied.
pub(crate) struct Unpacked<'a> {
    /// the decompressed block (the batch's own bytes when it is not compressed)
    block: Block<'a>,
    raw: &'a [u8],
    /// each record's page index and what it writes there
    pub(crate) records: Vec<(usize, Record)>,
}

/// Where a batch's decompressed block is.
enum Block<'a> {
    Bytes(Cow<'a, [u8]>),
    /// in page memory of the receiver's (a block of whole pages, decompressed there)
    Pages(Carved),
}

impl Block<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::Pages(carved) => carved.bytes(),
        }
    }

    /// The bytes to change in place: none when they are the batch's own (not
    /// decompressed).
    fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Self::Bytes(Cow::Owned(bytes)) => Some(bytes),
            Self::Bytes(Cow::Borrowed(_)) => None,
            Self::Pages(carved) => carved.run.as_mut().map(SlabRun::bytes_mut),
        }
    }
}

/// A run of page memory carved for a block: its pages go back to the reader's slabs
/// if it is dropped whole (a batch that failed, or was read and never applied).
struct Carved {
    run: Option<SlabRun>,
    home: Arc<Mutex<Slabs>>,
}

impl Carved {
    fn bytes(&self) -> &[u8] {
        self.run.as_ref().map_or(&[], SlabRun::bytes)
    }

    fn into_pages(mut self) -> Vec<SlabPage> {
        self.run
            .take()
            .map_or_else(Vec::new, |run| run.into_pages().collect())
    }
}

impl Drop for Carved {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            let mut home = self.home.lock().unwrap_or_else(PoisonError::into_inner);
            for page in run.into_pages() {
                home.give_back(page);
            }
        }
    }
}

/// One record, its bytes named by where they are in the batch.
pub(crate) enum Record {
    Zero,
    Unchanged,
    /// a content named by hash (`dup-ref`, or `announced-ref` resolved)
    Dup(u128),
    /// a delta (its bytes in the block) against the page's own content
    Delta(Range<usize>),
    /// a delta against the content page `base` held when the batch began
    DeltaFrom(usize, Range<usize>),
    /// a whole page: its hash (if the batch was read with them), and where it is (in
    /// the raw area or the block)
    Page {
        hash: Option<u128>,
        raw: bool,
        at: usize,
    },
}

impl Unpacked<'_> {
    /// Bytes of the block.
    pub(crate) fn block(&self, range: Range<usize>) -> &[u8] {
        &self.block.bytes()[range]
    }

    /// A whole page of the block or the raw area.
    pub(crate) fn page(&self, raw: bool, at: usize) -> &[u8] {
        let area: &[u8] = if raw { self.raw } else { self.block.bytes() };
        &area[at..at + PAGE_SIZE]
    }

    /// The block's pages, to keep as they are (page `at / PAGE_SIZE` is the record's
    /// at `at`): when the block was decompressed into page memory and holds nothing
    /// but whole pages (no delta's bytes), else none. The block is empty afterwards.
    pub(crate) fn take_pages(&mut self) -> Option<Vec<Option<SlabPage>>> {
        if !matches!(self.block, Block::Pages(_))
            || self
                .records
                .iter()
                .any(|(_, r)| matches!(r, Record::Delta(_) | Record::DeltaFrom(..)))
        {
            return None;
        }
        match std::mem::replace(&mut self.block, Block::Bytes(Cow::Borrowed(&[]))) {
            Block::Pages(carved) => Some(carved.into_pages().into_iter().map(Some).collect()),
            Block::Bytes(_) => unreachable!("matched above"),
        }
    }
}

impl Reader {
    /// A reader for a guest of `pages` pages.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] if a zstd context cannot be created.
    pub(crate) fn new(pages: usize) -> Result<Self> {
        Ok(Self {
            pages,
            announced: Vec::new(),
            zstd: {
                let contexts = Spares::default();
                contexts.give(new_zstd()?, 1);
                contexts
            },
            buffers: Spares::default(),
            runs: Arc::new(Mutex::new(Slabs::default())),
        })
    }

    /// Page memory the reader carved and did not use (what was left of a chunk too
    /// short for a block), for the receiver's other contents.
    pub(crate) fn take_spare(&self) -> Vec<SlabPage> {
        self.lock_runs().take_spare()
    }

    fn lock_runs(&self) -> std::sync::MutexGuard<'_, Slabs> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pages of the guest.
    pub(crate) fn pages(&self) -> usize {
        self.pages
    }

    /// Verifies the batch `frame` (exactly one batch, header included, `header` read
    /// from it by [`Header::read`]: checked but for the checksum), decompresses
    /// its block and reads its records; `hashes`: hashes the pages sent whole too (on
    /// a helper thread; a caller that reads and applies the batch itself hashes each
    /// page as it copies it, while it is in cache). `into_pages`: a compressed block
    /// of whole pages' length is decompressed into fresh page memory
    /// ([`Unpacked::take_pages`]), not into a buffer to copy its pages from.
    ///
    /// # Errors
    /// [`EngineError::Malformed`] for anything that is not a valid batch for this guest
    /// (whatever depends on what the receiver holds is checked as the batch is applied).
    pub(crate) fn unpack<'a>(
        &self,
        header: Header,
        frame: &'a [u8],
        hashes: bool,
        into_pages: bool,
    ) -> Result<Unpacked<'a>> {
        let body = header.verified_body(frame)?;
        let records_len = header.records_len as usize;
        let block_len = header.block_len as usize;
        let records_area = &body[..records_len];
        let block_wire = &body[records_len..records_len + block_len];
        let raw = &body[records_len + block_len..];
        let block_raw_len = header.block_raw_len as usize;
        let mut block = match header.codec {
            // nothing in the block: an empty one is read as such whatever the codec
            Codec::None => Block::Bytes(Cow::Borrowed(block_wire)),
            _ if block_raw_len == 0 && block_wire.is_empty() => Block::Bytes(Cow::Borrowed(&[])),
            codec => self.decompress(codec, block_wire, block_raw_len, into_pages)?,
        };
        if block.bytes().len() != block_raw_len {
            return Err(EngineError::malformed(
                "block decompressed to the wrong size",
            ));
        }
        let (mut records, filtered) =
            self.records(&header, records_area, block.bytes(), raw, hashes)?;
        if !filtered.is_empty() {
            // (`records` takes filtered pages only from a decompressed block)
            let bytes = block.bytes_mut().expect("a decompressed block");
            for (k, filter) in filtered {
                if let (_, Record::Page { hash, at, .. }) = &mut records[k] {
                    let page = &mut bytes[*at..*at + PAGE_SIZE];
                    filter.undo(page);
                    if hashes {
                        *hash = Some(hash_page(page));
                    }
                }
            }
        }
        Ok(Unpacked {
            block,
            raw,
            records,
        })
    }

    /// The compressed block `wire`, of `len` bytes decompressed: into fresh page memory
    /// when `into_pages` and `len` is whole pages, else into a buffer.
    fn decompress(
        &self,
        codec: Codec,
        wire: &[u8],
        len: usize,
        into_pages: bool,
    ) -> Result<Block<'static>> {
        let run = (into_pages && len % PAGE_SIZE == 0)
            .then(|| self.lock_runs().run(len / PAGE_SIZE))
            .flatten();
        if let Some(run) = run {
            // (on an error the run's pages go back to the reader's slabs)
            let mut carved = Carved {
                run: Some(run),
                home: Arc::clone(&self.runs),
            };
            let out = carved.run.as_mut().expect("just made").bytes_mut();
            match codec {
                Codec::Lz4 => crate::lz4_block::decompress_to(wire, out)?,
                _ => {
                    if self.with_zstd(|z| z.decompress_to_buffer(wire, out))? != len {
                        return Err(EngineError::malformed(
                            "block decompressed to the wrong size",
                        ));
                    }
                }
            }
            return Ok(Block::Pages(carved));
        }
        let mut out = self.buffers.take_or_shelved(&BLOCK_SHELF);
        match codec {
            Codec::Lz4 => crate::lz4_block::decompress_into(wire, len, &mut out)?,
            _ => {
                out.clear();
                crate::mem::reserve(&mut out, len);
                self.with_zstd(|z| z.decompress_to_buffer(wire, &mut out))?;
            }
        }
        Ok(Block::Bytes(Cow::Owned(out)))
    }

    /// Takes `batch`'s block buffer back for later batches; returns the pages its block
    /// was decompressed into, if they were not taken (for the receiver's other contents).
    pub(crate) fn recycle(&self, batch: Unpacked<'_>) -> Vec<SlabPage> {
        match batch.block {
            Block::Bytes(Cow::Owned(buffer)) => {
                if buffer.capacity() <= BUFFER_MAX {
                    self.buffers.give(buffer, BUFFERS);
                }
                Vec::new()
            }
            Block::Bytes(Cow::Borrowed(_)) => Vec::new(),
            Block::Pages(carved) => carved.into_pages(),
        }
    }

    /// `decompress` with a zstd context of the reader's (one per thread reading a
    /// zstd batch at once).
    fn with_zstd(
        &self,
        decompress: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<usize>,
    ) -> Result<usize> {
        let mut context = match self.zstd.kept() {
            Some(context) => context,
            None => new_zstd()?,
        };
        let done = decompress(&mut context);
        self.zstd.give(context, usize::MAX);
        done.map_err(|e| EngineError::malformed(format!("zstd: {e}")))
    }

    /// The batch's records, checked against its areas and the guest, and which of them
    /// are filtered pages (their bytes in the block still filtered, their hash not yet
    /// taken).
    #[allow(clippy::type_complexity)]
    fn records(
        &self,
        header: &Header,
        mut input: &[u8],
        block: &[u8],
        raw: &[u8],
        hashes: bool,
    ) -> Result<(Vec<(usize, Record)>, Vec<(usize, Filter)>)> {
        let hash = |page: &[u8]| hashes.then(|| hash_page(page));
        let mut records = Vec::with_capacity(header.records as usize);
        let mut filtered = Vec::new();
        let (mut block_at, mut raw_at) = (0usize, 0usize);
        let block_kind = match header.codec {
            Codec::Lz4 => Some(Kind::Lz4),
            Codec::Zstd => Some(Kind::Zstd),
            Codec::None => None,
        };
        let mut position: i64 = 0; // the batch's last announced-ref position
        let mut previous: i64 = -1; // the last record's page index

        // pages the records named so far (`header.records` in all; a run names several)
        let mut named: u32 = 0;
        while named < header.records {
            named += 1;
            let kind_byte = *input
                .first()
                .ok_or_else(|| EngineError::malformed("truncated record"))?;
            input = &input[1..];
            let kind = Kind::from_byte(kind_byte)?;
            // the index as a step from the previous record's index + 1
            let step = varint::get_signed(&mut input)?;
            let index = previous
                .checked_add(1)
                .and_then(|next| next.checked_add(step))
                .ok_or_else(|| EngineError::malformed("page index overflows"))?;
            previous = index;
            let index = self.page_index(index, "page index")?;
            let record = match kind {
                Kind::ZeroRun | Kind::UnchangedRun => {
                    let more = u32::try_from(varint::get(&mut input)?)
                        .ok()
                        .filter(|&more| more <= header.records - named)
                        .ok_or_else(|| {
                            EngineError::malformed("run longer than the batch's pages")
                        })?;
                    let last =
                        self.page_index(index as u64 + u64::from(more), "run's last page")?;
                    named += more;
                    previous = last as i64;
                    for page in index..=last {
                        records.push((
                            page,
                            if kind == Kind::ZeroRun {
                                Record::Zero
                            } else {
                                Record::Unchanged
                            },
                        ));
                    }
                    continue;
                }
                Kind::Zero => Record::Zero,
                // (whether the receiver has the page, or an earlier record of the batch
                // wrote it, is known when the batch is applied, in order)
                Kind::Unchanged => Record::Unchanged,
                Kind::DupRef => {
                    if input.len() < 16 {
                        return Err(EngineError::malformed("truncated dup reference"));
                    }
                    let mut h = [0u8; 16];
                    h.copy_from_slice(&input[..16]);
                    input = &input[16..];
                    Record::Dup(u128::from_le_bytes(h))
                }
                Kind::AnnouncedRef => {
                    position = position
                        .checked_add(varint::get_signed(&mut input)?)
                        .ok_or_else(|| EngineError::malformed("announced position overflows"))?;
                    let hash = usize::try_from(position)
                        .ok()
                        .and_then(|p| self.announced.get(p))
                        .ok_or_else(|| {
                            EngineError::malformed(format!(
                                "announced position {position} outside the announcement"
                            ))
                        })?;
                    Record::Dup(*hash)
                }
                // (as for unchanged: an earlier record of the batch may write the page)
                Kind::Delta => Record::Delta(take_delta(&mut input, block.len(), &mut block_at)?),
                Kind::DeltaFrom => {
                    // (the content the base held when the batch began: looked up as it
                    // is applied, before anything of it is written)
                    let base = self.page_index(varint::get(&mut input)?, "delta base")?;
                    Record::DeltaFrom(base, take_delta(&mut input, block.len(), &mut block_at)?)
                }
                Kind::Lz4 | Kind::Zstd => {
                    if Some(kind) != block_kind {
                        return Err(EngineError::malformed(
                            "record kind does not match the batch codec",
                        ));
                    }
                    let at = take_page(block.len(), &mut block_at)?;
                    Record::Page {
                        hash: hash(&block[at..block_at]),
                        raw: false,
                        at,
                    }
                }
                Kind::Filtered => {
                    if header.version < 5 {
                        return Err(EngineError::malformed(
                            "filtered record in a version 4 batch",
                        ));
                    }
                    if block_kind.is_none() {
                        return Err(EngineError::malformed(
                            "filtered record in a batch without compression",
                        ));
                    }
                    let byte = *input
                        .first()
                        .ok_or_else(|| EngineError::malformed("truncated record"))?;
                    input = &input[1..];
                    filtered.push((records.len(), Filter::from_byte(byte)?));
                    let at = take_page(block.len(), &mut block_at)?;
                    Record::Page {
                        hash: None,
                        raw: false,
                        at,
                    }
                }
                Kind::Raw => {
                    let at = raw_at;
                    raw_at += PAGE_SIZE;
                    if raw_at > raw.len() {
                        return Err(EngineError::malformed("raw page runs past the raw area"));
                    }
                    Record::Page {
                        hash: hash(&raw[at..raw_at]),
                        raw: true,
                        at,
                    }
                }
            };
            records.push((index, record));
        }
        if !input.is_empty() || block_at != block.len() || raw_at != raw.len() {
            return Err(EngineError::malformed("batch areas have unused bytes"));
        }
        Ok((records, filtered))
    }

    /// `value` as a page of the guest (`what` names it in the error).
    fn page_index<T>(&self, value: T, what: &str) -> Result<usize>
    where
        T: TryInto<usize> + std::fmt::Display + Copy,
    {
        value
            .try_into()
            .ok()
            .filter(|&i| i < self.pages)
            .ok_or_else(|| EngineError::malformed(format!("{what} {value} out of range")))
    }
}

fn new_zstd() -> Result<zstd::bulk::Decompressor<'static>> {
    zstd::bulk::Decompressor::new().map_err(|e| EngineError::invalid(format!("zstd: {e}")))
}

/// Where the block's next page starts (the block is `block_len` long).
fn take_page(block_len: usize, block_at: &mut usize) -> Result<usize> {
    let at = *block_at;
    *block_at += PAGE_SIZE;
    if *block_at > block_len {
        return Err(EngineError::malformed(
            "compressed pages run past the block",
        ));
    }
    Ok(at)
}

/// The next delta of the batch: its length from the record, its place in the block
/// (`block_len` long).
fn take_delta(input: &mut &[u8], block_len: usize, block_at: &mut usize) -> Result<Range<usize>> {
    let len = usize::try_from(varint::get(input)?)
        .ok()
        .filter(|&l| l <= MAX_DELTA)
        .ok_or_else(|| EngineError::malformed("delta too long"))?;
    let start = *block_at;
    let end = start + len;
    if end > block_len {
        return Err(EngineError::malformed("delta runs past the block"));
    }
    *block_at = end;
    Ok(start..end)
}
