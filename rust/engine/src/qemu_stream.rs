//! Splits QEMU's precopy migration stream into RAM pages and everything else.
//!
//! The stream (QEMU 7.2, `migration/savevm.c` and `migration/ram.c`): a header
//! (`QEVM`, version 3), an optional configuration section, then sections. The `ram`
//! section's START, PART and END sections carry records `be64(offset | flags)`
//! [`u8 len + RAMBlock name` unless `CONTINUE`] followed by a 4 KiB page (`PAGE`),
//! a fill byte (`ZERO`), an XBZRLE or compressed payload; each ends with `EOS` and
//! an optional section footer (`0x7e`, `be32 section id`). Commands (`0x08`,
//! `be16 cmd`, `be16 len`, data) may come between sections.
//!
//! Every page payload of a `PAGE` record becomes a [`Piece::Page`] with its index in
//! the guest's page space (RAMBlocks in the order of the `MEM_SIZE` record, each
//! starting where the previous one ends); every other byte, page record headers
//! included, goes out verbatim, so concatenating the pieces gives back the stream
//! exactly. What the splitter cannot delimit — any non-`ram` iterative section,
//! device state (which has no length prefix; it comes after the last RAM), an unknown
//! record or capability that changes the layout — switches the rest of the stream to
//! verbatim pass-through; it never fails and never guesses.

use crate::PAGE_SIZE;

const MAGIC: u32 = 0x5145_564d; // "QEVM"
const VERSION: u32 = 3;

const SECTION_EOF: u8 = 0x00;
const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SECTION_FULL: u8 = 0x04;
const SUBSECTION: u8 = 0x05;
const CONFIGURATION: u8 = 0x07;
const COMMAND: u8 = 0x08;
const FOOTER: u8 = 0x7e;

const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const FLAG_XBZRLE: u64 = 0x40;
const FLAG_COMPRESS_PAGE: u64 = 0x100;
const FLAG_MULTIFD_FLUSH: u64 = 0x200;
const KNOWN_FLAGS: u64 = FLAG_ZERO
    | FLAG_MEM_SIZE
    | FLAG_PAGE
    | FLAG_EOS
    | FLAG_CONTINUE
    | FLAG_XBZRLE
    | FLAG_COMPRESS_PAGE
    | FLAG_MULTIFD_FLUSH;
const PAGE_MASK: u64 = !(PAGE_SIZE as u64 - 1);

/// Capabilities that add fields to the RAM records this splitter does not model.
const LAYOUT_CAPABILITIES: [&[u8]; 3] = [b"postcopy-ram", b"x-ignore-shared", b"mapped-ram"];

/// One piece of the stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes passed through as they are.
    Verbatim(Vec<u8>),
    /// The payload of a RAM page record: page `index` of the guest, 4 KiB.
    Page {
        /// Page index in the guest's page space (RAMBlocks laid end to end).
        index: u64,
        /// The page.
        data: Vec<u8>,
    },
}

/// One piece of the stream as [`StreamSplitter::feed_with`] hands it out: borrowed,
/// valid for the call of the sink only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceRef<'a> {
    /// Bytes passed through as they are.
    Verbatim(&'a [u8]),
    /// The payload of a RAM page record: page `index` of the guest, 4 KiB.
    Page {
        /// Page index in the guest's page space.
        index: u64,
        /// The page.
        data: &'a [u8],
    },
    /// The stream said the guest's size (its `MEM_SIZE` record, already handed out
    /// verbatim): `pages` pages in all RAMBlocks. Carries no bytes.
    RamSize {
        /// [`StreamSplitter::total_pages`] from now on.
        pages: u64,
    },
}

impl Piece {
    /// The piece borrowed, as [`StreamSplitter::feed_with`] hands pieces out.
    #[must_use]
    pub fn borrowed(&self) -> PieceRef<'_> {
        match self {
            Piece::Verbatim(bytes) => PieceRef::Verbatim(bytes),
            Piece::Page { index, data } => PieceRef::Page {
                index: *index,
                data,
            },
        }
    }
}

/// Appends `piece` to `out` as an owned [`Piece`], joining verbatim runs.
fn collect_piece(out: &mut Vec<Piece>, piece: PieceRef<'_>) {
    match piece {
        PieceRef::Verbatim(bytes) => match out.last_mut() {
            Some(Piece::Verbatim(last)) => last.extend_from_slice(bytes),
            _ => out.push(Piece::Verbatim(bytes.to_vec())),
        },
        PieceRef::Page { index, data } => out.push(Piece::Page {
            index,
            data: data.to_vec(),
        }),
        PieceRef::RamSize { .. } => {}
    }
}

/// The sink of one [`StreamSplitter::feed_with`] call and its first error.
struct Emit<'s, E> {
    sink: &'s mut dyn FnMut(PieceRef<'_>) -> Result<(), E>,
    error: Option<E>,
}

impl<E> Emit<'_, E> {
    /// Hands `piece` out, unless the sink failed already.
    fn send(&mut self, piece: PieceRef<'_>) {
        if self.error.is_none() {
            if let Err(e) = (self.sink)(piece) {
                self.error = Some(e);
            }
        }
    }

    /// The end of a step that handed something out: stop if the sink failed.
    fn done(&self) -> Result<(), Step> {
        if self.error.is_some() {
            Err(Step::Stopped)
        } else {
            Ok(())
        }
    }
}

/// What a RAM record was.
enum Record {
    /// A `PAGE` record: its page index, and where its payload starts.
    Page { index: u64, at: usize },
    /// The `MEM_SIZE` record (the RAMBlocks are known now).
    Size,
    /// Anything else (zero page, EOS, ...): verbatim.
    Other,
}

/// Bytes a unit that straddles two calls grows by at least, per attempt.
const STRADDLE_STEP: usize = 8 * 1024;

/// One RAMBlock from the `MEM_SIZE` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlock {
    /// QEMU's name for it (`pc.ram`, `vga.vram`, ...).
    pub name: Vec<u8>,
    /// Its length in bytes.
    pub length: u64,
    /// Index of its first page in the guest's page space.
    pub first_page: u64,
}

/// Counters of what was split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitStats {
    /// Bytes fed in.
    pub bytes: u64,
    /// RAM pages handed out as [`Piece::Page`].
    pub pages: u64,
    /// Zero-page records (left verbatim: they are already tiny).
    pub zero_pages: u64,
    /// Bytes passed through verbatim.
    pub verbatim_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    TopLevel,
    /// Inside the ram section with this id: RAM records until EOS.
    Ram {
        section: u32,
        setup: bool,
    },
    /// After EOS: an optional footer for this section.
    Footer {
        section: u32,
    },
    /// Everything from here on is verbatim.
    Passthrough,
}

/// Why a parse step stopped.
enum Step {
    /// Needs more bytes than are buffered.
    More,
    /// Cannot delimit what follows: pass the rest through.
    GiveUp(&'static str),
    /// The sink failed: stop after this unit.
    Stopped,
}

/// A bounds-checked reader over the buffered bytes.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Step> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(Step::GiveUp("length overflow"))?;
        let got = self.buf.get(self.at..end).ok_or(Step::More)?;
        self.at = end;
        Ok(got)
    }
    fn u8(&mut self) -> Result<u8, Step> {
        Ok(self.take(1)?[0])
    }
    fn be16(&mut self) -> Result<u16, Step> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn be32(&mut self) -> Result<u32, Step> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn be64(&mut self) -> Result<u64, Step> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn name(&mut self) -> Result<Vec<u8>, Step> {
        let len = self.u8()? as usize;
        Ok(self.take(len)?.to_vec())
    }
    fn peek(&self) -> Result<u8, Step> {
        self.buf.get(self.at).copied().ok_or(Step::More)
    }
}

/// The streaming splitter: feed it the stream in chunks of any size.
pub struct StreamSplitter {
    buf: Vec<u8>,
    state: State,
    blocks: Vec<RamBlock>,
    current_block: Option<usize>,
    ram_section: Option<u32>,
    gave_up: Option<&'static str>,
    pending: Vec<u8>,
    /// What was split so far.
    pub stats: SplitStats,
}

impl Default for StreamSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamSplitter {
    /// A splitter at the start of a stream.
    #[must_use]
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            state: State::Header,
            blocks: Vec::new(),
            current_block: None,
            ram_section: None,
            gave_up: None,
            pending: Vec::new(),
            stats: SplitStats::default(),
        }
    }

    /// Why the splitter switched to pass-through, if it did.
    #[must_use]
    pub fn passthrough_reason(&self) -> Option<&'static str> {
        self.gave_up
    }

    /// The RAMBlocks announced by the stream so far.
    #[must_use]
    pub fn blocks(&self) -> &[RamBlock] {
        &self.blocks
    }

    /// Pages in the guest's page space (all RAMBlocks), once announced.
    #[must_use]
    pub fn total_pages(&self) -> u64 {
        self.blocks
            .last()
            .map_or(0, |b| b.first_page + b.length.div_ceil(PAGE_SIZE as u64))
    }

    /// Splits `data` (the next bytes of the stream); returns the pieces now complete.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        let Ok(()) = self.feed_with(data, &mut |piece| {
            collect_piece(&mut out, piece);
            Ok::<(), std::convert::Infallible>(())
        });
        out
    }

    /// Splits `data` (the next bytes of the stream), handing each complete piece to
    /// `sink` as it is found, in order, without copying pages: they are slices of
    /// `data` (or, for a record that straddled the previous call, of a small buffer).
    /// [`PieceRef::RamSize`] comes once the stream said the guest's size.
    ///
    /// # Errors
    /// The first error `sink` returns; the splitter then stops where it was, and the
    /// rest of `data` is not split (feed it no more).
    pub fn feed_with<E>(
        &mut self,
        data: &[u8],
        sink: &mut dyn FnMut(PieceRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.stats.bytes += data.len() as u64;
        let mut emit = Emit { sink, error: None };
        let mut rest = data;
        if self.state != State::Passthrough && !self.buf.is_empty() {
            // the unit the last call could not complete: grow its buffer from `data`
            // (doubling, so a unit is copied at most about twice) until it is whole
            let mut buf = std::mem::take(&mut self.buf);
            loop {
                let old = buf.len();
                let take = rest.len().min(old.max(STRADDLE_STEP));
                buf.extend_from_slice(&rest[..take]);
                let at = self.parse(&buf, &mut emit);
                if let Some(error) = emit.error.take() {
                    return Err(error);
                }
                if self.state == State::Passthrough {
                    self.verbatim_to(&buf[at..], &mut emit);
                    buf.clear();
                    rest = &rest[take..];
                    break;
                }
                if at >= old {
                    // the straddling unit (and maybe more) is whole: go on in `data`
                    rest = &rest[at - old..];
                    buf.clear();
                    break;
                }
                buf.drain(..at);
                rest = &rest[take..];
                if rest.is_empty() {
                    break;
                }
            }
            self.buf = buf;
        }
        if self.state != State::Passthrough && self.buf.is_empty() {
            let at = self.parse(rest, &mut emit);
            if self.state != State::Passthrough {
                self.buf.extend_from_slice(&rest[at..]); // an incomplete unit waits
                rest = &[];
            } else {
                rest = &rest[at..];
            }
        }
        if let Some(error) = emit.error.take() {
            return Err(error);
        }
        if self.state == State::Passthrough {
            self.verbatim_to(rest, &mut emit);
        }
        self.flush_to(&mut emit);
        emit.error.map_or(Ok(()), Err)
    }

    /// The end of the stream: whatever is still buffered (an incomplete record) goes
    /// out verbatim.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        self.pend(&rest);
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            out.push(Piece::Verbatim(std::mem::take(&mut self.pending)));
        }
        out
    }

    /// Parses whole units from the start of `buf` until one is incomplete, the stream
    /// cannot be delimited (pass-through) or the sink failed; returns the bytes
    /// consumed (handed out, or pending as verbatim).
    fn parse<E>(&mut self, buf: &[u8], emit: &mut Emit<'_, E>) -> usize {
        let mut at = 0;
        while self.state != State::Passthrough {
            let mut r = Reader { buf, at };
            match self.step(&mut r, emit) {
                Ok(()) => at = r.at,
                Err(Step::More) => break,
                Err(Step::Stopped) => {
                    at = r.at;
                    break;
                }
                Err(Step::GiveUp(why)) => {
                    self.gave_up = Some(why);
                    self.state = State::Passthrough;
                }
            }
        }
        at
    }

    /// Verbatim bytes that wait (copied) for the next piece handed out.
    fn pend(&mut self, bytes: &[u8]) {
        self.stats.verbatim_bytes += bytes.len() as u64;
        self.pending.extend_from_slice(bytes);
    }

    /// Bytes that go out as they are: after what is pending, without a copy.
    fn verbatim_to<E>(&mut self, bytes: &[u8], emit: &mut Emit<'_, E>) {
        if bytes.is_empty() {
            return;
        }
        self.flush_to(emit);
        self.stats.verbatim_bytes += bytes.len() as u64;
        emit.send(PieceRef::Verbatim(bytes));
    }

    fn flush_to<E>(&mut self, emit: &mut Emit<'_, E>) {
        if !self.pending.is_empty() {
            emit.send(PieceRef::Verbatim(&self.pending));
            self.pending.clear();
        }
    }

    /// Parses one unit at `r`; on success its bytes are handed out (pages) or pending
    /// (everything else, verbatim).
    fn step<E>(&mut self, r: &mut Reader<'_>, emit: &mut Emit<'_, E>) -> Result<(), Step> {
        let start = r.at;
        match self.state {
            State::Header => {
                if r.be32()? != MAGIC {
                    return Err(Step::GiveUp("not a QEMU migration stream"));
                }
                if r.be32()? != VERSION {
                    return Err(Step::GiveUp("unsupported stream version"));
                }
                self.state = State::TopLevel;
            }
            State::TopLevel => self.section(r)?,
            State::Ram { section, setup } => match self.ram_record(r, section, setup)? {
                Record::Size => {
                    self.pend(&r.buf[start..r.at]);
                    self.flush_to(emit);
                    emit.send(PieceRef::RamSize {
                        pages: self.total_pages(),
                    });
                    return emit.done();
                }
                Record::Page { index, at } => {
                    // header verbatim, payload as a page
                    self.pend(&r.buf[start..at]);
                    self.flush_to(emit);
                    self.stats.pages += 1;
                    emit.send(PieceRef::Page {
                        index,
                        data: &r.buf[at..at + PAGE_SIZE],
                    });
                    return emit.done();
                }
                Record::Other => {}
            },
            State::Footer { section } => {
                if r.peek()? == FOOTER {
                    r.u8()?;
                    if r.be32()? != section {
                        return Err(Step::GiveUp("section footer of another section"));
                    }
                }
                self.state = State::TopLevel;
            }
            State::Passthrough => unreachable!("the loop stops in pass-through"),
        }
        self.pend(&r.buf[start..r.at]);
        Ok(())
    }

    fn section(&mut self, r: &mut Reader<'_>) -> Result<(), Step> {
        match r.u8()? {
            CONFIGURATION => self.configuration(r),
            kind @ (SECTION_START | SECTION_FULL) => {
                let id = r.be32()?;
                let name = r.name()?;
                let _instance = r.be32()?;
                let _version = r.be32()?;
                if kind == SECTION_START && name == b"ram" {
                    self.ram_section = Some(id);
                    self.state = State::Ram {
                        section: id,
                        setup: true,
                    };
                    Ok(())
                } else if kind == SECTION_FULL {
                    // device state has no length prefix: it cannot be delimited
                    Err(Step::GiveUp("device state (passed through)"))
                } else {
                    Err(Step::GiveUp("an iterative section other than ram"))
                }
            }
            SECTION_PART | SECTION_END => {
                let id = r.be32()?;
                if Some(id) == self.ram_section {
                    self.state = State::Ram {
                        section: id,
                        setup: false,
                    };
                    Ok(())
                } else {
                    Err(Step::GiveUp("a section other than ram"))
                }
            }
            COMMAND => {
                let _cmd = r.be16()?;
                let len = r.be16()? as usize;
                r.take(len)?;
                Ok(())
            }
            SECTION_EOF => Err(Step::GiveUp("end of RAM sections")),
            _ => Err(Step::GiveUp("unknown section type")),
        }
    }

    /// The configuration section: machine name, then known subsections.
    fn configuration(&mut self, r: &mut Reader<'_>) -> Result<(), Step> {
        let len = r.be32()? as usize;
        r.take(len)?;
        while r.peek()? == SUBSECTION {
            r.u8()?;
            let name = r.name()?;
            let _version = r.be32()?;
            match name.as_slice() {
                b"configuration/target-page-bits" => {
                    if r.be32()? != PAGE_SIZE.trailing_zeros() {
                        return Err(Step::GiveUp("target page size is not 4 KiB"));
                    }
                }
                b"configuration/capabilities" => {
                    let count = r.be32()?;
                    for _ in 0..count {
                        let cap = r.name()?;
                        if LAYOUT_CAPABILITIES.contains(&cap.as_slice()) {
                            return Err(Step::GiveUp("a capability that changes RAM records"));
                        }
                    }
                }
                b"configuration/uuid" => {
                    r.take(16)?;
                }
                _ => return Err(Step::GiveUp("unknown configuration subsection")),
            }
        }
        Ok(())
    }

    /// One RAM record: for a `PAGE` record, the page index and where its payload
    /// starts (the payload is buffered).
    fn ram_record(
        &mut self,
        r: &mut Reader<'_>,
        section: u32,
        setup: bool,
    ) -> Result<Record, Step> {
        let word = r.be64()?;
        let flags = word & !PAGE_MASK;
        let addr = word & PAGE_MASK;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Step::GiveUp("unknown RAM record flags"));
        }
        if flags & FLAG_MEM_SIZE != 0 {
            if !setup {
                return Err(Step::GiveUp("RAM size record outside setup"));
            }
            if !self.blocks.is_empty() {
                // (QEMU announces its RAMBlocks once a stream; pages already split
                // name blocks of the first list)
                return Err(Step::GiveUp("a second RAM size record"));
            }
            let mut blocks = Vec::new();
            let mut seen = 0u64;
            let mut first_page = 0u64;
            while seen < addr {
                let name = r.name()?;
                let length = r.be64()?;
                if length == 0 || length % PAGE_SIZE as u64 != 0 {
                    return Err(Step::GiveUp("RAMBlock length is not whole pages"));
                }
                seen = seen
                    .checked_add(length)
                    .ok_or(Step::GiveUp("RAM size overflow"))?;
                blocks.push(RamBlock {
                    name,
                    length,
                    first_page,
                });
                first_page += length / PAGE_SIZE as u64;
            }
            if seen != addr {
                return Err(Step::GiveUp("RAMBlocks do not add up to the RAM size"));
            }
            self.blocks = blocks;
            return Ok(Record::Size);
        }
        if flags & FLAG_EOS != 0 {
            self.state = State::Footer { section };
            return Ok(Record::Other);
        }
        if flags & FLAG_MULTIFD_FLUSH != 0 && flags & !FLAG_MULTIFD_FLUSH == 0 {
            return Ok(Record::Other);
        }
        let block = if flags & FLAG_CONTINUE != 0 {
            self.current_block
                .ok_or(Step::GiveUp("CONTINUE without a block"))?
        } else {
            let name = r.name()?;
            self.blocks
                .iter()
                .position(|b| b.name == name)
                .ok_or(Step::GiveUp("a RAMBlock the stream did not announce"))?
        };
        let info = self
            .blocks
            .get(block)
            .ok_or(Step::GiveUp("a RAMBlock the stream did not announce"))?;
        if addr >= info.length {
            return Err(Step::GiveUp("a page beyond its RAMBlock"));
        }
        let index = info.first_page + addr / PAGE_SIZE as u64;
        let kind = flags & (FLAG_ZERO | FLAG_PAGE | FLAG_XBZRLE | FLAG_COMPRESS_PAGE);
        let result = match kind {
            FLAG_ZERO => {
                r.u8()?;
                self.stats.zero_pages += 1;
                Record::Other
            }
            FLAG_PAGE => {
                let at = r.at;
                r.take(PAGE_SIZE)?;
                Record::Page { index, at }
            }
            FLAG_XBZRLE => {
                let _encoding = r.u8()?;
                let len = r.be16()? as usize;
                r.take(len)?;
                Record::Other
            }
            FLAG_COMPRESS_PAGE => {
                let len = r.be32()? as usize;
                r.take(len)?;
                Record::Other
            }
            _ => return Err(Step::GiveUp("a RAM record of no known kind")),
        };
        self.current_block = Some(block);
        Ok(result)
    }
}

#[cfg(test)]
pub(crate) mod tests;
