//! The sender: turns rounds of offered pages into batches of the wire format.
//!
//! Encoding runs in phases so that all cores can work:
//! 1. per page, in parallel: hash and zero test (or a scan's);
//! 2. in order, on the caller's thread, batch by batch ([`Round::decide`]): what the
//!    receiver holds decides `zero`, `unchanged`, `dup-ref`, or "needs content"
//!    (cheap hash-table work, and it must be sequential because every page changes
//!    what the receiver holds);
//! 3. per batch, in parallel (`batch`): deltas, the compressible/raw split, block
//!    compression and framing. A batch is built as soon as its decisions are made,
//!    while the caller decides the next ones, and copied to the call's output as soon as
//!    it and those before it are done;
//! 4. the delta cache is brought up to what the receiver now holds: deltas applied to
//!    cached bases in place and new contents copied in (both in parallel when many).

use crate::batch::{encode_batch, zstd_compress_into, Batch, Plan, Scratch, Source};
use crate::cache::PageCache;
use crate::error::{EngineError, Result};
use crate::fasthash::{FastMap, FastSet};
use crate::holdings::Holdings;
use crate::mem::{Shelf, Spares};
use crate::scan::{identify, zero_hash, PageScan};
use crate::wire::{Codec, MAX_RECORDS, OLDEST_VERSION, VERSION};
use crate::workers::{helper_pool, Workers};
use crate::PAGE_SIZE;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// Threads that encode, the caller's included (1 = the caller's thread alone; n:
    /// the caller and a pool of n - 1 helpers).
    pub threads: usize,
    /// The wire format version written: [`VERSION`] (5), or 4 for a receiver that
    /// reads only that (no `filtered` records).
    pub wire_version: u8,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            codec: Codec::Lz4,
            zstd_level: 1,
            dedup: true,
            delta_cache_pages: 8192,
            batch_pages: 1024,
            threads: 1,
            wire_version: VERSION,
        }
    }
}

/// Counts of the records an encoder produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Pages offered.
    pub pages: u64,
    /// Zero pages (alone or in runs).
    pub zero: u64,
    /// Unchanged pages (alone or in runs).
    pub unchanged: u64,
    /// Duplicate references.
    pub dup: u64,
    /// Deltas against the page's own previous version.
    pub delta: u64,
    /// Deltas against another page's previous version.
    pub delta_from: u64,
    /// Pages in compressed blocks (`filtered` ones included).
    pub compressed: u64,
    /// Pages in compressed blocks with a word-difference filter.
    pub filtered: u64,
    /// Raw pages.
    pub raw: u64,
    /// Bytes written.
    pub wire_bytes: u64,
}

impl EncodeStats {
    fn add(&mut self, other: &Self) {
        self.pages += other.pages;
        self.zero += other.zero;
        self.unchanged += other.unchanged;
        self.dup += other.dup;
        self.delta += other.delta;
        self.delta_from += other.delta_from;
        self.compressed += other.compressed;
        self.filtered += other.filtered;
        self.raw += other.raw;
        self.wire_bytes += other.wire_bytes;
    }
}

/// The sender's state for one guest.
pub struct Encoder {
    config: EncoderConfig,
    held: Holdings,
    previous: PageCache,
    /// announced hashes and their positions in the announcement
    announced: FastMap<u128, u32>,
    pool: Option<rayon::ThreadPool>,
    /// Running totals.
    pub stats: EncodeStats,
    /// Hash and zero test of each page of the last call.
    identified: Vec<(u128, bool)>,
    /// batch buffers, one set per batch being built at once (at most one per thread)
    scratch: Spares<Scratch>,
    /// buffers batches are framed in before they are copied out in order (a few: one
    /// per batch built or waiting for those before it)
    frames: Spares<Vec<u8>>,
}

/// No encoder output is longer than this per page offered: a page (raw, or compressed
/// and grown by at most lz4's or zstd's bound, well under 128 bytes for one page), its
/// record (at most 37 bytes) and, for a batch of one page, the batch's header (40).
pub const MAX_WIRE_PER_PAGE: usize = PAGE_SIZE + 256;

/// Batch buffers left by encoders that were dropped, for the next ones: a few sets,
/// as many as a few threads use (a set holds about 4 MiB per 1,024 pages of a batch,
/// in its four buffers).
static SCRATCH_SHELF: Shelf<Scratch> = Shelf::new(8, 160 << 20);
/// Frame buffers likewise (one holds a batch's output).
static FRAME_SHELF: Shelf<Vec<u8>> = Shelf::new(8, 48 << 20);

impl Drop for Encoder {
    fn drop(&mut self) {
        self.scratch.shelve(&SCRATCH_SHELF);
        self.frames.shelve(&FRAME_SHELF);
    }
}

impl Encoder {
    /// A new encoder for a guest of `pages` pages.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] for a bad batch size, thread count or wire version, a zstd
    /// level the library refuses, or memory the system refuses for the guest's page
    /// state or the delta cache. The cache holds at most one base per page of the
    /// guest (contents no page holds are dropped from it), so a larger
    /// `delta_cache_pages` is taken as `pages`.
    pub fn new(pages: usize, mut config: EncoderConfig) -> Result<Self> {
        config.delta_cache_pages = config.delta_cache_pages.min(pages);
        if config.batch_pages == 0 || config.batch_pages > MAX_RECORDS as usize {
            return Err(EngineError::invalid("batch_pages must be 1..=65536"));
        }
        if !(OLDEST_VERSION..=VERSION).contains(&config.wire_version) {
            return Err(EngineError::invalid(format!(
                "wire_version must be {OLDEST_VERSION}..={VERSION}"
            )));
        }
        if config.codec == Codec::Zstd {
            zstd_compress_into(config.zstd_level, &[0u8; 16], &mut [0u8; 128])?;
        }
        // the caller's thread is one of the `threads`: the pool holds the others
        let pool = helper_pool(config.threads, "novacron-enc")?;
        Ok(Self {
            config,
            held: Holdings::new(pages)?,
            previous: PageCache::new(config.delta_cache_pages)?,
            announced: FastMap::default(),
            pool,
            stats: EncodeStats::default(),
            identified: Vec::new(),
            scratch: Spares::default(),
            frames: Spares::default(),
        })
    }

    /// Takes the receiver's announcement (16-byte little-endian hashes of pages in its
    /// page store, see `Decoder::announce`): pages with these contents go as references,
    /// by position in it. It replaces an earlier one, as the receiver's does (positions
    /// are the receiver's latest announcement's).
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] when `hashes` is not a whole number of hashes.
    pub fn announce(&mut self, hashes: &[u8]) -> Result<usize> {
        if hashes.len() % crate::HASH_LEN != 0 {
            return Err(EngineError::invalid(
                "announced hashes must be 16 bytes each",
            ));
        }
        if hashes.len() / crate::HASH_LEN > u32::MAX as usize {
            return Err(EngineError::invalid("more than 2^32 announced hashes"));
        }
        self.announced.clear();
        for (position, chunk) in (0u32..).zip(hashes.chunks_exact(crate::HASH_LEN)) {
            let mut h = [0u8; 16];
            h.copy_from_slice(chunk);
            self.announced
                .entry(u128::from_le_bytes(h))
                .or_insert(position);
        }
        Ok(hashes.len() / crate::HASH_LEN)
    }

    /// The hash and zero test of each page of the last call that encoded pages, in
    /// the order of its indices (so a caller that keeps the pages need not hash them
    /// again).
    #[must_use]
    pub fn identified(&self) -> &[(u128, bool)] {
        &self.identified
    }

    /// Pages held in the delta cache (4 KiB each).
    #[must_use]
    pub fn cached_pages(&self) -> usize {
        self.previous.len()
    }

    /// Encodes the pages `indices` of `image` (a whole guest image): the call's batches,
    /// back to back.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] when the image does not match the guest size or
    /// an index is out of range.
    pub fn encode(&mut self, image: &[u8], indices: &[u64]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_into(image, indices, None, &mut out)?;
        Ok(out)
    }

    /// [`Encoder::encode`] for an image a [`PageScan`] already hashed: the offered
    /// pages' hashes and zero tests are taken from the scan instead of being computed
    /// again (a dirty scan followed by the encoding of the dirty pages reads every page
    /// once, not twice).
    ///
    /// The caller vouches that `scan` is a scan of exactly these bytes: a scan of other
    /// bytes makes the encoder describe pages wrongly (the pyo3 layer accepts only a
    /// scan of the very same immutable `bytes` object).
    ///
    /// # Errors
    /// As [`Encoder::encode`], and when the scan is of another number of pages.
    pub fn encode_scanned(
        &mut self,
        image: &[u8],
        indices: &[u64],
        scan: &PageScan,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_into(image, indices, Some(scan), &mut out)?;
        Ok(out)
    }

    /// [`Encoder::encode`] (or, with a scan, [`Encoder::encode_scanned`]) appending the
    /// batches to `out` as each is done, in order: no buffer of the whole call's
    /// batches is made besides `out`. On an error `out` may hold part of the call's
    /// batches, which the caller drops.
    ///
    /// # Errors
    /// As [`Encoder::encode_scanned`].
    pub fn encode_into(
        &mut self,
        image: &[u8],
        indices: &[u64],
        scan: Option<&PageScan>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if image.len() != self.held.pages() * PAGE_SIZE {
            return Err(EngineError::invalid("image size differs from the guest's"));
        }
        if scan.is_some_and(|scan| scan.pages != self.held.pages()) {
            return Err(EngineError::invalid(
                "the scan is of another number of pages",
            ));
        }
        self.run(Source::Image(image), indices, scan, out)
    }

    /// Encodes pages given one by one, as a migration stream delivers them: `pages`
    /// holds `indices.len()` pages back to back, page `k` being guest page `indices[k]`.
    /// Memory stays bounded by what the caller passes per call.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] when `pages` does not hold exactly one page per
    /// index, or an index is out of range.
    pub fn encode_pages(&mut self, indices: &[u64], pages: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_pages_into(indices, pages, &mut out)?;
        Ok(out)
    }

    /// [`Encoder::encode_pages`] appending the batches to `out`, as
    /// [`Encoder::encode_into`] does.
    ///
    /// # Errors
    /// As [`Encoder::encode_pages`].
    pub fn encode_pages_into(
        &mut self,
        indices: &[u64],
        pages: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if pages.len() != indices.len() * PAGE_SIZE {
            return Err(EngineError::invalid(
                "pages must hold exactly one page per index",
            ));
        }
        self.run(Source::Packed(pages), indices, None, out)
    }

    fn run(
        &mut self,
        source: Source<'_>,
        indices: &[u64],
        scan: Option<&PageScan>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let pages = self.held.pages();
        for &index in indices {
            if usize::try_from(index).map_or(true, |i| i >= pages) {
                return Err(EngineError::invalid(format!(
                    "page index {index} out of range"
                )));
            }
        }
        let pool = self.pool.take();
        let done = self.encode_phases(source, indices, scan, Workers::start(pool.as_ref()), out);
        self.pool = pool;
        done
    }

    fn encode_phases(
        &mut self,
        source: Source<'_>,
        indices: &[u64],
        scan: Option<&PageScan>,
        mut workers: Workers<'_>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        // phase 1: zero tests and hashes (a scan's, when there is one, are taken batch
        // by batch as the decisions come to them)
        let mut facts: Vec<(u128, bool)> = match scan {
            Some(_) => Vec::with_capacity(indices.len()),
            None => {
                let jobs = indices.chunks(IDENTIFY_PAGES).enumerate().collect();
                let identified = |(n, chunk): (usize, &[u64])| -> Vec<(u128, bool)> {
                    let first = n * IDENTIFY_PAGES;
                    let pages = chunk.iter().enumerate();
                    pages
                        .map(|(k, &index)| identify(source.page(first + k, index)))
                        .collect()
                };
                workers.each(jobs, identified).concat()
            }
        };
        // phases 2 and 3, overlapped: the caller decides batch after batch in order,
        // and each batch is built (by a helper, or by the caller once every batch is
        // decided) as soon as its decisions are made
        let config = self.config;
        let deltas = config.delta_cache_pages > 0;
        let Self {
            held,
            previous,
            announced,
            scratch,
            frames,
            ..
        } = self;
        let (cache, announced, scratch, frames) = (&*previous, &*announced, &*scratch, &*frames);
        let mut round = Round::new(indices);
        let size = balanced_batch(indices.len(), config.batch_pages, workers.threads());
        let mut chunks = indices.chunks(size).enumerate();
        let mut decide = || {
            let (n, idx) = chunks.next()?;
            if let Some(scan) = scan {
                facts.extend(idx.iter().map(|&i| scan.page(i as usize)));
            }
            let facts = &facts[n * size..n * size + idx.len()];
            let receiver = Receiver {
                held: &mut *held,
                announced,
                cache: deltas.then_some(cache),
            };
            Some((
                n * size,
                idx,
                round.decide(config.dedup, receiver, idx, facts),
            ))
        };
        // with helpers, each batch is framed in a buffer from `frames` and copied to
        // `out` in order as soon as it and those before it are done (the buffers go back
        // for the next batches: memory already touched, not a fresh allocation per
        // batch); one thread frames each batch in `out` itself
        let threads = workers.threads();
        // where `out` will end once every batch built so far is copied in (in any order:
        // their lengths add up the same): a builder faults in its batch's share of
        // `out` there, so that the copies in order (on one thread at a time) write to
        // memory already there instead of each faulting it in; only when `out` has room
        // for any output of this call, so that it cannot move meanwhile
        let frontier = AtomicUsize::new(out.len());
        let bound = indices.len().saturating_mul(MAX_WIRE_PER_PAGE);
        let room =
            (out.capacity() - out.len() >= bound).then(|| (out.as_ptr() as usize, out.capacity()));
        // a decided batch built in `buffers`, framed at the end of `frame`
        let build_into = |(first, idx, plans): (usize, &[u64], Vec<Plan>),
                          buffers: &mut Scratch,
                          frame: &mut Vec<u8>| {
            let held = (cache, announced);
            encode_batch(config, source, first, held, idx, &plans, buffers, frame)
        };
        let build = |job: (usize, &[u64], Vec<Plan>)| {
            let mut buffers = scratch.take_or_shelved(&SCRATCH_SHELF);
            let mut frame = frames.take_or_shelved(&FRAME_SHELF);
            frame.clear();
            // room for any batch of this encoder (address space only), so that a
            // frame is not made again for a batch longer than the last it held
            crate::mem::reserve(&mut frame, config.batch_pages * MAX_WIRE_PER_PAGE);
            let batch = build_into(job, &mut buffers, &mut frame);
            scratch.give(buffers, threads);
            let at = frontier.fetch_add(frame.len(), Ordering::Relaxed);
            if let Some((base, _)) = room.filter(|&(_, capacity)| at + frame.len() <= capacity) {
                crate::mem::populate(base + at, frame.len());
            }
            (batch, frame)
        };
        let mut stats = EncodeStats::default();
        // the batches' deltas that may go into their cached bases in place, copied out
        // of them (`own`: base hash, new hash, where the delta is in `own_bytes`)
        let (mut own_bytes, mut own) = (Vec::new(), Vec::new());
        let mut failed = None;
        let mut done = |batch: Result<Batch>, wire: usize| match batch {
            Ok(batch) if failed.is_none() => {
                stats.add(&batch.stats);
                stats.wire_bytes += wire as u64;
                batch.keep_in_place(&mut own_bytes, &mut own);
                true
            }
            Ok(_) => false,
            Err(e) => {
                failed.get_or_insert(e);
                false
            }
        };
        if threads == 1 {
            // one thread builds each batch in turn, in order: framed where it goes, in
            // `out` (a frame of its own would be one more copy of every byte sent)
            let mut buffers = scratch.take_or_shelved(&SCRATCH_SHELF);
            while let Some(job) = decide() {
                let start = out.len();
                let batch = build_into(job, &mut buffers, out);
                if !done(batch, out.len() - start) {
                    out.truncate(start); // (decisions go on: as with more threads)
                }
            }
            scratch.give(buffers, threads);
        } else {
            workers.each_made_in_order(
                indices.len().div_ceil(size),
                decide,
                build,
                |(batch, frame)| {
                    if done(batch, frame.len()) {
                        out.extend_from_slice(&frame);
                    }
                    frames.give(frame, threads + 1);
                },
            );
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.stats.add(&stats);
        // a delta goes into its cached base in place only when its page was the one
        // page of the round to use that base and no page holds the base now
        let in_place: Vec<(u128, u128, &[u8])> = own
            .iter()
            .filter(|(base, ..)| {
                round.base_uses.get(base) == Some(&1) && self.held.holders(*base) == 0
            })
            .map(|(base, hash, d)| (*base, *hash, &own_bytes[d.clone()]))
            .collect();
        // delta bases are the receiver's copies: a base only its own page used becomes
        // that page's new version by applying the delta where it is cached (a few
        // bytes written instead of a page copied); bases no page holds now are
        // forgotten; then every content sent is remembered (once; zero pages need no
        // copy, contents already cached are only marked used) — except that a page
        // sent for the first time only takes free room: in a first pass over a memory
        // larger than the cache, copying each page in would only evict the one before,
        // while a page sent again is one that changes, the kind a delta serves
        if deltas {
            self.previous.replace_by_deltas(&in_place, &mut workers);
            for old in round.replaced {
                if self.held.holders(old) == 0 {
                    self.previous.forget(old);
                }
            }
            let mut room = self.previous.room();
            let cache = &self.previous;
            let sent: Vec<(u128, &[u8])> = indices
                .iter()
                .enumerate()
                .zip(&facts)
                .zip(&round.first)
                .filter(|&((_, &(hash, zero)), &first)| {
                    if zero {
                        false
                    } else if !first || cache.contains(hash) {
                        true
                    } else if room > 0 {
                        room -= 1;
                        true
                    } else {
                        false
                    }
                })
                .map(|(((pos, &index), &(hash, _)), _)| (hash, source.page(pos, index)))
                .collect();
            self.previous.put_many(&sent, &mut workers);
        }
        self.identified = facts;
        Ok(())
    }
}

/// What the receiver holds, as the decisions read it.
struct Receiver<'a> {
    held: &'a mut Holdings,
    announced: &'a FastMap<u128, u32>,
    /// the delta cache (none: no deltas)
    cache: Option<&'a PageCache>,
}

/// One call's decisions (phase 2), made batch by batch in order, and what they leave
/// for the work after the batches.
struct Round {
    /// receiver's versions this round overwrote: delta bases to drop if no page holds
    /// them once the round is sent
    replaced: Vec<u128>,
    /// how many pages of the round take a delta against each base
    base_uses: FastMap<u128, u32>,
    /// per page, whether the receiver gets it for the first time (a first pass)
    first: Vec<bool>,
    /// pages this call offered so far (as many as the call has, whatever the guest's
    /// size), kept only when an index may come twice (indices not strictly ascending,
    /// as a dirty bitmap's and a first pass's are)
    offered: Option<FastSet<u64>>,
}

impl Round {
    fn new(indices: &[u64]) -> Self {
        let twice = !indices.windows(2).all(|w| w[0] < w[1]);
        Self {
            replaced: Vec::new(),
            base_uses: FastMap::default(),
            first: Vec::with_capacity(indices.len()),
            offered: twice
                .then(|| FastSet::with_capacity_and_hasher(indices.len(), Default::default())),
        }
    }

    /// The plans of the next pages `indices` (hashes and zero tests `facts`): what the
    /// receiver holds decides `zero`, `unchanged`, `dup-ref` or "needs content", and
    /// each page then holds its new content.
    fn decide(
        &mut self,
        dedup: bool,
        receiver: Receiver<'_>,
        indices: &[u64],
        facts: &[(u128, bool)],
    ) -> Vec<Plan> {
        let Receiver {
            held,
            announced,
            cache,
        } = receiver;
        let mut plans = Vec::with_capacity(indices.len());
        for (&index, &(hash, zero)) in indices.iter().zip(facts) {
            let i = index as usize;
            let first_offer = self.offered.as_mut().is_none_or(|seen| seen.insert(index));
            let old = held.hash_of(i);
            self.first.push(old.is_none());
            if let Some(old) = old.filter(|&old| old != hash) {
                self.replaced.push(old);
            }
            let plan = if zero {
                Plan::Zero
            } else if old == Some(hash) {
                Plan::Unchanged
            } else if dedup && (held.holder_of(hash).is_some() || announced.contains_key(&hash)) {
                Plan::Dup(hash)
            } else {
                // the receiver's version of this page, if we still have its content
                // (an index offered twice in one call: its version is the earlier
                // occurrence's, usable only if that content was cached before)
                let base = old.filter(|&old| {
                    cache.is_some_and(|cache| old == zero_hash() || cache.contains(old))
                });
                if let Some(base) = base {
                    *self.base_uses.entry(base).or_default() += 1;
                }
                Plan::Content {
                    hash,
                    base,
                    first_offer,
                }
            };
            held.wrote(i, hash);
            plans.push(plan);
        }
        plans
    }
}

/// Pages hashed per job when the encoder hashes them itself.
const IDENTIFY_PAGES: usize = 4096;

/// The batch size for `pages` pages on `threads` threads: at most `batch_pages`, in a
/// number of batches that is a multiple of the thread count when there are few (three
/// batches on two threads would leave one thread idle for a third of the time).
fn balanced_batch(pages: usize, batch_pages: usize, threads: usize) -> usize {
    let batches = pages.div_ceil(batch_pages);
    if threads <= 1 || batches == 0 || batches >= 4 * threads {
        return batch_pages;
    }
    pages.div_ceil(batches.next_multiple_of(threads))
}

#[cfg(test)]
mod tests {
    use super::balanced_batch;

    #[test]
    fn few_batches_are_split_evenly_over_the_threads() {
        assert_eq!(balanced_batch(2600, 1024, 2), 650); // 3 batches -> 4
        assert_eq!(balanced_batch(2048, 1024, 2), 1024); // already even
        assert_eq!(balanced_batch(100, 1024, 2), 50);
        assert_eq!(balanced_batch(1, 1024, 2), 1);
        assert_eq!(balanced_batch(65536, 1024, 2), 1024); // many batches: as configured
        assert_eq!(balanced_batch(2600, 1024, 1), 1024);
        assert_eq!(balanced_batch(0, 1024, 2), 1024);
    }
}
