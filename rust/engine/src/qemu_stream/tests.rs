//! The splitter on streams built to QEMU 7.2's layout, fed in chunks of every size.

use super::*;
use proptest::prelude::*;

/// Writes a stream the way QEMU's savevm/ram code does, remembering the pages.
#[derive(Default)]
pub(crate) struct Stream {
    pub(crate) bytes: Vec<u8>,
    pages: Vec<(u64, Vec<u8>)>,
    blocks: Vec<(Vec<u8>, u64, u64)>, // name, length, first page
}

impl Stream {
    pub(crate) fn put(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }
    pub(crate) fn name(&mut self, n: &[u8]) -> &mut Self {
        self.put(&[n.len() as u8]).put(n)
    }
    pub(crate) fn header(&mut self) -> &mut Self {
        self.put(&MAGIC.to_be_bytes()).put(&VERSION.to_be_bytes())
    }
    pub(crate) fn configuration(&mut self, caps: &[&[u8]]) -> &mut Self {
        self.put(&[CONFIGURATION])
            .put(&8u32.to_be_bytes())
            .put(b"pc-q35-7");
        if !caps.is_empty() {
            self.put(&[SUBSECTION]).name(b"configuration/capabilities");
            self.put(&1u32.to_be_bytes())
                .put(&(caps.len() as u32).to_be_bytes());
            for cap in caps {
                self.name(cap);
            }
        }
        self.put(&[SUBSECTION])
            .name(b"configuration/uuid")
            .put(&1u32.to_be_bytes());
        self.put(&[7u8; 16])
    }
    pub(crate) fn section_start(&mut self, kind: u8, id: u32, name: &[u8]) -> &mut Self {
        self.put(&[kind]).put(&id.to_be_bytes()).name(name);
        self.put(&0u32.to_be_bytes()).put(&4u32.to_be_bytes())
    }
    pub(crate) fn ram_setup(&mut self, blocks: &[(&[u8], u64)]) -> &mut Self {
        let total: u64 = blocks.iter().map(|b| b.1).sum();
        self.put(&(total | FLAG_MEM_SIZE).to_be_bytes());
        let mut first = 0;
        for (name, len) in blocks {
            self.name(name).put(&len.to_be_bytes());
            self.blocks.push((name.to_vec(), *len, first));
            first += len / PAGE_SIZE as u64;
        }
        self
    }
    pub(crate) fn first_page(&self, block: &[u8]) -> u64 {
        self.blocks.iter().find(|b| b.0 == block).unwrap().2
    }
    pub(crate) fn page(&mut self, block: &[u8], cont: bool, addr: u64, fill: u8) -> &mut Self {
        let flags = FLAG_PAGE | if cont { FLAG_CONTINUE } else { 0 };
        self.put(&(addr | flags).to_be_bytes());
        if !cont {
            self.name(block);
        }
        let data: Vec<u8> = (0..PAGE_SIZE).map(|i| fill ^ (i as u8)).collect();
        self.put(&data);
        let index = self.first_page(block) + addr / PAGE_SIZE as u64;
        self.pages.push((index, data));
        self
    }
    pub(crate) fn zero(&mut self, block: &[u8], addr: u64) -> &mut Self {
        self.put(&(addr | FLAG_ZERO).to_be_bytes())
            .name(block)
            .put(&[0])
    }
    pub(crate) fn xbzrle(&mut self, addr: u64) -> &mut Self {
        self.put(&(addr | FLAG_XBZRLE | FLAG_CONTINUE).to_be_bytes());
        self.put(&[1]).put(&3u16.to_be_bytes()).put(&[9, 9, 9])
    }
    pub(crate) fn eos(&mut self) -> &mut Self {
        self.put(&FLAG_EOS.to_be_bytes())
    }
    pub(crate) fn footer(&mut self, id: u32) -> &mut Self {
        self.put(&[FOOTER]).put(&id.to_be_bytes())
    }
    pub(crate) fn command(&mut self) -> &mut Self {
        self.put(&[COMMAND])
            .put(&3u16.to_be_bytes())
            .put(&4u16.to_be_bytes());
        self.put(&1u32.to_be_bytes())
    }
}

/// A full precopy: setup, two iterations, completion, a device, EOF and a description.
pub(crate) fn migration() -> Stream {
    let mut s = Stream::default();
    s.header().configuration(&[b"events", b"return-path"]);
    s.section_start(SECTION_START, 2, b"ram")
        .ram_setup(&[(b"pc.ram", 64 * 4096), (b"vga.vram", 8 * 4096)])
        .eos()
        .footer(2);
    s.put(&[SECTION_PART]).put(&2u32.to_be_bytes());
    s.page(b"pc.ram", false, 0, 1)
        .page(b"pc.ram", true, 4096, 2)
        .zero(b"pc.ram", 2 * 4096)
        .page(b"vga.vram", false, 4096 * 3, 3)
        .page(b"pc.ram", false, 63 * 4096, 4)
        .eos()
        .footer(2);
    s.command();
    s.put(&[SECTION_PART]).put(&2u32.to_be_bytes());
    s.page(b"pc.ram", false, 0, 5).xbzrle(4096).eos().footer(2);
    s.put(&[SECTION_END]).put(&2u32.to_be_bytes());
    s.page(b"pc.ram", false, 4096, 6).eos().footer(2);
    s.section_start(SECTION_FULL, 3, b"cpu");
    s.put(&[0x12, 0x34, FOOTER, 0, 0, 0, 2]).footer(3); // opaque device state
    s.put(&[SECTION_EOF, 0x06])
        .put(&2u32.to_be_bytes())
        .put(b"{}");
    s
}

fn split(stream: &[u8], chunks: &[usize]) -> (Vec<Piece>, StreamSplitter) {
    let mut sp = StreamSplitter::new();
    let mut out = Vec::new();
    let mut at = 0;
    for &c in chunks.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + c.max(1)).min(stream.len());
        out.extend(sp.feed(&stream[at..end]));
        at = end;
    }
    out.extend(sp.finish());
    (out, sp)
}

fn join(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Verbatim(b) => out.extend_from_slice(b),
            Piece::Page { data, .. } => out.extend_from_slice(data),
        }
    }
    out
}

fn pages(pieces: &[Piece]) -> Vec<(u64, Vec<u8>)> {
    pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Page { index, data } => Some((*index, data.clone())),
            Piece::Verbatim(_) => None,
        })
        .collect()
}

#[test]
fn a_whole_migration_splits_into_its_pages_and_joins_back() {
    let s = migration();
    let (pieces, sp) = split(&s.bytes, &[s.bytes.len()]);
    assert_eq!(join(&pieces), s.bytes);
    assert_eq!(pages(&pieces), s.pages);
    assert_eq!(
        pages(&pieces)[2].0,
        64 + 3,
        "vga.vram starts after pc.ram's 64 pages"
    );
    assert_eq!(sp.total_pages(), 72);
    assert_eq!(sp.stats.pages, 6);
    assert_eq!(sp.stats.zero_pages, 1);
    assert_eq!(
        sp.passthrough_reason(),
        Some("device state (passed through)")
    );
    assert_eq!(
        sp.stats.verbatim_bytes + 6 * PAGE_SIZE as u64,
        s.bytes.len() as u64
    );
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_pieces(chunks in proptest::collection::vec(1usize..9000, 1..20)) {
        let s = migration();
        let (pieces, _) = split(&s.bytes, &chunks);
        prop_assert_eq!(join(&pieces), s.bytes.clone());
        prop_assert_eq!(pages(&pieces), s.pages);
    }

    #[test]
    fn corrupted_streams_still_join_back_exactly(at in 0usize..20000, byte in any::<u8>()) {
        let mut bytes = migration().bytes;
        let at = at % bytes.len();
        bytes[at] = byte;
        let (pieces, _) = split(&bytes, &[777]);
        prop_assert_eq!(join(&pieces), bytes);
    }
}

#[test]
fn layout_changing_capabilities_pass_everything_through() {
    let mut s = Stream::default();
    s.header().configuration(&[b"postcopy-ram"]);
    s.section_start(SECTION_START, 2, b"ram")
        .ram_setup(&[(b"pc.ram", 4096)])
        .eos();
    let (pieces, sp) = split(&s.bytes, &[100]);
    assert_eq!(join(&pieces), s.bytes);
    assert!(pages(&pieces).is_empty());
    assert_eq!(
        sp.passthrough_reason(),
        Some("a capability that changes RAM records")
    );
}

#[test]
fn other_streams_and_unknown_records_pass_through() {
    let (pieces, sp) = split(b"GET / HTTP/1.1\r\n\r\n", &[3]);
    assert_eq!(join(&pieces), b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(sp.passthrough_reason(), Some("not a QEMU migration stream"));

    let mut s = Stream::default();
    s.header();
    s.section_start(SECTION_START, 2, b"ram")
        .ram_setup(&[(b"pc.ram", 8192)])
        .eos();
    s.put(&[SECTION_PART]).put(&2u32.to_be_bytes());
    s.page(b"pc.ram", false, 0, 1);
    s.put(&(0x80u64).to_be_bytes()); // RAM_SAVE_FLAG_HOOK (RDMA): not modelled
    s.put(b"whatever follows");
    let (pieces, sp) = split(&s.bytes, &[4096]);
    assert_eq!(join(&pieces), s.bytes);
    assert_eq!(
        pages(&pieces).len(),
        1,
        "pages before the unknown record still split"
    );
    assert_eq!(sp.passthrough_reason(), Some("unknown RAM record flags"));
}

#[test]
fn a_second_ram_size_record_passes_the_rest_through() {
    // (found by the `split` fuzz target: a second list, empty, then a CONTINUE page
    // naming the block of the first list indexed past the end of the second)
    for second in [&[][..], &[(&b"pc.ram"[..], 4096u64)][..]] {
        let mut s = Stream::default();
        s.header();
        s.section_start(SECTION_START, 2, b"ram")
            .ram_setup(&[(b"pc.ram", 8192)])
            .page(b"pc.ram", false, 0, 1)
            .eos()
            .footer(2);
        s.section_start(SECTION_START, 3, b"ram");
        let mut tail = Stream::default();
        tail.ram_setup(second);
        s.put(&tail.bytes);
        s.put(&(4096 | FLAG_PAGE | FLAG_CONTINUE).to_be_bytes());
        s.put(&[5u8; PAGE_SIZE]);
        let (pieces, sp) = split(&s.bytes, &[1000]);
        assert_eq!(join(&pieces), s.bytes);
        assert_eq!(pages(&pieces).len(), 1, "the page before it still splits");
        assert_eq!(sp.passthrough_reason(), Some("a second RAM size record"));
    }
}

#[test]
fn a_truncated_stream_ends_verbatim() {
    let s = migration();
    let cut = &s.bytes[..s.bytes.len() / 2];
    let (pieces, _) = split(cut, &[1000]);
    assert_eq!(join(&pieces), cut);
}

/// Pages as (index, content).
type Pages = Vec<(u64, Vec<u8>)>;

/// What `feed_with` handed out over a whole stream: the bytes joined, the pages and
/// the sizes announced.
fn split_with(stream: &[u8], chunks: &[usize]) -> (Vec<u8>, Pages, Vec<u64>) {
    let mut sp = StreamSplitter::new();
    let (mut joined, mut pages, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    let mut sink = |piece: PieceRef<'_>| {
        match piece {
            PieceRef::Verbatim(b) => joined.extend_from_slice(b),
            PieceRef::Page { index, data } => {
                joined.extend_from_slice(data);
                pages.push((index, data.to_vec()));
            }
            PieceRef::RamSize { pages } => sizes.push(pages),
        }
        Ok::<(), ()>(())
    };
    let mut at = 0;
    for &c in chunks.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + c.max(1)).min(stream.len());
        sp.feed_with(&stream[at..end], &mut sink).unwrap();
        at = end;
    }
    for piece in sp.finish() {
        match piece {
            Piece::Verbatim(b) => joined.extend_from_slice(&b),
            Piece::Page { .. } => unreachable!("finish hands out no page"),
        }
    }
    (joined, pages, sizes)
}

proptest! {
    #[test]
    fn borrowed_pieces_join_back_in_any_chunking(chunks in proptest::collection::vec(1usize..20000, 1..20)) {
        let s = migration();
        let (joined, pages, sizes) = split_with(&s.bytes, &chunks);
        prop_assert_eq!(joined, s.bytes.clone());
        prop_assert_eq!(pages, s.pages);
        prop_assert_eq!(sizes, vec![72]);
    }
}

#[test]
fn a_failing_sink_stops_the_split_with_its_error() {
    let s = migration();
    let mut sp = StreamSplitter::new();
    let mut seen = 0;
    let result = sp.feed_with(&s.bytes, &mut |piece| {
        if let PieceRef::Page { index, .. } = piece {
            seen += 1;
            if seen == 2 {
                return Err(index);
            }
        }
        Ok(())
    });
    assert_eq!(result, Err(s.pages[1].0), "the second page's error");
    assert_eq!(seen, 2, "nothing was handed out after it");
}
