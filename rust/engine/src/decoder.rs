//! The receiver: verifies batches and applies them to its copy of the guest's memory.
//!
//! The copy is content-addressed: each page index names the hash of its content
//! ([`Holdings`]) and each distinct non-zero content is kept once. Zero pages take no
//! memory, a page repeated a thousand times takes one page, and a `dup-ref` to an
//! announced page costs no copy at all (the page store's pages are shared, `Arc`);
//! only memory actually distinct is touched. Fresh memory is the largest cost of
//! receiving on these machines: the contents the receiver makes are carved from
//! 8 MiB buffers advised for huge pages ([`page_slab`](crate::page_slab)), which
//! fault in 2 MiB at a time, and a dropped content's buffer is reused.
//!
//! Memory is bounded by the guest size given at construction, whatever the input
//! claims: every length is checked against the header and the guest before use, and a
//! batch is verified (checksum, sizes, indices) before any page of it is written.

use std::collections::hash_map::{Entry, VacantEntry};
use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::fasthash::FastMap;
use crate::holdings::{Holdings, Undo};
use crate::mem::write_slice;
use crate::page_slab::{SlabPage, Slabs};
use crate::scan::{zero_hash, ZERO_PAGE};
use crate::store::{PageStore, Pinned};
use crate::unpack::{Reader, Record, Unpacked};
use crate::wire::Header;
use crate::workers::{helper_pool, Workers};
use crate::{delta, hash_page, is_zero_page, PAGE_SIZE};

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
    memory: Memory,
    reader: Reader,
    /// the helpers reading batches ahead of the one applied (threads - 1 of them)
    pool: Option<rayon::ThreadPool>,
    /// Batches applied.
    pub batches: u64,
    /// Pages written (by the batches applied).
    pub pages: u64,
}

/// The receiver's copy of the guest, which batches are applied to (one at a time).
struct Memory {
    /// every distinct non-zero content some page holds (and, within a batch, the
    /// contents that batch made)
    contents: FastMap<u128, Content>,
    held: Holdings,
    pinned: Pinned,
    /// the buffers of the contents the receiver makes, and of dropped ones, for the
    /// next (the allocator's own reuse walks cold free lists on every page)
    slabs: Slabs,
}

/// A content the receiver keeps: a page it made, or one of the page store's.
enum Content {
    Own(SlabPage),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Content {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Own(page) => &page[..],
            Self::Shared(page) => page,
        }
    }
}

enum Op<'a> {
    Zero,
    Unchanged,
    Dup(u128),
    Delta(&'a [u8]),
    /// a delta against the content with this hash
    DeltaFrom(u128, &'a [u8]),
    /// a page and its hash
    Page(&'a [u8], u128),
}

/// Decompressed batches read ahead of the one applied may hold this much together
/// (the next one to apply is always read, however large).
const READ_AHEAD: usize = 64 << 20;

/// A copy of `base` with `delta` applied.
fn patched(slabs: &mut Slabs, base: &[u8], delta: &[u8]) -> Result<Content> {
    let mut page = slabs.filled(base);
    match delta::apply(&mut page[..], delta) {
        Ok(()) => Ok(Content::Own(page)),
        Err(err) => {
            slabs.give_back(page);
            Err(err)
        }
    }
}

/// The content with hash `hash`, if the receiver keeps it (zero always).
fn content_in(contents: &FastMap<u128, Content>, hash: u128) -> Option<&[u8]> {
    if hash == zero_hash() {
        Some(&ZERO_PAGE)
    } else {
        contents.get(&hash).map(|page| &page[..])
    }
}

/// The map's empty slot for content `hash`, unless the content is zero (never kept) or
/// kept already: one probe of the map, where a lookup and then an insert take two.
fn new_slot(
    contents: &mut FastMap<u128, Content>,
    hash: u128,
) -> Option<VacantEntry<'_, u128, Content>> {
    if hash == zero_hash() {
        return None;
    }
    match contents.entry(hash) {
        Entry::Vacant(slot) => Some(slot),
        Entry::Occupied(_) => None,
    }
}

/// A batch: its header (checked but for the checksum) and its bytes, header included.
type Batch<'a> = (Header, &'a [u8]);

/// `input` cut into batches, each with the size of its decompressed block; and the
/// error that stopped the cutting, if any.
fn batches_of(mut input: &[u8]) -> (Vec<(usize, Batch<'_>)>, Option<EngineError>) {
    let mut out = Vec::new();
    while !input.is_empty() {
        match Header::read(input) {
            Ok((header, len)) => {
                out.push((header.block_raw_len as usize, (header, &input[..len])));
                input = &input[len..];
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

impl Decoder {
    /// A receiver for a guest of `pages` pages, all zero initially, reading batches on
    /// the caller's thread alone.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] if the zstd context cannot be created, or the
    /// system refuses the memory for the guest's page state.
    pub fn new(pages: usize) -> Result<Self> {
        Self::with_threads(pages, 1)
    }

    /// A receiver for a guest of `pages` pages that reads the batches of one
    /// [`decode`](Self::decode) call on `threads` threads (the caller's and a pool of
    /// `threads - 1`) while it applies them in order on the caller's.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] for a thread count outside 1..=1024, or if the
    /// zstd context or the thread pool cannot be created, or the system refuses the
    /// memory for the guest's page state.
    pub fn with_threads(pages: usize, threads: usize) -> Result<Self> {
        Ok(Self {
            memory: Memory {
                contents: FastMap::default(),
                held: Holdings::new(pages)?,
                pinned: Pinned::new(),
                slabs: Slabs::default(),
            },
            reader: Reader::new(pages)?,
            pool: helper_pool(threads, "novacron-dec")?,
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
        self.memory.pinned = pinned;
        self.reader.announced = order;
    }

    /// Pages of the guest.
    #[must_use]
    pub fn pages(&self) -> usize {
        self.reader.pages()
    }

    /// The receiver's copy of page `index` (zero if it never had one).
    ///
    /// # Panics
    /// When `index` is not a page of the guest.
    #[must_use]
    pub fn page(&self, index: usize) -> &[u8] {
        self.memory.page(index)
    }

    /// The receiver's copy of page `index`, unless it is zero: shared when it came
    /// from the page store, else a copy (the receiver's own pages are carved from
    /// its large buffers, which a page kept elsewhere must not hold on to).
    #[must_use]
    pub fn shared_page(&self, index: usize) -> Option<(u128, Arc<[u8]>)> {
        self.held_page(index).map(|(hash, page)| (hash, page()))
    }

    /// The hash of page `index`, unless it is zero, and what makes it a shared page
    /// (as [`shared_page`](Self::shared_page)), for a taker that may not need it.
    pub fn held_page(&self, index: usize) -> Option<(u128, impl FnOnce() -> Arc<[u8]> + '_)> {
        let memory = &self.memory;
        let hash = memory.held.hash_of(index).filter(|&h| h != zero_hash())?;
        let content = &memory.contents[&hash];
        Some((hash, move || match content {
            Content::Own(page) => Arc::from(&page[..]),
            Content::Shared(page) => Arc::clone(page),
        }))
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
        self.memory.contents.len()
    }

    /// Decodes and applies every batch in `input`; returns the number of batches.
    /// With helper threads, later batches are verified, decompressed and read while
    /// earlier ones are applied (at most [`READ_AHEAD`] bytes of blocks ahead).
    ///
    /// # Errors
    /// [`EngineError::Malformed`] for anything that is not a valid stream for this guest.
    /// Batches before the bad one stay applied; the bad one changes nothing.
    pub fn decode(&mut self, input: &[u8]) -> Result<u64> {
        let (batches, cut_short) = batches_of(input);
        let Self {
            memory,
            reader,
            pool,
            ..
        } = self;
        let (mut applied, mut written) = (0u64, 0u64);
        let helpers = pool.as_ref().filter(|_| batches.len() > 1);
        let ahead = helpers.is_some();
        let outcome = Workers::start(helpers).in_order(
            batches,
            READ_AHEAD,
            |(header, frame)| reader.unpack(header, frame, ahead),
            |unpacked| {
                let unpacked = unpacked?;
                written += memory.apply(&unpacked)?;
                reader.recycle(unpacked);
                applied += 1;
                Ok(())
            },
        );
        self.batches += applied;
        self.pages += written;
        outcome?;
        cut_short.map_or(Ok(applied), Err)
    }
}

impl Memory {
    /// The copy of page `index` (zero if it never had one).
    fn page(&self, index: usize) -> &[u8] {
        self.held.hash_of(index).map_or(&ZERO_PAGE, |hash| {
            content_in(&self.contents, hash).expect("held contents are kept")
        })
    }

    /// Applies a batch read by [`Reader::unpack`]; returns how many pages it wrote.
    fn apply(&mut self, batch: &Unpacked<'_>) -> Result<u64> {
        // the bases of delta-from records: the contents they held as the batch began
        let mut bases = Vec::new();
        for (_, record) in &batch.records {
            if let Record::DeltaFrom(base, _) = record {
                bases.push(self.held.hash_of(*base).ok_or_else(|| {
                    EngineError::malformed("delta from a page the receiver never had")
                })?);
            }
        }
        let mut bases = bases.into_iter();
        let ops = batch.records.iter().map(|(index, record)| {
            let op = match record {
                Record::Zero => Op::Zero,
                Record::Unchanged => Op::Unchanged,
                Record::Dup(hash) => Op::Dup(*hash),
                Record::Delta(range) => Op::Delta(batch.block(range.clone())),
                Record::DeltaFrom(_, range) => Op::DeltaFrom(
                    bases.next().expect("one base per delta-from"),
                    batch.block(range.clone()),
                ),
                Record::Page { hash, raw, at } => {
                    let page = batch.page(*raw, *at);
                    Op::Page(page, hash.unwrap_or_else(|| hash_page(page)))
                }
            };
            (*index, op)
        });
        self.write_all(ops)
    }

    fn write_all<'a>(&mut self, ops: impl Iterator<Item = (usize, Op<'a>)>) -> Result<u64> {
        // A dup reference, a delta or an unchanged record can only be found bad while
        // applying (they depend on earlier writes of the same batch): journal the holdings,
        // note the contents this batch made, and drop replaced contents once it succeeded.
        let mut journal = Vec::new();
        let mut made = Vec::new();
        let mut replaced = Vec::new();
        let mut written = 0;
        for (index, op) in ops {
            match self.write(index, op, &mut journal, &mut made, &mut replaced) {
                Ok(wrote) => written += u64::from(wrote),
                Err(err) => {
                    self.held.undo(journal);
                    self.drop_unheld(made);
                    return Err(err);
                }
            }
        }
        self.drop_unheld(replaced);
        Ok(written)
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

    /// Applies one record; returns whether it wrote the page.
    fn write(
        &mut self,
        index: usize,
        op: Op<'_>,
        journal: &mut Vec<Undo>,
        made: &mut Vec<u128>,
        replaced: &mut Vec<u128>,
    ) -> Result<bool> {
        let old = self.held.hash_of(index);
        let hash = match op {
            Op::Unchanged => {
                // (the sender re-registers the page in its content index; a receiver
                // resolves references by any holder and has nothing to do)
                return old.map(|_| false).ok_or_else(|| {
                    EngineError::malformed("unchanged page the receiver never had")
                });
            }
            Op::Zero => zero_hash(),
            Op::Page(src, hash) => {
                if let Some(slot) = new_slot(&mut self.contents, hash) {
                    slot.insert(Content::Own(self.slabs.filled(src)));
                    made.push(hash);
                }
                hash
            }
            Op::Delta(d) => {
                let base = old.and_then(|h| content_in(&self.contents, h));
                let base = base.ok_or_else(|| {
                    EngineError::malformed("delta for a page the receiver never had")
                })?;
                let page = patched(&mut self.slabs, base, d)?;
                self.keep_made(page, made)
            }
            Op::DeltaFrom(base, d) => {
                let base = content_in(&self.contents, base)
                    .ok_or_else(|| EngineError::malformed("delta base not held"))?;
                let page = patched(&mut self.slabs, base, d)?;
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
                        self.contents
                            .insert(hash, Content::Shared(Arc::clone(page)));
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
        Ok(true)
    }

    /// Keeps `page`, just made, unless its content is zero or already kept (its buffer
    /// then goes back to the spares); returns its hash.
    fn keep_made(&mut self, page: Content, made: &mut Vec<u128>) -> u128 {
        let hash = hash_page(&page);
        match new_slot(&mut self.contents, hash) {
            Some(slot) => {
                debug_assert!(!is_zero_page(&page));
                slot.insert(page);
                made.push(hash);
            }
            None => self.recycle(page),
        }
        hash
    }

    /// Keeps `page`'s buffer for a later new content, if it is the receiver's own.
    fn recycle(&mut self, page: Content) {
        if let Content::Own(page) = page {
            self.slabs.give_back(page);
        }
    }
}
