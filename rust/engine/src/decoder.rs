//! The receiver: verifies batches and applies them to its copy of the guest
//! ([`GuestCopy`]).
//!
//! Memory is bounded by the guest size given at construction, whatever the input
//! claims: every length is checked against the header and the guest before use, and a
//! batch is verified (checksum, sizes, indices) before any page of it is written.

use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::guest_copy::{GuestCopy, Op};
use crate::hash_page;
use crate::mem::write_slice;
use crate::page_slab::SlabPage;
use crate::store::{PageStore, Pinned};
use crate::unpack::{Reader, Record, Unpacked};
use crate::wire::Header;
use crate::workers::{helper_pool, Workers};
use crate::PAGE_SIZE;

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
    memory: GuestCopy,
    reader: Reader,
    /// the helpers reading batches ahead of the one applied (threads - 1 of them)
    pool: Option<rayon::ThreadPool>,
    /// inputs shorter than this are read and applied on the caller's thread alone
    read_ahead_from: usize,
    /// Batches applied.
    pub batches: u64,
    /// Pages written (by the batches applied).
    pub pages: u64,
}

/// Decompressed batches read ahead of the one applied may hold this much together
/// (the next one to apply is always read, however large).
const READ_AHEAD: usize = 64 << 20;

/// Inputs shorter than this (bytes on the wire) are read and applied by the caller
/// alone, helpers or not. Reading ahead saves the reading of the batches a helper
/// takes, and costs the hand-over and their pages coming from another core's cache:
/// tens of microseconds. A later round of a real guest (about 250 pages, 75–80 KB in
/// two batches, mostly deltas, which are applied on the caller either way) decoded
/// 8–18 % slower on two threads than on one; synthetic rounds of 60–300 pages (two
/// batches each) lost 4–9 % below about 90 KB and went 0.99–1.20x as fast from 96 KB
/// up (session 75, `docs/benchmarks-page-engine.md`).
pub const READ_AHEAD_FROM: usize = 96 << 10;

/// Blocks are decompressed straight into fresh page memory (their pages kept as they
/// are, not copied) only while the receiver has fewer spare pages than this: a round
/// that replaces pages leaves their memory for the next contents, which are copied
/// into it, so the receiver's page memory stays what it holds and this much more.
const RUNS_BELOW_SPARE: usize = 1024;

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
            memory: GuestCopy::new(pages)?,
            reader: Reader::new(pages)?,
            pool: helper_pool(threads, "novacron-dec")?,
            read_ahead_from: READ_AHEAD_FROM,
            batches: 0,
            pages: 0,
        })
    }

    /// Reads ahead on the helpers (if any) only for inputs of at least `bytes`
    /// ([`READ_AHEAD_FROM`] unless set): 0 reads ahead whenever an input holds more
    /// than one batch (tests and fuzzing, to take that path with small inputs).
    pub fn read_ahead_from(&mut self, bytes: usize) {
        self.read_ahead_from = bytes;
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
        self.memory.held_page(index)
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
        self.memory.distinct_contents()
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
            read_ahead_from,
            ..
        } = self;
        let (mut applied, mut written) = (0u64, 0u64);
        let helpers = pool
            .as_ref()
            .filter(|_| batches.len() > 1 && input.len() >= *read_ahead_from);
        let ahead = helpers.is_some();
        let into_pages = memory.spare_pages() < RUNS_BELOW_SPARE;
        let outcome = Workers::start(helpers).in_order(
            batches,
            READ_AHEAD,
            |(header, frame)| reader.unpack(header, frame, ahead, into_pages),
            |unpacked| {
                let mut unpacked = unpacked?;
                let done = apply(memory, &mut unpacked);
                memory.give_back(reader.recycle(unpacked));
                written += done?;
                applied += 1;
                Ok(())
            },
        );
        // (the reader's spare page memory: left of chunks, and of batches not applied)
        memory.give_back(reader.take_spare());
        self.batches += applied;
        self.pages += written;
        outcome?;
        cut_short.map_or(Ok(applied), Err)
    }
}

/// Applies a batch read by [`Reader::unpack`] to `memory`; returns how many pages it
/// wrote. Pages of its block in page memory are kept as they are (those it did not
/// keep go back to `memory`).
fn apply(memory: &mut GuestCopy, batch: &mut Unpacked<'_>) -> Result<u64> {
    let mut kept = batch.take_pages();
    let outcome = apply_records(memory, batch, kept.as_mut());
    memory.give_back(kept.into_iter().flatten().flatten());
    outcome
}

/// [`apply`]'s records: each page of the block from `kept` when given.
fn apply_records(
    memory: &mut GuestCopy,
    batch: &Unpacked<'_>,
    mut kept: Option<&mut Vec<Option<SlabPage>>>,
) -> Result<u64> {
    // the bases of delta-from records: the contents they held as the batch began
    let mut bases = Vec::new();
    for (_, record) in &batch.records {
        if let Record::DeltaFrom(base, _) = record {
            bases.push(memory.hash_of(*base).ok_or_else(|| {
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
            Record::Page { hash, raw, at } => match kept.as_mut().filter(|_| !*raw) {
                Some(kept) => {
                    let page = kept[*at / PAGE_SIZE]
                        .take()
                        .expect("each page of the block is one record's");
                    let hash = hash.unwrap_or_else(|| hash_page(&page[..]));
                    Op::Own(page, hash)
                }
                None => {
                    let page = batch.page(*raw, *at);
                    Op::Page(page, hash.unwrap_or_else(|| hash_page(page)))
                }
            },
        };
        (*index, op)
    });
    memory.write_all(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Codec, Encoder, EncoderConfig};

    /// `pages` distinct pages that compress, different for every `seed`.
    fn image(pages: usize, seed: u8) -> Vec<u8> {
        let mut image = vec![b'x'; pages * PAGE_SIZE];
        for (i, page) in image.chunks_exact_mut(PAGE_SIZE).enumerate() {
            page[..8].copy_from_slice(&(i as u64).to_le_bytes());
            page[8] = seed;
        }
        image
    }

    #[test]
    fn small_and_large_inputs_decode_alike_whether_read_ahead_or_not() {
        // batches of 4 pages: 25 of them, one input well under READ_AHEAD_FROM (the
        // pages compress to a few bytes each) and one over it (incompressible pages)
        let pages = 100;
        let config = EncoderConfig {
            batch_pages: 4,
            ..EncoderConfig::default()
        };
        let all: Vec<u64> = (0..pages as u64).collect();
        let mut noisy = image(pages, 9);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in &mut noisy {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for (image, large) in [(image(pages, 1), false), (noisy, true)] {
            let wire = Encoder::new(pages, config)
                .unwrap()
                .encode(&image, &all)
                .unwrap();
            assert_eq!(wire.len() >= READ_AHEAD_FROM, large);
            for (threads, from) in [(1, READ_AHEAD_FROM), (2, READ_AHEAD_FROM), (2, 0)] {
                let mut dec = Decoder::with_threads(pages, threads).unwrap();
                dec.read_ahead_from(from);
                assert_eq!(dec.decode(&wire).unwrap(), 25);
                assert_eq!(dec.image(), image, "x{threads}, reading ahead from {from}");
            }
        }
    }

    #[test]
    fn whole_page_blocks_become_the_receiver_s_pages_and_its_spare_memory_stays_bounded() {
        let pages = 1500;
        let all: Vec<u64> = (0..pages as u64).collect();
        for (codec, threads) in [(Codec::Lz4, 1), (Codec::Lz4, 2), (Codec::Zstd, 2)] {
            let mut dec = Decoder::with_threads(pages, threads).unwrap();
            for round in 0..4 {
                // (a new sender each round: every page goes whole, every content is new)
                let config = EncoderConfig {
                    codec,
                    batch_pages: 256,
                    ..EncoderConfig::default()
                };
                let image = image(pages, round);
                let mut enc = Encoder::new(pages, config).unwrap();
                dec.decode(&enc.encode(&image, &all).unwrap()).unwrap();
                assert_eq!(dec.image(), image, "{codec:?} x{threads}, round {round}");
                assert_eq!(dec.distinct_contents(), pages);
                // the replaced contents' memory is reused: once there is this much
                // spare, blocks are copied into it rather than kept in new memory
                let spare = dec.memory.spare_pages();
                assert!(
                    spare <= pages + RUNS_BELOW_SPARE,
                    "{codec:?} x{threads}, round {round}: {spare} spare pages"
                );
            }
        }
    }
}
