//! The source's half: QEMU's stream in, channel frames out.
//!
//! Byte order is kept exactly: each page travels with the verbatim bytes that precede
//! it in the stream (its record header), and a batch is cut before a page index
//! repeats (the receiver rebuilds a batch's pages from its image after the whole batch
//! is applied, which holds only a page's latest content).

use std::collections::HashSet;

use super::{
    put_frame, put_header, StreamDigest, CHECK, END, PACKED_PAGES, PAGES, START, VERBATIM,
};
use crate::batch::zstd_compress_into;
use crate::error::{EngineError, Result};
use crate::qemu_stream::{PieceRef, SplitStats, StreamSplitter};
use crate::{Encoder, EncoderConfig, PageStore, HASH_LEN, PAGE_SIZE};

/// Verbatim bytes held before they go out on their own (when no batch waits).
pub const MAX_VERBATIM: usize = 1024 * 1024;

/// zstd level of a packed `PAGES` head (its prefixes are QEMU's record headers:
/// level 1 takes a 1,024-page head of ~20 KB to a few KB).
const HEAD_LEVEL: i32 = 1;
/// Heads shorter than this go unpacked (one page's entry is 20 bytes).
const MIN_PACKED_HEAD: usize = 64;

/// How a [`StreamSender`] works.
#[derive(Clone)]
pub struct SenderConfig {
    /// Pages per `PAGES` frame.
    pub batch_pages: usize,
    /// Hold pages until the destination's `ANNOUNCE` arrived (so that pages it holds
    /// go as references).
    pub wait_for_announce: bool,
    /// Keep every page sent here (for migrating back, or other VMs of the same image).
    pub store: Option<PageStore>,
    /// Hold the first bytes the splitter cannot delimit (in a QEMU stream: the device
    /// state after the last RAM) and everything after them until
    /// [`StreamSender::open_gate`].
    pub gated: bool,
    /// Send a batch's entries packed (`PACKED_PAGES`) where that is smaller; off for a
    /// destination that does not take them (one from before they existed).
    pub packed_heads: bool,
    /// The page engine's settings.
    pub engine: EncoderConfig,
}

/// One batch of pages: per page its prefix (verbatim bytes before it) and index.
#[derive(Default)]
struct Batch {
    prefixes: Vec<u8>,
    entries: Vec<(usize, u64)>, // (prefix length, page index)
    pages: Vec<u8>,
}

/// The sender's state for one migration.
pub struct StreamSender {
    config: SenderConfig,
    splitter: StreamSplitter,
    /// Pages of the guest (0 until the stream said; from the splitter's `RamSize`
    /// piece, since the splitter is taken out of `self` while it hands pieces over).
    total: u64,
    encoder: Option<Encoder>,
    /// The destination's announcement, until the page engine takes it (it may come
    /// before the stream said the guest's size, so before the engine exists).
    pending_announce: Option<Vec<u8>>,
    announce_seen: bool,
    waiting: bool,
    started: bool,
    open: Batch,
    in_batch: HashSet<u64>,
    held: Vec<Batch>,
    prefix: Vec<u8>,
    /// a batch's entries, and them packed (kept from batch to batch)
    head: Vec<u8>,
    packed: Vec<u8>,
    sent: StreamDigest,
    /// Bytes of QEMU's stream taken in.
    pub length: u64,
    /// Frame bytes produced.
    pub wire_bytes: u64,
    /// Hashes the destination announced.
    pub announced: usize,
}

impl StreamSender {
    /// A sender at the start of a stream.
    #[must_use]
    pub fn new(config: SenderConfig) -> Self {
        let waiting = config.wait_for_announce;
        Self {
            config,
            splitter: StreamSplitter::new(),
            total: 0,
            encoder: None,
            pending_announce: None,
            announce_seen: false,
            waiting,
            started: false,
            open: Batch::default(),
            in_batch: HashSet::new(),
            held: Vec::new(),
            prefix: Vec::new(),
            head: Vec::new(),
            packed: Vec::new(),
            sent: StreamDigest::new(),
            length: 0,
            wire_bytes: 0,
            announced: 0,
        }
    }

    /// What the splitter split so far.
    #[must_use]
    pub fn split_stats(&self) -> SplitStats {
        self.splitter.stats
    }

    /// Why the rest of the stream passes through verbatim, if it does.
    #[must_use]
    pub fn passthrough_reason(&self) -> Option<&'static str> {
        self.splitter.passthrough_reason()
    }

    /// Pages of the guest (0 until the stream said).
    #[must_use]
    pub fn total_pages(&self) -> u64 {
        self.total
    }

    /// Whether a `feed` of `len` bytes may encode a batch: the batch being filled is
    /// encoded once it holds `batch_pages` (or at a flush), and `len` bytes hold at most
    /// `len / 4096` pages. (A page index that repeats also closes the open batch early:
    /// that smaller batch is encoded whatever this says.)
    #[must_use]
    pub fn may_encode(&self, len: usize) -> bool {
        let room = self
            .config
            .batch_pages
            .saturating_sub(self.open.entries.len());
        len >= room * PAGE_SIZE
    }

    /// The stream reached what the closed gate holds back.
    #[must_use]
    pub fn at_gate(&self) -> bool {
        self.config.gated && self.splitter.passthrough_reason().is_some()
    }

    /// The page engine (None before the first page).
    #[must_use]
    pub fn engine(&self) -> Option<&Encoder> {
        self.encoder.as_ref()
    }

    /// Frames for the next bytes from the source QEMU (possibly none yet).
    ///
    /// # Errors
    /// Engine errors (a bad engine configuration for this guest).
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        self.length += data.len() as u64;
        let mut out = Vec::new();
        let mut group = Vec::new();
        // the pieces borrow `data`: each is taken as the splitter finds it
        let mut splitter = std::mem::take(&mut self.splitter);
        let split = splitter.feed_with(data, &mut |piece| self.piece(piece, &mut out, &mut group));
        self.splitter = splitter;
        split?;
        if self.prefix.len() >= MAX_VERBATIM && self.quiet() && !self.at_gate() {
            self.verbatim(&mut group);
        }
        self.checked(&mut out, group);
        Ok(out)
    }

    /// The destination's page-store hashes; returns the frames held back for them.
    /// It may come at any time, also before the stream said the guest's size (the
    /// destination announces as soon as the channel is open): then it is kept until
    /// the page engine exists.
    ///
    /// # Errors
    /// An announcement that is not whole 16-byte hashes, or a second one.
    pub fn announce(&mut self, hashes: &[u8]) -> Result<Vec<u8>> {
        if hashes.len() % HASH_LEN != 0 {
            return Err(EngineError::channel(
                "an ANNOUNCE that is not whole 16-byte hashes",
            ));
        }
        if self.announce_seen {
            return Err(EngineError::channel("a second ANNOUNCE"));
        }
        self.announce_seen = true;
        self.pending_announce = Some(hashes.to_vec());
        if self.total > 0 {
            self.encoder()?; // takes it now
        }
        self.waiting = false;
        let mut out = Vec::new();
        self.flush_pages(&mut out)?;
        Ok(out)
    }

    /// Everything held back (when the source goes quiet, and at the end); pages wait
    /// for `ANNOUNCE` if asked to, and so does what follows them.
    ///
    /// # Errors
    /// Engine errors.
    pub fn flush(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.flush_pages(&mut out)?;
        if !self.prefix.is_empty() && self.quiet() && !self.at_gate() {
            let mut group = Vec::new();
            self.verbatim(&mut group);
            self.checked(&mut out, group);
        }
        Ok(out)
    }

    /// Lets what the gate held (and everything after it) go.
    ///
    /// # Errors
    /// Engine errors.
    pub fn open_gate(&mut self) -> Result<Vec<u8>> {
        self.config.gated = false;
        self.flush()
    }

    /// The stream ended: the rest, then `END` (an `ANNOUNCE` that never came is not
    /// waited for any longer; a closed gate must have been opened first).
    ///
    /// # Errors
    /// Engine errors.
    pub fn finish(&mut self) -> Result<Vec<u8>> {
        self.waiting = false;
        self.config.gated = false;
        let mut out = Vec::new();
        let mut group = Vec::new();
        for piece in self.splitter.finish() {
            self.piece(piece.borrowed(), &mut out, &mut group)?;
        }
        self.checked(&mut out, group);
        out.extend(self.flush()?);
        put_frame(&mut out, END, &self.sent.payload());
        self.wire_bytes += (super::HEADER_LEN + super::END_LEN) as u64;
        Ok(out)
    }

    /// No batch open or held (verbatim bytes may go without reordering anything).
    fn quiet(&self) -> bool {
        self.open.entries.is_empty() && self.held.is_empty()
    }

    fn encoder(&mut self) -> Result<&mut Encoder> {
        if self.encoder.is_none() {
            let pages = usize::try_from(self.total)
                .map_err(|_| crate::EngineError::invalid("guest too large"))?;
            self.encoder = Some(Encoder::new(pages, self.config.engine)?);
        }
        let encoder = self.encoder.as_mut().expect("made above");
        if let Some(hashes) = self.pending_announce.take() {
            self.announced = encoder.announce(&hashes)?;
        }
        Ok(encoder)
    }

    /// Takes one piece of the stream: `START` (into `out`) once the guest's size is
    /// known, pages into batches (encoded ones into `group`), other bytes as the next
    /// page's prefix.
    fn piece(&mut self, piece: PieceRef<'_>, out: &mut Vec<u8>, group: &mut Vec<u8>) -> Result<()> {
        match piece {
            PieceRef::RamSize { pages } => {
                // what any receiver refuses is refused here, before a frame goes
                if pages > super::receiver::MAX_GUEST_PAGES {
                    return Err(crate::EngineError::invalid(format!(
                        "a guest of {pages} pages: a migration channel carries at most 2^32"
                    )));
                }
                self.total = pages;
                if !self.started && pages > 0 {
                    self.started = true;
                    put_frame(out, START, &pages.to_be_bytes());
                }
            }
            PieceRef::Verbatim(bytes) => self.prefix.extend_from_slice(bytes),
            PieceRef::Page { index, data } => {
                if self.in_batch.contains(&index)
                    || self.open.entries.len() >= self.config.batch_pages
                {
                    self.cut(group)?;
                }
                self.open.entries.push((self.prefix.len(), index));
                self.open.prefixes.append(&mut self.prefix);
                self.open.pages.extend_from_slice(data);
                self.in_batch.insert(index);
            }
        }
        Ok(())
    }

    /// Closes the open batch: encoded now (its buffers then serve the next batch), or
    /// held until `ANNOUNCE`.
    fn cut(&mut self, group: &mut Vec<u8>) -> Result<()> {
        if self.open.entries.is_empty() {
            return Ok(());
        }
        self.in_batch.clear();
        if self.waiting {
            self.held.push(std::mem::take(&mut self.open));
            return Ok(());
        }
        let batch = std::mem::take(&mut self.open);
        let done = self.encode(&batch, group);
        self.open = batch;
        self.open.prefixes.clear();
        self.open.entries.clear();
        self.open.pages.clear();
        done
    }

    /// Encodes what was held and the open batch, each batch with its own `CHECK` (the
    /// receiver holds at most one batch unvouched, however much was held here).
    fn flush_pages(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.waiting {
            return Ok(());
        }
        for batch in std::mem::take(&mut self.held) {
            let mut group = Vec::new();
            self.encode(&batch, &mut group)?;
            self.checked(out, group);
        }
        let mut group = Vec::new();
        self.cut(&mut group)?;
        self.checked(out, group);
        Ok(())
    }

    fn encode(&mut self, batch: &Batch, group: &mut Vec<u8>) -> Result<()> {
        let start = group.len();
        // the entries (per page: prefix length, prefix, index), sent as they are or,
        // when that is smaller, zstd-compressed (`PACKED_PAGES`)
        self.head.clear();
        let mut at = 0;
        for &(len, index) in &batch.entries {
            self.head.extend_from_slice(&(len as u32).to_be_bytes());
            self.head.extend_from_slice(&batch.prefixes[at..at + len]);
            self.head.extend_from_slice(&index.to_be_bytes());
            at += len;
        }
        let packed = self.pack_head()?;
        // the frame's length is known once the pages are encoded (straight into
        // `group`): written as 0 here, set below
        put_header(group, if packed { PACKED_PAGES } else { PAGES }, 0);
        group.extend_from_slice(&self.total.to_be_bytes());
        group.extend_from_slice(&(batch.entries.len() as u32).to_be_bytes());
        if packed {
            // both fit: the head is a batch's entries (far below 4 GiB), the packed
            // head is smaller
            group.extend_from_slice(&(self.head.len() as u32).to_be_bytes());
            group.extend_from_slice(&(self.packed.len() as u32).to_be_bytes());
            group.extend_from_slice(&self.packed);
        } else {
            group.extend_from_slice(&self.head);
        }
        let indices: Vec<u64> = batch.entries.iter().map(|&(_, i)| i).collect();
        let encoded = self
            .encoder()
            .and_then(|encoder| encoder.encode_pages_into(&indices, &batch.pages, group));
        if let Err(e) = encoded {
            group.truncate(start);
            return Err(e);
        }
        let len = group.len() - start - super::HEADER_LEN;
        // a frame is at most a batch of pages with their prefixes: far below 4 GiB
        let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        group[start + 1..start + super::HEADER_LEN].copy_from_slice(&len);
        if let (Some(store), Some(encoder)) = (&self.config.store, &self.encoder) {
            store.add_identified(&batch.pages, encoder.identified());
        }
        let mut at = 0;
        for (k, &(len, _)) in batch.entries.iter().enumerate() {
            // the stream span this page stands for: its prefix, then the page
            self.sent.update(&batch.prefixes[at..at + len]);
            self.sent
                .update(&batch.pages[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]);
            at += len;
        }
        Ok(())
    }

    /// Compresses `head` into `packed`; true when that saves bytes (the packed form
    /// adds two lengths).
    fn pack_head(&mut self) -> Result<bool> {
        if !self.config.packed_heads || self.head.len() < MIN_PACKED_HEAD {
            return Ok(false);
        }
        let bound = zstd::zstd_safe::compress_bound(self.head.len());
        if self.packed.len() < bound {
            self.packed.resize(bound, 0);
        }
        let len = zstd_compress_into(HEAD_LEVEL, &self.head, &mut self.packed[..bound])?;
        self.packed.truncate(len);
        Ok(len + 8 < self.head.len())
    }

    fn verbatim(&mut self, group: &mut Vec<u8>) {
        let data = std::mem::take(&mut self.prefix);
        self.sent.update(&data);
        put_frame(group, VERBATIM, &data);
    }

    /// Appends `group` and, when it is not empty, a `CHECK` for the stream so far.
    fn checked(&mut self, out: &mut Vec<u8>, group: Vec<u8>) {
        if group.is_empty() {
            return;
        }
        let before = out.len();
        if out.is_empty() {
            *out = group; // no copy for the common case: one group per call
        } else {
            out.extend_from_slice(&group);
        }
        put_frame(out, CHECK, &self.sent.payload());
        self.wire_bytes += (out.len() - before) as u64;
    }
}
