//! One batch of the page stream: phase 3 of the encoder (see `encoder`).
//!
//! Per page of the batch, in order: the record phase 2 decided, or for a page whose
//! content must be sent, the smallest of a delta against its own previous version,
//! a page of the compressed block, or a raw page; then, for pages where that is no
//! good, a delta against a content another page of the batch held when it began
//! (`resemblance`). Records, the block (pages and delta payloads) and the raw area are
//! laid out as they are decided; a page turned into a `delta-from` lays the batch out
//! again.

use std::cell::RefCell;
use std::ops::Range;

use crate::cache::PageCache;
use crate::encoder::{EncodeStats, EncoderConfig};
use crate::error::{EngineError, Result};
use crate::fasthash::FastMap;
use crate::filter::{self, Filter};
use crate::resemblance::Resemblance;
use crate::scan::{zero_hash, ZERO_PAGE};
use crate::wire::{Codec, Header, Kind, MAX_DELTA};
use crate::{delta, varint, PAGE_SIZE};

/// Longest delta the encoder sends; longer ones go compressed or raw.
const DELTA_LIMIT: usize = MAX_DELTA / 4;
/// A page whose delta against its own version is longer than this also tries the
/// contents other pages of its batch held (see `resemblance`).
const SEEK_SHORTER: usize = 128;
/// Bytes of deltas a batch makes room for at first (a later round's batch of a real
/// guest makes ~20 KB).
const DELTAS_ROOM: usize = 32 << 10;

/// Where the offered pages are: a whole guest image (pages found by index), or the
/// offered pages packed back to back in the order of `indices` (a stream's pages).
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    Image(&'a [u8]),
    Packed(&'a [u8]),
}

impl<'a> Source<'a> {
    /// The page at position `pos` of the offer, whose guest index is `index`.
    pub(crate) fn page(self, pos: usize, index: u64) -> &'a [u8] {
        let at = match self {
            Source::Image(_) => index as usize * PAGE_SIZE,
            Source::Packed(_) => pos * PAGE_SIZE,
        };
        let (Source::Image(bytes) | Source::Packed(bytes)) = self;
        &bytes[at..at + PAGE_SIZE]
    }
}

/// Phase 2's verdict on one page.
pub(crate) enum Plan {
    Zero,
    Unchanged,
    Dup(u128),
    /// Content `hash` must be sent; a delta against `base` (the hash of the
    /// receiver's version, cached or zero) may be tried.
    /// `first_offer`: the call's first record for this page, so `base` is what the
    /// page held when the batch began (a base other pages may take a delta from).
    Content {
        hash: u128,
        base: Option<u128>,
        first_offer: bool,
    },
}

thread_local! {
    /// One reused zstd context per thread (and level).
    static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// The room of a batch's block (before and after compression) and raw area: enough for
/// any batch of an encoder with this `config` (address space only: a page of it is used
/// when first written), so that a set of batch buffers never grows.
pub(crate) fn batch_room(config: EncoderConfig) -> usize {
    config.batch_pages * PAGE_SIZE
}

/// `buf` as a slice of at least `len` bytes (it grows, zeroed, only when shorter).
fn at_least(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        // a new zeroed buffer, not the old one grown: no copy of what it held
        *buf = Vec::new();
        *buf = vec![0; len];
    }
    &mut buf[..]
}

/// Compresses `data` into `out` (at least `compress_bound` long) with this thread's
/// context; returns the compressed length.
pub(crate) fn zstd_compress_into(level: i32, data: &[u8], out: &mut [u8]) -> Result<usize> {
    ZSTD.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            let ctx = zstd::bulk::Compressor::new(level)
                .map_err(|e| EngineError::invalid(format!("zstd: {e}")))?;
            *slot = Some((level, ctx));
        }
        let (_, ctx) = slot.as_mut().expect("context just created");
        ctx.compress_to_buffer(data, out)
            .map_err(|e| EngineError::invalid(format!("zstd: {e}")))
    })
}

/// Heuristic for pages not worth compressing: more than 200 distinct byte values
/// among every eighth byte. (A bit per value, set without branches: a branch per
/// byte of a random page is mispredicted half the time.)
fn looks_incompressible(page: &[u8]) -> bool {
    let mut seen = [0u64; 4];
    for chunk in page.chunks_exact(8) {
        let b = chunk[0];
        seen[usize::from(b >> 6)] |= 1 << (b & 63);
    }
    seen.iter().map(|w| w.count_ones()).sum::<u32>() > 200
}

/// The buffers a batch is laid out and compressed in, kept from batch to batch: a
/// fresh buffer of a few MiB is a fresh mapping whose every page faults (and is
/// cleared by the kernel) when first written, which cost round 0 about as much as
/// its copies.
#[derive(Default)]
pub(crate) struct Scratch {
    records: Vec<u8>,
    block: Vec<u8>,
    raw: Vec<u8>,
    /// the compressed block (its length only grows, so it is zeroed once)
    packed: Vec<u8>,
}

impl Scratch {
    fn buffers(&self) -> [&Vec<u8>; 4] {
        [&self.records, &self.block, &self.raw, &self.packed]
    }
}

impl crate::mem::Buffers for Scratch {
    fn room(&self) -> usize {
        self.buffers().iter().map(|b| b.capacity()).sum()
    }

    fn lazily_free(&self) {
        for buffer in self.buffers() {
            buffer.lazily_free();
        }
    }
}

/// One encoded batch (its bytes written to the caller's frame): its counts, and its
/// deltas against a page's own cached version (base hash, new hash, the delta's bytes
/// in `deltas`): the encoder applies to the cached base in place those whose base no
/// other page uses or holds.
pub(crate) struct Batch {
    pub(crate) stats: EncodeStats,
    /// every delta the batch made, back to back (one buffer, not one allocation each)
    deltas: Vec<u8>,
    in_place: Vec<(u128, u128, Range<usize>)>,
}

impl Batch {
    /// Appends its in-place deltas to `bytes` and lists them in `into` (base hash, new
    /// hash, where the delta is in `bytes`), so that the batch itself can go: its delta
    /// buffer holds every delta it made, and a call's batches span a whole guest.
    pub(crate) fn keep_in_place(
        self,
        bytes: &mut Vec<u8>,
        into: &mut Vec<(u128, u128, Range<usize>)>,
    ) {
        for (base, hash, delta) in self.in_place {
            let at = bytes.len();
            bytes.extend_from_slice(&self.deltas[delta]);
            into.push((base, hash, at..bytes.len()));
        }
    }
}

/// What one record of a batch carries.
enum Choice<'a> {
    Zero,
    Unchanged,
    Dup(u128),
    Announced(u32),
    /// a delta (where it is in the batch's deltas)
    Delta(Range<usize>),
    /// a delta against what page `.0` held when the batch began
    DeltaFrom(u64, Range<usize>),
    /// a page of the block, filtered or not
    Block(&'a [u8], Option<Filter>),
    Raw(&'a [u8]),
}

/// `held`: the sender's delta cache, and the receiver's announced hashes with their
/// positions. The batch's bytes are appended to `frame`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_batch(
    config: EncoderConfig,
    source: Source<'_>,
    first: usize,
    held: (&PageCache, &FastMap<u128, u32>),
    indices: &[u64],
    plans: &[Plan],
    scratch: &mut Scratch,
    frame: &mut Vec<u8>,
) -> Result<Batch> {
    let (cache, announced) = held;
    // deltas against a page's own cached version, in page order: (base, hash, delta);
    // one a later delta-from replaced stays here (its bytes stay in `deltas`)
    let mut own = Vec::new();
    // contents this batch replaces, as bases for pages their own version is no good for
    let mut similar = Resemblance::default();
    // pages that may find a shorter delta there, with the length to beat
    let mut pending = Vec::new();
    let mut choices = Vec::with_capacity(indices.len());
    let mut deltas = Vec::with_capacity(DELTAS_ROOM);
    let mut layout = Layout::new(config, plans, scratch);
    // (version 4 has no `filtered` records)
    let filters = config.wire_version > 4;
    for (k, (&index, plan)) in indices.iter().zip(plans).enumerate() {
        let page = source.page(first + k, index);
        let choice = match plan {
            Plan::Zero => Choice::Zero,
            Plan::Unchanged => Choice::Unchanged,
            Plan::Dup(hash) => match announced.get(hash) {
                Some(&at) => Choice::Announced(at),
                None => Choice::Dup(*hash),
            },
            &Plan::Content {
                hash,
                base,
                first_offer,
            } => {
                let cached = base.and_then(|h| cache.get(h));
                let old = cached.or_else(|| (base == Some(zero_hash())).then_some(&ZERO_PAGE[..]));
                let delta = old.and_then(|old| {
                    let at = deltas.len();
                    let made = delta::encode_into(old, page, DELTA_LIMIT, &mut deltas);
                    made.then_some(at..deltas.len())
                });
                // a version that became a page nearly like it is of no use elsewhere: the
                // contents that move or are rebuilt are those their own page rewrote
                let rewritten = delta.as_ref().is_none_or(|d| d.len() > SEEK_SHORTER);
                if let (true, true, Some(content), Some(base)) =
                    (first_offer, rewritten, cached, base)
                {
                    similar.add(index, base, content);
                }
                match delta {
                    Some(d) => {
                        // (the zero page is never cached: no delta applies to it)
                        if let Some(base) = base.filter(|&b| b != zero_hash()) {
                            own.push((base, hash, d.clone()));
                        }
                        if d.len() > SEEK_SHORTER {
                            pending.push((k, d.len(), layout.mark()));
                        }
                        Choice::Delta(d)
                    }
                    None if config.codec != Codec::None && looks_incompressible(page) => {
                        Choice::Raw(page)
                    }
                    None => {
                        pending.push((k, DELTA_LIMIT + 1, layout.mark()));
                        if config.codec == Codec::None {
                            Choice::Raw(page)
                        } else {
                            Choice::Block(page, filters.then(|| filter::choose(page)).flatten())
                        }
                    }
                }
            }
        };
        layout.push(index, &choice, &deltas);
        choices.push(choice);
    }
    if !similar.is_empty() {
        // the layout from the first page that changes on is done again
        let mut redo = None;
        for (k, mut shortest, mark) in pending {
            let page = source.page(first + k, indices[k]);
            for (base_index, base) in similar.candidates(page) {
                if shortest == 0 {
                    break; // nothing beats an empty delta
                }
                // a page's own version was tried above
                let Some(content) = cache.get(base).filter(|_| base_index != indices[k]) else {
                    continue;
                };
                let at = deltas.len();
                if delta::encode_into(content, page, shortest - 1, &mut deltas) {
                    let d = at..deltas.len();
                    shortest = d.len();
                    choices[k] = Choice::DeltaFrom(base_index, d);
                    redo = redo.or(Some((k, mark)));
                }
            }
        }
        if let Some((from, mark)) = redo {
            layout.truncate(mark);
            for (&index, choice) in indices[from..].iter().zip(&choices[from..]) {
                layout.push(index, choice, &deltas);
            }
        }
    }
    let finished = layout.finish(config, &mut scratch.packed, frame);
    let stats = layout.stats;
    layout.give_back(scratch);
    finished?;
    Ok(Batch {
        stats,
        deltas,
        in_place: own,
    })
}

/// How far a [`Layout`] was, to go back to.
#[derive(Clone, Copy)]
struct Mark {
    records: usize,
    block: usize,
    raw: usize,
    stats: EncodeStats,
    position: i64,
    previous: i64,
    run: Option<Run>,
}

/// A zero or unchanged record that later pages of its kind may join, while it is the
/// record section's last: a single record until a second page joins, then a run
/// ([`Kind::ZeroRun`], [`Kind::UnchangedRun`]).
#[derive(Clone, Copy)]
struct Run {
    /// the single record's kind
    of: Kind,
    /// where its kind byte is in the record section
    kind_at: usize,
    /// where its `more` varint starts (the end of the single record)
    more_at: usize,
    /// pages after its first
    more: u64,
}

/// The run record naming pages of a zero or unchanged record's kind.
fn run_kind(of: Kind) -> Kind {
    if of == Kind::Zero {
        Kind::ZeroRun
    } else {
        Kind::UnchangedRun
    }
}

/// A batch's record section, block (before compression) and raw area, and counts.
struct Layout {
    records: Vec<u8>,
    block: Vec<u8>,
    raw: Vec<u8>,
    stats: EncodeStats,
    /// the batch's last announced-ref position
    position: i64,
    /// the last record's page index (-1 before the first)
    previous: i64,
    /// the last record, if later zero or unchanged pages may join it
    run: Option<Run>,
    block_kind: Kind,
}

impl Layout {
    /// A layout in `scratch`'s buffers (given back by [`Layout::give_back`]).
    fn new(config: EncoderConfig, plans: &[Plan], scratch: &mut Scratch) -> Self {
        let room = batch_room(config);
        let take = |buf: &mut Vec<u8>, room: usize| {
            let mut buf = std::mem::take(buf);
            buf.clear();
            crate::mem::reserve(&mut buf, room);
            buf
        };
        Self {
            records: take(&mut scratch.records, plans.len() * 4),
            block: take(&mut scratch.block, room),
            raw: take(&mut scratch.raw, room),
            stats: EncodeStats::default(),
            position: 0,
            previous: -1,
            run: None,
            block_kind: if config.codec == Codec::Zstd {
                Kind::Zstd
            } else {
                Kind::Lz4
            },
        }
    }

    fn mark(&self) -> Mark {
        Mark {
            records: self.records.len(),
            block: self.block.len(),
            raw: self.raw.len(),
            stats: self.stats,
            position: self.position,
            previous: self.previous,
            run: self.run,
        }
    }

    /// Takes back everything pushed since `mark`.
    fn truncate(&mut self, mark: Mark) {
        self.records.truncate(mark.records);
        if let Some(run) = mark.run {
            // a run grown since has its kind byte and `more` rewritten: as they were
            self.records.truncate(run.more_at);
            if run.more == 0 {
                self.records[run.kind_at] = run.of as u8;
            } else {
                varint::put(&mut self.records, run.more);
            }
            debug_assert_eq!(self.records.len(), mark.records);
        }
        self.block.truncate(mark.block);
        self.raw.truncate(mark.raw);
        self.stats = mark.stats;
        self.position = mark.position;
        self.previous = mark.previous;
        self.run = mark.run;
    }

    /// Lays out one record; `deltas`: the batch's deltas, which delta records name.
    fn push(&mut self, index: u64, choice: &Choice<'_>, deltas: &[u8]) {
        let stats = &mut self.stats;
        stats.pages += 1;
        let kind = match choice {
            Choice::Zero => Kind::Zero,
            Choice::Unchanged => Kind::Unchanged,
            Choice::Dup(_) => Kind::DupRef,
            Choice::Announced(_) => Kind::AnnouncedRef,
            Choice::Delta(_) => Kind::Delta,
            Choice::DeltaFrom(..) => Kind::DeltaFrom,
            Choice::Block(_, None) => self.block_kind,
            Choice::Block(_, Some(_)) => Kind::Filtered,
            Choice::Raw(_) => Kind::Raw,
        };
        let index = i64::try_from(index).expect("indices are checked against the guest");
        match choice {
            Choice::Zero => stats.zero += 1,
            Choice::Unchanged => stats.unchanged += 1,
            _ => {}
        }
        if let Some(run) = self.run.as_mut() {
            if run.of == kind && index == self.previous + 1 {
                // the next page of a zero or unchanged run: its `more` grows
                if run.more == 0 {
                    self.records[run.kind_at] = run_kind(kind) as u8;
                }
                run.more += 1;
                self.records.truncate(run.more_at);
                varint::put(&mut self.records, run.more);
                self.previous = index;
                return;
            }
        }
        self.run = None;
        let kind_at = self.records.len();
        self.records.push(kind as u8);
        // page indices of a batch mostly ascend: a step from the last one is a byte
        varint::put_signed(&mut self.records, index - self.previous - 1);
        self.previous = index;
        match *choice {
            Choice::Zero | Choice::Unchanged => {
                self.run = Some(Run {
                    of: kind,
                    kind_at,
                    more_at: self.records.len(),
                    more: 0,
                });
            }
            Choice::Dup(hash) => {
                self.records.extend_from_slice(&hash.to_le_bytes());
                stats.dup += 1;
            }
            Choice::Announced(at) => {
                varint::put_signed(&mut self.records, i64::from(at) - self.position);
                self.position = i64::from(at);
                stats.dup += 1;
            }
            Choice::Delta(ref d) => {
                varint::put(&mut self.records, d.len() as u64);
                self.block.extend_from_slice(&deltas[d.clone()]);
                stats.delta += 1;
            }
            Choice::DeltaFrom(base, ref d) => {
                varint::put(&mut self.records, base);
                varint::put(&mut self.records, d.len() as u64);
                self.block.extend_from_slice(&deltas[d.clone()]);
                stats.delta_from += 1;
            }
            Choice::Block(page, None) => {
                self.block.extend_from_slice(page);
                stats.compressed += 1;
            }
            Choice::Block(page, Some(filter)) => {
                self.records.push(filter.byte());
                filter.apply_into(page, &mut self.block);
                stats.compressed += 1;
                stats.filtered += 1;
            }
            Choice::Raw(page) => {
                self.raw.extend_from_slice(page);
                stats.raw += 1;
            }
        }
    }

    fn give_back(self, scratch: &mut Scratch) {
        scratch.records = self.records;
        scratch.block = self.block;
        scratch.raw = self.raw;
    }

    /// The batch on the wire, appended to `frame`: header, records, the block
    /// compressed (in `packed`), the raw area.
    fn finish(
        &self,
        config: EncoderConfig,
        packed: &mut Vec<u8>,
        frame: &mut Vec<u8>,
    ) -> Result<()> {
        let block = &self.block;
        // (the compressed block's buffer is zeroed once, at that room)
        let room = batch_room(config);
        let (codec, wire_block): (Codec, &[u8]) = match config.codec {
            _ if block.is_empty() => (Codec::None, &[]),
            Codec::None => (Codec::None, block),
            Codec::Lz4 => {
                let out = at_least(packed, lz4_flex::block::get_maximum_output_size(room));
                let n = lz4_flex::block::compress_into(block, out)
                    .map_err(|e| EngineError::invalid(format!("lz4: {e}")))?;
                (Codec::Lz4, &out[..n])
            }
            Codec::Zstd => {
                let out = at_least(packed, zstd::zstd_safe::compress_bound(room));
                let n = zstd_compress_into(config.zstd_level, block, out)?;
                (Codec::Zstd, &out[..n])
            }
        };
        let header = Header {
            version: config.wire_version,
            codec,
            records: u32::try_from(self.stats.pages).expect("batch size bounded"),
            records_len: u32::try_from(self.records.len()).expect("records bounded"),
            block_raw_len: u32::try_from(block.len()).expect("block bounded"),
            block_len: u32::try_from(wire_block.len()).expect("block bounded"),
            raw_len: u32::try_from(self.raw.len()).expect("raw bounded"),
        };
        header.frame_into(&[&self.records, wire_block, &self.raw], frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{looks_incompressible, Choice, Layout, Scratch};
    use crate::encoder::EncoderConfig;
    use crate::wire::Kind;
    use crate::PAGE_SIZE;
    use proptest::prelude::*;

    static PAGE: [u8; PAGE_SIZE] = [7; PAGE_SIZE];

    /// A choice of each kind a run may or may not join: 0 zero, 1 unchanged, 2 dup, 3 raw.
    fn choice(kind: u8) -> Choice<'static> {
        match kind {
            0 => Choice::Zero,
            1 => Choice::Unchanged,
            2 => Choice::Dup(u128::from(kind) << 64 | 5),
            _ => Choice::Raw(&PAGE),
        }
    }

    /// `pages` laid out (index, kind) in a fresh layout, or, with `redo: Some(m)`, laid
    /// out, taken back to a mark before page `m` and the rest laid out again; its record
    /// section, raw area and counts.
    fn laid_out(pages: &[(u64, u8)], redo: Option<usize>) -> (Vec<u8>, Vec<u8>, [u64; 4]) {
        let mut scratch = Scratch::default();
        let config = EncoderConfig::default();
        let mut layout = Layout::new(
            config,
            &pages.iter().map(|_| super::Plan::Zero).collect::<Vec<_>>(),
            &mut scratch,
        );
        let mut mark = None;
        for (k, &(index, kind)) in pages.iter().enumerate() {
            if redo == Some(k) {
                mark = Some(layout.mark());
            }
            layout.push(index, &choice(kind), &[]);
        }
        if let (Some(m), Some(mark)) = (redo, mark) {
            layout.truncate(mark);
            for &(index, kind) in &pages[m..] {
                layout.push(index, &choice(kind), &[]);
            }
        }
        let s = layout.stats;
        (
            layout.records.clone(),
            layout.raw.clone(),
            [s.pages, s.zero, s.unchanged, s.raw],
        )
    }

    #[test]
    fn consecutive_zero_or_unchanged_pages_go_as_one_run_record() {
        let pages: Vec<(u64, u8)> = (0..5)
            .map(|i| (i, 0))
            .chain((5..8).map(|i| (i, 1)))
            .collect();
        let (records, _, counts) = laid_out(&pages, None);
        // zero pages 0..=4 (a step of 0, 4 more), unchanged pages 5..=7 (2 more)
        let expected = [Kind::ZeroRun as u8, 0, 4, Kind::UnchangedRun as u8, 0, 2];
        assert_eq!(records, expected);
        assert_eq!(counts, [8, 5, 3, 0]);
        // a gap, a step back or another record between them ends a run
        let pages = [(0, 0), (2, 0), (1, 0), (3, 2), (4, 0), (5, 0)];
        let (records, _, _) = laid_out(&pages, None);
        assert_eq!(
            records[..6],
            [
                Kind::Zero as u8,
                0,
                Kind::Zero as u8,
                2,
                Kind::Zero as u8,
                3
            ]
        );
        assert_eq!(records[6..8], [Kind::DupRef as u8, 2]);
        assert_eq!(records[24..], [Kind::ZeroRun as u8, 0, 1]);
    }

    proptest! {
        #[test]
        fn a_layout_taken_back_to_a_mark_and_redone_is_as_if_laid_out_once(
            steps in proptest::collection::vec((0u64..3, 0u8..4), 1..300),
            at in any::<prop::sample::Index>(),
        ) {
            // mostly ascending pages, often consecutive: long runs, broken at random
            let mut index = 0;
            let pages: Vec<(u64, u8)> = steps
                .iter()
                .map(|&(step, kind)| {
                    index += step;
                    (index, if step == 2 { kind } else { kind % 2 })
                })
                .collect();
            let once = laid_out(&pages, None);
            let redone = laid_out(&pages, Some(at.index(pages.len())));
            prop_assert_eq!(once, redone);
        }
    }

    /// A page whose sampled bytes (every eighth) take `distinct` values.
    fn sampled_values(distinct: usize) -> Vec<u8> {
        let mut page = vec![0xEEu8; PAGE_SIZE];
        for (k, at) in (0..PAGE_SIZE).step_by(8).enumerate() {
            page[at] = (k % distinct) as u8;
        }
        page
    }

    #[test]
    fn more_than_200_distinct_sampled_values_look_incompressible() {
        assert!(!looks_incompressible(&sampled_values(200)));
        assert!(looks_incompressible(&sampled_values(201)));
        assert!(looks_incompressible(&sampled_values(256)));
        assert!(!looks_incompressible(&[7u8; PAGE_SIZE]));
        // only the sampled bytes count
        let mut page = sampled_values(1);
        for (i, b) in page.iter_mut().enumerate().filter(|(i, _)| i % 8 != 0) {
            *b = i as u8;
        }
        assert!(!looks_incompressible(&page));
    }
}
