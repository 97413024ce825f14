//! The destination's half: channel frames in, QEMU's stream out — only bytes a `CHECK`
//! (or `END`) vouched for, so a corrupted stream never reaches the destination QEMU.
//!
//! Memory is bounded: the guest's distinct contents (at most its size, from `START`,
//! which must not exceed [`StreamReceiver::max_pages`]: by default this host's
//! physical memory), and at most `max_unchecked` bytes of stream awaiting a `CHECK`.

use super::{
    parse_end, parse_start, put_frame, StreamDigest, ABORT, ANNOUNCE, CHECK, END, PACKED_PAGES,
    PAGES, START, VERBATIM,
};
use crate::decoder::announcement;
use crate::error::{EngineError, Result};
use crate::workers::check_threads;
use crate::{Decoder, PageStore, Pinned, PAGE_SIZE};

/// Largest guest the receiver accepts (pages): 16 TiB.
pub const MAX_GUEST_PAGES: u64 = 1 << 32;

/// This host's physical memory in pages (a guest that claims more cannot run here),
/// or [`MAX_GUEST_PAGES`] when the system does not say.
fn host_pages() -> u64 {
    // SAFETY: sysconf reads a system setting; it has no memory effects.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    match (u64::try_from(pages), u64::try_from(size)) {
        (Ok(pages), Ok(size)) if pages > 0 && size > 0 => {
            (pages.saturating_mul(size) / PAGE_SIZE as u64).min(MAX_GUEST_PAGES)
        }
        _ => MAX_GUEST_PAGES,
    }
}

/// The receiver's state for one migration.
pub struct StreamReceiver {
    store: Option<PageStore>,
    decoder: Option<Decoder>,
    total: u64,
    digest: StreamDigest,
    unchecked: Vec<u8>,
    /// `unchecked` was released by the last call (it is cleared, its room kept, at the
    /// next).
    released: bool,
    max_unchecked: usize,
    /// the decoder's threads
    threads: usize,
    /// the largest guest (pages) a `START` may claim
    max_pages: u64,
    /// `END` arrived and matched.
    pub ended: bool,
    /// Frames for the sender (the `ANNOUNCE`, made at once), not yet taken.
    pub reply: Vec<u8>,
    /// The store's pages pinned and announced at the start (and their order), until
    /// the decoder exists.
    announced: Option<(Pinned, Vec<u128>)>,
    /// a `PACKED_PAGES` frame's entries, unpacked (kept from frame to frame), and the
    /// zstd context that unpacks them
    head: Vec<u8>,
    unzstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl StreamReceiver {
    /// `store`: its pages are pinned for this stream and announced to the sender at
    /// once (the `ANNOUNCE` waits in `reply`; empty without a store), so the
    /// announcement crosses the link while the source is still starting its QEMU.
    #[must_use]
    pub fn new(store: Option<PageStore>, max_unchecked: usize) -> Self {
        let pinned = store.as_ref().map(PageStore::pin_in_order);
        let mut reply = Vec::new();
        put_frame(
            &mut reply,
            ANNOUNCE,
            &pinned
                .as_ref()
                .map(|(_, order)| announcement(order))
                .unwrap_or_default(),
        );
        Self {
            announced: pinned,
            store,
            decoder: None,
            total: 0,
            digest: StreamDigest::new(),
            unchecked: Vec::new(),
            released: false,
            max_unchecked,
            threads: 1,
            max_pages: host_pages(),
            ended: false,
            reply,
            head: Vec::new(),
            unzstd: None,
        }
    }

    /// Decodes on `threads` threads: the caller's and `threads - 1` helpers, which read
    /// the batches of a frame ahead of the one applied ([`Decoder::with_threads`]).
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] for a count outside 1..=1024.
    pub fn decode_threads(mut self, threads: usize) -> Result<Self> {
        self.threads = check_threads(threads)?;
        Ok(self)
    }

    /// Refuses a stream whose guest (its `START`, or its first `PAGES`) has more than
    /// `pages` pages: the destination knows the guest's size, and the per-page state a
    /// claim sets up is not the source's to choose. Without it, this host's physical
    /// memory.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] for 0 pages.
    pub fn max_pages(mut self, pages: u64) -> Result<Self> {
        if pages == 0 {
            return Err(EngineError::invalid("max_pages must be at least 1"));
        }
        self.max_pages = pages.min(MAX_GUEST_PAGES);
        Ok(self)
    }

    /// The stream bytes the last [`StreamReceiver::apply`] released (empty if it
    /// released none), until the next call.
    #[must_use]
    pub fn released(&self) -> &[u8] {
        if self.released {
            &self.unchecked
        } else {
            &[]
        }
    }

    /// Takes the bytes the last [`StreamReceiver::apply`] released (empty if it released
    /// none), leaving a buffer from `spare` (emptied; its room is kept) to rebuild the
    /// next ones in; `spare` is only asked when there are bytes to take. A caller that
    /// lends the released bytes out need not copy them.
    pub fn take_released(&mut self, spare: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
        if !self.released || self.unchecked.is_empty() {
            return Vec::new();
        }
        let mut spare = spare();
        spare.clear();
        self.released = false;
        std::mem::replace(&mut self.unchecked, spare)
    }

    /// Bytes of the stream rebuilt so far (released or not).
    #[must_use]
    pub fn length(&self) -> u64 {
        self.digest.length
    }

    /// Pages of the guest (0 before `START` or the first `PAGES`).
    #[must_use]
    pub fn total_pages(&self) -> u64 {
        self.total
    }

    /// Adds up to `count` pages of the arrived memory, from page `start` on, to the
    /// page store (after the stream: for the next migration); returns how many were new.
    /// The store shares the contents that came from it; the others are copied, only
    /// those it does not hold yet.
    #[must_use]
    pub fn keep(&self, start: u64, count: u64) -> usize {
        let (Some(store), Some(decoder)) = (&self.store, &self.decoder) else {
            return 0;
        };
        let pages = decoder.pages() as u64;
        let (from, to) = (start.min(pages), start.saturating_add(count).min(pages));
        store.add_shared((from..to).filter_map(|i| decoder.held_page(i as usize)))
    }

    /// Applies one frame; returns the stream bytes now vouched for (empty unless the
    /// frame is a `CHECK` or `END`).
    ///
    /// # Errors
    /// [`EngineError::Channel`] for frames out of place or malformed, an `ABORT`, or
    /// too much stream without a `CHECK`; [`EngineError::DigestMismatch`] when the
    /// rebuilt stream differs from the source's; [`EngineError::Malformed`] for a bad
    /// page batch. Nothing unvouched is ever returned.
    pub fn apply(&mut self, kind: u8, payload: &[u8]) -> Result<&[u8]> {
        if self.ended {
            return Err(EngineError::channel("frame after END"));
        }
        if self.released {
            self.unchecked.clear();
            self.released = false;
        }
        match kind {
            VERBATIM => {
                self.hold(payload)?;
                Ok(&[])
            }
            START => {
                if self.decoder.is_some() {
                    return Err(EngineError::channel("a second START"));
                }
                self.begin(parse_start(payload)?)?;
                Ok(&[])
            }
            PAGES | PACKED_PAGES => {
                self.pages(payload, kind == PACKED_PAGES)?;
                Ok(&[])
            }
            CHECK | END => {
                let (length, digest) = parse_end(payload)?;
                let our_length = self.digest.length;
                if length != our_length {
                    return Err(EngineError::DigestMismatch {
                        reason: format!(
                            "rebuilt stream has {our_length} bytes where the source had {length}"
                        ),
                    });
                }
                if digest != self.digest.value() {
                    return Err(EngineError::DigestMismatch {
                        reason: format!(
                            "rebuilt stream's digest differs from the source's at byte {length}"
                        ),
                    });
                }
                self.ended = kind == END;
                self.released = true;
                Ok(&self.unchecked)
            }
            ABORT => Err(EngineError::channel(format!(
                "source aborted: {}",
                String::from_utf8_lossy(&payload[..payload.len().min(200)])
            ))),
            other => Err(EngineError::channel(format!(
                "unexpected frame type {other} from the source"
            ))),
        }
    }

    fn begin(&mut self, total: u64) -> Result<()> {
        if total == 0 || total > self.max_pages {
            return Err(EngineError::channel(format!(
                "a guest of {total} pages is not accepted here (at most {})",
                self.max_pages
            )));
        }
        let pages = usize::try_from(total).map_err(|_| EngineError::channel("guest too large"))?;
        let mut decoder = Decoder::with_threads(pages, self.threads)?;
        if let Some((pinned, order)) = self.announced.take() {
            decoder.adopt(pinned, order);
        }
        self.decoder = Some(decoder);
        self.total = total;
        Ok(())
    }

    /// A `PAGES` (`PACKED_PAGES`) frame: its batch applied, then its span of the stream
    /// (each page's prefix and the page's content after the whole batch) held for the
    /// next `CHECK`.
    fn pages(&mut self, payload: &[u8], packed: bool) -> Result<()> {
        let mut r = payload;
        let total = take_u64(&mut r)?;
        let count = take_u32(&mut r)? as usize;
        if self.decoder.is_none() {
            self.begin(total)?;
        } else if total != self.total {
            return Err(EngineError::channel(
                "PAGES frame for a guest of another size",
            ));
        }
        let mut head = std::mem::take(&mut self.head);
        // the entries, checked before anything is applied
        let entries = if packed {
            let head_len = take_u32(&mut r)? as usize;
            let packed_len = take_u32(&mut r)? as usize;
            if packed_len > r.len() {
                return Err(EngineError::channel(
                    "packed PAGES head runs past the frame",
                ));
            }
            // a head's span of the stream is longer than the head (a page's 4 KiB
            // against its entry's 12 bytes): refused before it is unpacked
            self.check_room(head_len)?;
            let (zstd, rest) = r.split_at(packed_len);
            r = rest;
            self.unpack_head(zstd, head_len, &mut head)?;
            let mut h = &head[..];
            let entries = take_entries(&mut h, count, total)?;
            if !h.is_empty() {
                return Err(EngineError::channel(
                    "packed PAGES head longer than its entries",
                ));
            }
            entries
        } else {
            take_entries(&mut r, count, total)?
        };
        let span: usize = entries.iter().map(|(p, _)| p.len() + PAGE_SIZE).sum();
        self.check_room(span)?;
        let decoder = self.decoder.as_mut().expect("made above");
        decoder.decode(r)?;
        let start = self.unchecked.len();
        self.unchecked.reserve(span);
        for (prefix, index) in entries {
            self.unchecked.extend_from_slice(prefix);
            self.unchecked
                .extend_from_slice(decoder.page(usize::try_from(index).expect("checked")));
        }
        self.digest.update(&self.unchecked[start..]);
        self.head = head;
        Ok(())
    }

    /// `zstd` into `head`: exactly `len` bytes, or an error.
    fn unpack_head(&mut self, zstd: &[u8], len: usize, head: &mut Vec<u8>) -> Result<()> {
        if self.unzstd.is_none() {
            self.unzstd = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| EngineError::invalid(format!("zstd: {e}")))?,
            );
        }
        let unzstd = self.unzstd.as_mut().expect("made above");
        head.clear();
        crate::mem::reserve(head, len);
        // writes at most the room reserved, however much the input claims
        let got = unzstd
            .decompress_to_buffer(zstd, head)
            .map_err(|e| EngineError::channel(format!("packed PAGES head: zstd: {e}")))?;
        if got != len {
            return Err(EngineError::channel(format!(
                "packed PAGES head of {got} bytes where the frame says {len}"
            )));
        }
        Ok(())
    }

    fn hold(&mut self, data: &[u8]) -> Result<()> {
        self.check_room(data.len())?;
        self.digest.update(data);
        self.unchecked.extend_from_slice(data);
        Ok(())
    }

    fn check_room(&self, more: usize) -> Result<()> {
        if self.unchecked.len() + more > self.max_unchecked {
            return Err(EngineError::channel(
                "too much of the stream without a CHECK",
            ));
        }
        Ok(())
    }
}

/// `count` entries (`prefix_len u32`, prefix, `index u64` below `total`) from `r`.
fn take_entries<'a>(r: &mut &'a [u8], count: usize, total: u64) -> Result<Vec<(&'a [u8], u64)>> {
    // at most one entry per 12 bytes
    let mut entries = Vec::with_capacity(count.min(r.len() / 12));
    for _ in 0..count {
        let len = take_u32(r)? as usize;
        if len > r.len() {
            return Err(EngineError::channel("page prefix runs past the frame"));
        }
        let (prefix, rest) = r.split_at(len);
        *r = rest;
        let index = take_u64(r)?;
        if index >= total {
            return Err(EngineError::channel(format!(
                "page index {index} outside the guest's {total} pages"
            )));
        }
        entries.push((prefix, index));
    }
    Ok(entries)
}

fn take_u32(r: &mut &[u8]) -> Result<u32> {
    let (head, rest) = r
        .split_first_chunk::<4>()
        .ok_or_else(|| EngineError::channel("truncated PAGES frame"))?;
    *r = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_u64(r: &mut &[u8]) -> Result<u64> {
    let (head, rest) = r
        .split_first_chunk::<8>()
        .ok_or_else(|| EngineError::channel("truncated PAGES frame"))?;
    *r = rest;
    Ok(u64::from_be_bytes(*head))
}
