//! The receiver: verifies batches and applies them to its copy of the guest's memory.
//!
//! The copy is content-addressed: each page index names the hash of its content
//! ([`Holdings`]) and each distinct non-zero content is kept once, shared (`Arc`) with
//! the page store it may have come from or go to. Zero pages take no memory, a page
//! repeated a thousand times takes one page, and a `dup-ref` to an announced page costs
//! no copy at all; only memory actually distinct is touched (fresh memory is the
//! largest cost of receiving on these machines).
//!
//! Memory is bounded by the guest size given at construction, whatever the input
//! claims: every length is checked against the header and the guest before use, and a
//! batch is verified (checksum, sizes, indices) before any page of it is written.

use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::fasthash::FastMap;
use crate::holdings::{Holdings, Undo};
use crate::mem::write_slice;
use crate::scan::{zero_hash, ZERO_PAGE};
use crate::store::{PageStore, Pinned};
use crate::wire::{Codec, Header, Kind, MAX_DELTA};
use crate::{delta, hash_page, is_zero_page, varint, PAGE_SIZE};

/// `order` (announced hashes) as an announcement: 16 bytes each, little-endian.
#[must_use]
pub fn announcement(order: &[u128]) -> Vec<u8> {
    let mut out = Vec::with_capacity(order.len() * 16);
    for hash in order {
        out.extend_from_slice(&hash.to_le_bytes());
    }
    out
}

/// The receiver's state for one guest.
pub struct Decoder {
    /// every distinct non-zero content some page holds (and, within a batch, the
    /// contents that batch made)
    contents: FastMap<u128, Arc<[u8]>>,
    held: Holdings,
    zstd: zstd::bulk::Decompressor<'static>,
    pinned: Pinned,
    /// the announced hashes in announcement order (`announced-ref` positions)
    announced: Vec<u128>,
    /// page buffers of dropped contents no one else held, for the next new contents
    /// (the allocator's own reuse walks cold free lists on every page)
    spare: Vec<Arc<[u8]>>,
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
    /// a delta against the content with this hash
    DeltaFrom(u128, &'a [u8]),
    Page(&'a [u8]),
}

/// Page buffers kept for reuse: at most this many (4 MiB).
const SPARE_PAGES: usize = 1024;

/// A copy of `src`, in `spare` (a page buffer no one else holds) when there is one.
fn filled(spare: Option<Arc<[u8]>>, src: &[u8]) -> Arc<[u8]> {
    match spare {
        Some(mut page) => {
            Arc::get_mut(&mut page)
                .expect("spare pages are unshared")
                .copy_from_slice(src);
            page
        }
        None => Arc::from(src),
    }
}

/// A copy of `base` (in `spare`, if any) with `delta` applied.
fn patched(base: &[u8], delta: &[u8], spare: Option<Arc<[u8]>>) -> Result<Arc<[u8]>> {
    let mut page = filled(spare, base);
    delta::apply(Arc::get_mut(&mut page).expect("just made"), delta)?;
    Ok(page)
}

/// The next delta of the batch: its length from the record, its bytes from the block.
fn take_delta<'a>(input: &mut &[u8], block: &'a [u8], block_at: &mut usize) -> Result<&'a [u8]> {
    let len = usize::try_from(varint::get(input)?)
        .ok()
        .filter(|&l| l <= MAX_DELTA)
        .ok_or_else(|| EngineError::malformed("delta too long"))?;
    let end = *block_at + len;
    if end > block.len() {
        return Err(EngineError::malformed("delta runs past the block"));
    }
    let d = &block[*block_at..end];
    *block_at = end;
    Ok(d)
}

impl Decoder {
    /// A receiver for a guest of `pages` pages, all zero initially.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] if the zstd context cannot be created.
    pub fn new(pages: usize) -> Result<Self> {
        Ok(Self {
            contents: FastMap::default(),
            held: Holdings::new(pages),
            zstd: zstd::bulk::Decompressor::new()
                .map_err(|e| EngineError::invalid(format!("zstd: {e}")))?,
            pinned: Pinned::new(),
            announced: Vec::new(),
            spare: Vec::new(),
            batches: 0,
            pages: 0,
        })
    }

    /// Pins every page of `store` for this stream and returns their hashes (16 bytes
    /// each, little-endian) to announce to the sender: `dup-ref` records may then name
    /// them even though this guest never held them.
    pub fn announce(&mut self, store: &PageStore) -> Vec<u8> {
        let (pinned, order) = store.pin_in_order();
        let hashes = announcement(&order);
        self.adopt(pinned, order);
        hashes
    }

    /// Takes pages pinned earlier and the order they were announced in: `dup-ref`
    /// records may name them by hash, `announced-ref` records by position.
    pub fn adopt(&mut self, pinned: Pinned, order: Vec<u128>) {
        self.pinned = pinned;
        self.announced = order;
    }

    /// Pages of the guest.
    #[must_use]
    pub fn pages(&self) -> usize {
        self.held.pages()
    }

    /// The receiver's copy of page `index` (zero if it never had one).
    ///
    /// # Panics
    /// When `index` is not a page of the guest.
    #[must_use]
    pub fn page(&self, index: usize) -> &[u8] {
        self.held.hash_of(index).map_or(&ZERO_PAGE, |hash| {
            self.content(hash).expect("held contents are kept")
        })
    }

    /// The content with hash `hash`, if the receiver keeps it (zero always).
    fn content(&self, hash: u128) -> Option<&[u8]> {
        if hash == zero_hash() {
            Some(&ZERO_PAGE)
        } else {
            self.contents.get(&hash).map(|page| &page[..])
        }
    }

    /// The receiver's copy of page `index`, shared, unless it is zero.
    #[must_use]
    pub fn shared_page(&self, index: usize) -> Option<(u128, Arc<[u8]>)> {
        let hash = self.held.hash_of(index).filter(|&h| h != zero_hash())?;
        Some((hash, Arc::clone(&self.contents[&hash])))
    }

    /// A copy of the receiver's whole guest memory.
    #[must_use]
    pub fn image(&self) -> Vec<u8> {
        let len = self.pages() * PAGE_SIZE;
        let mut out = Vec::with_capacity(len);
        self.copy_image(&mut out.spare_capacity_mut()[..len]);
        // SAFETY: copy_image wrote every byte of the first `len`
        unsafe { out.set_len(len) };
        out
    }

    /// Copies the receiver's whole guest memory into `out` (`pages()` pages long; its
    /// bytes need not be initialised: every one is written).
    ///
    /// # Panics
    /// When `out` is not exactly the guest's size.
    pub fn copy_image(&self, out: &mut [MaybeUninit<u8>]) {
        assert_eq!(out.len(), self.pages() * PAGE_SIZE, "one guest's worth");
        for (index, page) in out.chunks_exact_mut(PAGE_SIZE).enumerate() {
            write_slice(page, self.page(index));
        }
    }

    /// Distinct non-zero contents held (4 KiB each).
    #[must_use]
    pub fn distinct_contents(&self) -> usize {
        self.contents.len()
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
        let decompressed;
        let block: &[u8] = match header.codec {
            // nothing in the block: an empty one is read as such whatever the codec
            Codec::None => block_wire,
            _ if block_raw_len == 0 && block_wire.is_empty() => &[],
            Codec::Lz4 => {
                decompressed = crate::lz4_block::decompress(block_wire, block_raw_len)?;
                &decompressed
            }
            Codec::Zstd => {
                decompressed = self
                    .zstd
                    .decompress(block_wire, block_raw_len)
                    .map_err(|e| EngineError::malformed(format!("zstd: {e}")))?;
                &decompressed
            }
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
        let mut position: i64 = 0; // the batch's last announced-ref position
        let mut previous: i64 = -1; // the last record's page index
        for _ in 0..header.records {
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
            let op = match kind {
                Kind::Zero => Op::Zero,
                // (whether the receiver has the page, or an earlier record of the batch
                // wrote it, is known when the batch is applied, in order)
                Kind::Unchanged => Op::Unchanged,
                Kind::DupRef => {
                    if input.len() < 16 {
                        return Err(EngineError::malformed("truncated dup reference"));
                    }
                    let mut h = [0u8; 16];
                    h.copy_from_slice(&input[..16]);
                    input = &input[16..];
                    Op::Dup(u128::from_le_bytes(h))
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
                    Op::Dup(*hash)
                }
                // (as for unchanged: an earlier record of the batch may write the page)
                Kind::Delta => Op::Delta(take_delta(&mut input, block, &mut block_at)?),
                Kind::DeltaFrom => {
                    // resolved before anything of the batch is written: the content
                    // the base page held when the batch began (kept until it ends)
                    let base = self.page_index(varint::get(&mut input)?, "delta base")?;
                    let base = self.held.hash_of(base).ok_or_else(|| {
                        EngineError::malformed("delta from a page the receiver never had")
                    })?;
                    Op::DeltaFrom(base, take_delta(&mut input, block, &mut block_at)?)
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
            ops.push((index, op));
        }
        if !input.is_empty() || block_at != block.len() || raw_at != raw_area.len() {
            return Err(EngineError::malformed("batch areas have unused bytes"));
        }
        self.write_all(ops)
    }

    /// `value` as a page of the guest (`what` names it in the error).
    fn page_index<T>(&self, value: T, what: &str) -> Result<usize>
    where
        T: TryInto<usize> + std::fmt::Display + Copy,
    {
        value
            .try_into()
            .ok()
            .filter(|&i| i < self.held.pages())
            .ok_or_else(|| EngineError::malformed(format!("{what} {value} out of range")))
    }

    fn write_all(&mut self, ops: Vec<(usize, Op<'_>)>) -> Result<()> {
        // A dup reference, a delta or an unchanged record can only be found bad while
        // applying (they depend on earlier writes of the same batch): journal the holdings,
        // note the contents this batch made, and drop replaced contents once it succeeded.
        let mut journal = Vec::new();
        let mut made = Vec::new();
        let mut replaced = Vec::new();
        for (index, op) in ops {
            if let Err(err) = self.write(index, op, &mut journal, &mut made, &mut replaced) {
                self.held.undo(journal);
                self.drop_unheld(made);
                return Err(err);
            }
        }
        self.drop_unheld(replaced);
        Ok(())
    }

    /// Forgets those of `hashes` no page holds.
    fn drop_unheld(&mut self, hashes: Vec<u128>) {
        for hash in hashes {
            if self.held.holders(hash) == 0 {
                if let Some(page) = self.contents.remove(&hash) {
                    self.recycle(page);
                }
            }
        }
    }

    fn write(
        &mut self,
        index: usize,
        op: Op<'_>,
        journal: &mut Vec<Undo>,
        made: &mut Vec<u128>,
        replaced: &mut Vec<u128>,
    ) -> Result<()> {
        let old = self.held.hash_of(index);
        let hash = match op {
            Op::Unchanged => {
                // (the sender re-registers the page in its content index; a receiver
                // resolves references by any holder and has nothing to do)
                return old.map(|_| ()).ok_or_else(|| {
                    EngineError::malformed("unchanged page the receiver never had")
                });
            }
            Op::Zero => zero_hash(),
            Op::Page(src) => {
                let hash = hash_page(src);
                if self.is_new(hash) {
                    let page = filled(self.spare.pop(), src);
                    self.keep(hash, page, made);
                }
                hash
            }
            Op::Delta(d) => {
                if old.is_none() {
                    return Err(EngineError::malformed(
                        "delta for a page the receiver never had",
                    ));
                }
                let spare = self.spare.pop();
                let page = patched(self.page(index), d, spare)?;
                self.keep_made(page, made)
            }
            Op::DeltaFrom(base, d) => {
                let spare = self.spare.pop();
                let base = self
                    .content(base)
                    .ok_or_else(|| EngineError::malformed("delta base not held"))?;
                let page = patched(base, d, spare)?;
                self.keep_made(page, made)
            }
            Op::Dup(hash) => {
                // any page holding that content will do (the sender names only the one it
                // registered, but a decoder need not know which)
                if self.held.holders(hash) == 0 {
                    let Some(page) = self.pinned.get(&hash) else {
                        return Err(EngineError::malformed(
                            "dup reference to a page the receiver does not hold",
                        ));
                    };
                    if hash != zero_hash() && !self.contents.contains_key(&hash) {
                        self.contents.insert(hash, Arc::clone(page));
                        made.push(hash);
                    }
                }
                hash
            }
        };
        self.held.wrote_logged(index, hash, Some(journal));
        if let Some(old) = old.filter(|&o| o != hash && o != zero_hash()) {
            replaced.push(old);
        }
        self.pages += 1;
        Ok(())
    }

    /// True unless content `hash` is zero or already kept.
    fn is_new(&self, hash: u128) -> bool {
        hash != zero_hash() && !self.contents.contains_key(&hash)
    }

    /// Keeps new content `hash`, `page`, noting it in `made`.
    fn keep(&mut self, hash: u128, page: Arc<[u8]>, made: &mut Vec<u128>) {
        debug_assert!(!is_zero_page(&page));
        self.contents.insert(hash, page);
        made.push(hash);
    }

    /// Keeps `page`, just made, unless its content is zero or already kept (its buffer
    /// then goes back to the spares); returns its hash.
    fn keep_made(&mut self, page: Arc<[u8]>, made: &mut Vec<u128>) -> u128 {
        let hash = hash_page(&page);
        if self.is_new(hash) {
            self.keep(hash, page, made);
        } else {
            self.recycle(page);
        }
        hash
    }

    /// Keeps `page`'s buffer for a later new content, if no one else holds it and
    /// there is room among the spares.
    fn recycle(&mut self, mut page: Arc<[u8]>) {
        if self.spare.len() < SPARE_PAGES && Arc::get_mut(&mut page).is_some() {
            self.spare.push(page);
        }
    }
}
