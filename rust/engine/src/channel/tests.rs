//! Both halves of the channel on streams built to QEMU 7.2's layout.

use super::*;
use crate::qemu_stream::tests::{migration, Stream};
use crate::EncoderConfig;
use proptest::prelude::*;

fn config(wait_for_announce: bool, gated: bool, batch_pages: usize) -> SenderConfig {
    SenderConfig {
        batch_pages,
        wait_for_announce,
        store: None,
        gated,
        packed_heads: true,
        engine: EncoderConfig::default(),
    }
}

/// `(kind, payload)` of every frame in `wire`.
fn frames(wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let kind = wire[at];
        let len = u32::from_be_bytes(wire[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((kind, wire[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    out
}

/// Both ends and the channel between them (in order, as TCP keeps it).
struct Link {
    sender: StreamSender,
    receiver: StreamReceiver,
    wire: Vec<u8>,
    released: Vec<u8>,
}

impl Link {
    /// Delivers `frames_out`; an `ANNOUNCE` reply is answered by the sender at once
    /// and what that releases follows on the channel.
    fn deliver(&mut self, frames_out: Vec<u8>) {
        let mut queue = vec![frames_out];
        while let Some(part) = queue.pop() {
            self.wire.extend_from_slice(&part);
            for (kind, payload) in frames(&part) {
                self.released
                    .extend(self.receiver.apply(kind, &payload).unwrap());
                if !self.receiver.reply.is_empty() {
                    let reply = std::mem::take(&mut self.receiver.reply);
                    let (_, hashes) = frames(&reply).remove(0);
                    queue.insert(0, self.sender.announce(&hashes).unwrap());
                }
            }
        }
    }
}

/// Feeds `stream` in `chunk`-byte reads and rebuilds it; returns what was released
/// (checked against a replay of the whole wire on a fresh receiver).
fn carry(stream: &[u8], chunk: usize, cfg: SenderConfig) -> (Vec<u8>, Vec<u8>) {
    carry_into(stream, chunk, cfg, &crate::PageStore::new(1000), false).0
}

/// [`carry`] to a destination holding `store`; `early`: its `ANNOUNCE` reaches the
/// sender before any of the stream (as when it crosses while QEMU starts), else
/// after the receiver took the first frame. Also returns the sender.
fn carry_into(
    stream: &[u8],
    chunk: usize,
    mut cfg: SenderConfig,
    store: &crate::PageStore,
    early: bool,
) -> ((Vec<u8>, Vec<u8>), StreamSender) {
    cfg.store = Some(crate::PageStore::new(1000));
    let mut link = Link {
        sender: StreamSender::new(cfg),
        receiver: StreamReceiver::new(Some(store.clone()), 64 << 20),
        wire: Vec::new(),
        released: Vec::new(),
    };
    if early {
        let reply = std::mem::take(&mut link.receiver.reply);
        let (kind, hashes) = frames(&reply).remove(0);
        assert_eq!(kind, ANNOUNCE);
        assert!(link.sender.announce(&hashes).unwrap().is_empty());
    }
    for part in stream.chunks(chunk.max(1)) {
        let out = link.sender.feed(part).unwrap();
        link.deliver(out);
        if link.sender.at_gate() {
            let out = link.sender.flush().unwrap();
            link.deliver(out);
            let out = link.sender.open_gate().unwrap();
            link.deliver(out);
        }
    }
    let out = link.sender.finish().unwrap();
    link.deliver(out);
    assert!(link.receiver.ended);
    // the same wire again, on a receiver holding the same store
    let mut fresh = StreamReceiver::new(Some(store.clone()), 64 << 20);
    let mut again: Vec<u8> = Vec::new();
    for (kind, payload) in frames(&link.wire) {
        again.extend(fresh.apply(kind, &payload).unwrap());
    }
    assert!(fresh.ended);
    assert_eq!(again, link.released);
    // and again, each release taken out whole, the next rebuilt in a used buffer
    let mut taker = StreamReceiver::new(Some(store.clone()), 64 << 20);
    let mut taken: Vec<u8> = Vec::new();
    let mut spare = vec![0xAB; 100];
    for (kind, payload) in frames(&link.wire) {
        let len = taker.apply(kind, &payload).unwrap().len();
        let out = taker.take_released(|| std::mem::take(&mut spare));
        assert_eq!(out.len(), len);
        assert!(taker.released().is_empty());
        taken.extend_from_slice(&out);
        spare = if out.is_empty() { vec![0xCD; 7] } else { out };
    }
    assert_eq!(taken, link.released);
    let _ = link.receiver.keep(0, u64::MAX); // the destination keeps what arrived
    ((link.released, link.wire), link.sender)
}

#[test]
fn a_precopy_arrives_byte_exact_in_any_chunking() {
    let stream = migration().bytes;
    for chunk in [1, 3, 100, 4096, 4097, 1 << 20] {
        for (wait, gated) in [(false, false), (true, false), (false, true), (true, true)] {
            let (rebuilt, _) = carry(&stream, chunk, config(wait, gated, 2));
            assert_eq!(rebuilt, stream, "chunk {chunk} wait {wait} gated {gated}");
        }
    }
}

#[test]
fn an_announcement_may_come_before_the_stream() {
    let stream = migration().bytes;
    let store = crate::PageStore::new(10_000);
    // a first migration fills the destination's store ...
    let ((rebuilt, _), first) = carry_into(&stream, 4096, config(true, false, 8), &store, true);
    assert_eq!(rebuilt, stream);
    assert_eq!(first.announced, 0);
    assert!(!store.is_empty());
    let mut receiver = StreamReceiver::new(Some(store.clone()), 1 << 20);
    let (kind, hashes) = frames(&std::mem::take(&mut receiver.reply)).remove(0);
    assert_eq!(
        (kind, hashes.len()),
        (ANNOUNCE, store.len() * 16),
        "made at once"
    );
    receiver.apply(START, &4u64.to_be_bytes()).unwrap();
    assert!(receiver.reply.is_empty(), "START is not answered again");
    // ... so the same memory again costs references, whether the announcement came
    // before the stream or after its first frame
    for early in [true, false] {
        let ((rebuilt, _), again) =
            carry_into(&stream, 4096, config(true, false, 8), &store, early);
        assert_eq!(rebuilt, stream, "early {early}");
        assert!(again.announced > 0, "early {early}");
        let stats = again.engine().unwrap().stats;
        assert!(stats.dup > 0, "early {early}: {stats:?}");
    }
}

#[test]
fn announcements_are_whole_hashes_and_come_once() {
    let mut sender = StreamSender::new(config(true, false, 8));
    assert!(sender.announce(&[0; 15]).is_err());
    sender.announce(&[7; 32]).unwrap();
    assert!(sender
        .announce(&[])
        .unwrap_err()
        .to_string()
        .contains("a second ANNOUNCE"));
}

#[test]
fn the_gate_holds_the_device_state() {
    let stream = migration().bytes;
    let device = stream.windows(4).position(|w| w == b"\x03cpu").unwrap() - 5;
    let mut sender = StreamSender::new(config(false, true, 1024));
    let mut receiver = StreamReceiver::new(None, 64 << 20);
    let mut released = Vec::new();
    let mut out = sender.feed(&stream).unwrap();
    assert!(sender.at_gate());
    out.extend(sender.flush().unwrap());
    for (kind, payload) in frames(&out) {
        released.extend(receiver.apply(kind, &payload).unwrap());
    }
    assert!(released.len() <= device && stream.starts_with(&released));
    assert!(released.len() + 16 > device, "all RAM went before the gate");
    let mut rest = sender.open_gate().unwrap();
    rest.extend(sender.finish().unwrap());
    for (kind, payload) in frames(&rest) {
        released.extend(receiver.apply(kind, &payload).unwrap());
    }
    assert!(receiver.ended);
    assert_eq!(released, stream);
}

#[test]
fn tampering_is_caught_before_anything_unvouched_is_released() {
    let stream = migration().bytes;
    let mut sender = StreamSender::new(config(false, false, 2));
    let mut wire = sender.feed(&stream).unwrap();
    wire.extend(sender.finish().unwrap());
    let all = frames(&wire);
    // a changed verbatim byte: the digest catches it
    let mut receiver = StreamReceiver::new(None, 64 << 20);
    let mut released = Vec::new();
    let mut failed = None;
    for (n, (kind, payload)) in all.iter().enumerate() {
        let mut payload = payload.clone();
        if *kind == VERBATIM && n > 3 {
            payload[0] ^= 1;
        }
        match receiver.apply(*kind, &payload) {
            Ok(out) => released.extend(out),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(failed, Some(EngineError::DigestMismatch { .. })),
        "{failed:?}"
    );
    assert!(stream.starts_with(&released) && released.len() < stream.len());
    // a flipped bit in a page batch: the engine's checksum catches it
    let mut receiver = StreamReceiver::new(None, 64 << 20);
    let result: Result<Vec<Vec<u8>>> = all
        .iter()
        .map(|(kind, payload)| {
            let mut payload = payload.clone();
            if *kind == PAGES || *kind == PACKED_PAGES {
                let n = payload.len() - 20;
                payload[n] ^= 1;
            }
            receiver.apply(*kind, &payload).map(<[u8]>::to_vec)
        })
        .collect();
    assert!(result.is_err());
}

#[test]
fn held_pages_go_one_checked_batch_at_a_time() {
    let mut s = Stream::default();
    s.header();
    s.section_start(0x01, 2, b"ram")
        .ram_setup(&[(b"pc.ram", 256 * 4096)])
        .eos();
    for round in 0..4u8 {
        s.put(&[0x02]).put(&2u32.to_be_bytes());
        for page in 0..200u64 {
            s.page(
                b"pc.ram",
                false,
                page * 4096,
                round.wrapping_mul(31) ^ page as u8,
            );
        }
        s.eos();
    }
    let stream = s.bytes.clone();
    let mut sender = StreamSender::new(config(true, false, 8));
    let held = sender.feed(&stream).unwrap();
    assert!(
        frames(&held)
            .iter()
            .all(|(k, _)| *k != PAGES && *k != PACKED_PAGES),
        "pages wait for ANNOUNCE"
    );
    let mut wire = held;
    wire.extend(sender.announce(&[]).unwrap());
    wire.extend(sender.finish().unwrap());
    // a receiver that accepts about two batches unvouched takes all of it
    let mut receiver = StreamReceiver::new(None, 2 * 8 * (4096 + 64));
    let mut released: Vec<u8> = Vec::new();
    for (kind, payload) in frames(&wire) {
        released.extend(receiver.apply(kind, &payload).unwrap());
    }
    assert_eq!(released, stream);
}

#[test]
fn hostile_frames_are_refused() {
    let check = |kind: u8, payload: &[u8]| {
        let mut r = StreamReceiver::new(None, 1 << 20);
        r.apply(kind, payload).unwrap_err()
    };
    assert!(check(ABORT, b"cancel")
        .to_string()
        .contains("source aborted: cancel"));
    assert!(check(99, b"")
        .to_string()
        .contains("unexpected frame type 99"));
    assert!(check(START, &u64::MAX.to_be_bytes())
        .to_string()
        .contains("not accepted"));
    assert!(check(START, b"short").to_string().contains("wrong size"));
    assert!(check(CHECK, &[0; 23]).to_string().contains("wrong size"));
    assert!(check(PAGES, &[0; 5]).to_string().contains("truncated"));
    let mut pages = 4u64.to_be_bytes().to_vec();
    pages.extend(1u32.to_be_bytes());
    pages.extend(0u32.to_be_bytes());
    pages.extend(9u64.to_be_bytes()); // index 9 of a 4-page guest
    assert!(check(PAGES, &pages)
        .to_string()
        .contains("outside the guest"));
    let mut big_prefix = 4u64.to_be_bytes().to_vec();
    big_prefix.extend(1u32.to_be_bytes());
    big_prefix.extend(1000u32.to_be_bytes());
    assert!(check(PAGES, &big_prefix).to_string().contains("runs past"));
    let mut r = StreamReceiver::new(None, 100);
    assert!(r.apply(VERBATIM, &[1; 101]).is_err(), "too much unvouched");
    let mut r = StreamReceiver::new(None, 1 << 20);
    r.apply(START, &4u64.to_be_bytes()).unwrap();
    assert!(
        r.apply(START, &4u64.to_be_bytes()).is_err(),
        "a second START"
    );
    let end = StreamDigest::new().payload();
    assert_eq!(r.apply(END, &end).unwrap(), Vec::<u8>::new());
    assert!(r
        .apply(VERBATIM, b"x")
        .unwrap_err()
        .to_string()
        .contains("after END"));
}

/// A stream of `pages` pages, every third one zero (QEMU's 9-byte `ZERO` records then
/// stand in the next page's prefix), the others each of its own fill.
fn mostly_headers(pages: u64) -> Vec<u8> {
    let mut s = Stream::default();
    s.header();
    s.section_start(0x01, 2, b"ram")
        .ram_setup(&[(b"pc.ram", pages * 4096)])
        .eos();
    s.put(&[0x02]).put(&2u32.to_be_bytes());
    for page in 0..pages {
        if page % 3 == 0 {
            s.zero(b"pc.ram", page * 4096);
        } else {
            s.page(b"pc.ram", page > 1, page * 4096, page as u8);
        }
    }
    s.eos();
    s.bytes.clone()
}

#[test]
fn a_batch_head_goes_packed_when_that_is_smaller() {
    let stream = mostly_headers(600);
    let (rebuilt, wire) = carry(&stream, 1 << 20, config(false, false, 256));
    assert_eq!(rebuilt, stream);
    let all = frames(&wire);
    let packed: Vec<&Vec<u8>> = all
        .iter()
        .filter(|(k, _)| *k == PACKED_PAGES)
        .map(|(_, p)| p)
        .collect();
    assert!(all.iter().all(|(k, _)| *k != PAGES), "every head packed");
    let mut pages = 0;
    for payload in packed {
        let count = u32::from_be_bytes(payload[8..12].try_into().unwrap()) as usize;
        let head_len = u32::from_be_bytes(payload[12..16].try_into().unwrap()) as usize;
        let packed_len = u32::from_be_bytes(payload[16..20].try_into().unwrap()) as usize;
        // per page 12 bytes and its 8-byte record header, and a ZERO record for
        // every other page
        assert!(head_len > count * 20, "{head_len}");
        if count == 256 {
            assert!(packed_len * 4 < head_len, "{packed_len} of {head_len}");
        }
        pages += count;
    }
    assert_eq!(pages, 400);
    // a batch of one page: its head is not worth packing ...
    let (rebuilt, wire) = carry(&stream, 1 << 20, config(false, false, 1));
    assert_eq!(rebuilt, stream);
    let kinds: Vec<u8> = frames(&wire).iter().map(|(k, _)| *k).collect();
    // (but the first's, whose prefix holds the stream's header and RAM setup)
    assert_eq!(kinds.iter().filter(|k| **k == PACKED_PAGES).count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == PAGES).count(), 399);
}

#[test]
fn a_sender_told_not_to_pack_heads_sends_pages_frames_only() {
    // a destination from before `PACKED_PAGES` refuses them: the source's sender is
    // then made with `packed_heads: false`
    let stream = mostly_headers(600);
    let cfg = SenderConfig {
        packed_heads: false,
        ..config(false, false, 256)
    };
    let (rebuilt, wire) = carry(&stream, 1 << 20, cfg);
    assert_eq!(rebuilt, stream);
    let kinds: Vec<u8> = frames(&wire).iter().map(|(k, _)| *k).collect();
    assert!(!kinds.contains(&PACKED_PAGES), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == PAGES).count(), 2);
}

/// A `PACKED_PAGES` payload for a 4-page guest: `head` packed as `zstd`, `head_len`
/// as claimed.
fn packed_frame(count: u32, head_len: u32, zstd: &[u8], packed_len: u32) -> Vec<u8> {
    let mut out = 4u64.to_be_bytes().to_vec();
    out.extend(count.to_be_bytes());
    out.extend(head_len.to_be_bytes());
    out.extend(packed_len.to_be_bytes());
    out.extend_from_slice(zstd);
    out
}

#[test]
fn hostile_packed_heads_are_refused() {
    let check = |payload: &[u8], room: usize| {
        let mut r = StreamReceiver::new(None, room);
        r.apply(PACKED_PAGES, payload).unwrap_err().to_string()
    };
    let mut head = 0u32.to_be_bytes().to_vec();
    head.extend(1u64.to_be_bytes()); // page 1, no prefix
    let zstd = zstd::bulk::compress(&head, 1).unwrap();
    let n = zstd.len() as u32;
    assert!(check(&packed_frame(1, 12, &zstd, n + 1), 1 << 20).contains("runs past"));
    assert!(check(&packed_frame(1, 12, &zstd, n)[..14], 1 << 20).contains("truncated"));
    // a head longer than the room for its stream: refused before it is unpacked
    assert!(check(&packed_frame(1, 1 << 30, &zstd, n), 1 << 20).contains("without a CHECK"));
    assert!(check(&packed_frame(1, 11, &zstd, n), 1 << 20).contains("zstd"));
    assert!(check(&packed_frame(1, 13, &zstd, n), 1 << 20).contains("where the frame says 13"));
    assert!(check(&packed_frame(1, 12, b"not zstd", 8), 1 << 20).contains("zstd"));
    // entries that end before the head does, or a page outside the guest
    assert!(check(&packed_frame(0, 12, &zstd, n), 1 << 20).contains("longer than its entries"));
    let mut outside = 0u32.to_be_bytes().to_vec();
    outside.extend(4u64.to_be_bytes());
    let zstd = zstd::bulk::compress(&outside, 1).unwrap();
    let payload = packed_frame(1, 12, &zstd, zstd.len() as u32);
    assert!(check(&payload, 1 << 20).contains("outside the guest"));
    // a bomb: 64 MiB of zeros in a few KB, claimed as such, refused for its size
    let bomb = zstd::bulk::compress(&vec![0; 64 << 20], 19).unwrap();
    assert!(bomb.len() < 1 << 20);
    let payload = packed_frame(1, 64 << 20, &bomb, bomb.len() as u32);
    assert!(check(&payload, 1 << 20).contains("without a CHECK"));
    // and claimed smaller than it is: unpacking stops at the claim
    let payload = packed_frame(1, 100, &bomb, bomb.len() as u32);
    assert!(check(&payload, 1 << 20).contains("zstd"));
}

#[test]
fn a_damaged_packed_head_releases_nothing_unvouched() {
    let stream = mostly_headers(300);
    let mut sender = StreamSender::new(config(false, false, 256));
    let mut wire = sender.feed(&stream).unwrap();
    wire.extend(sender.finish().unwrap());
    let all = frames(&wire);
    let at = all.iter().position(|(k, _)| *k == PACKED_PAGES).unwrap();
    let packed_len = u32::from_be_bytes(all[at].1[16..20].try_into().unwrap()) as usize;
    for byte in (20..20 + packed_len).step_by(7) {
        let mut receiver = StreamReceiver::new(None, 64 << 20);
        let mut released: Vec<u8> = Vec::new();
        let mut refused = false;
        for (n, (kind, payload)) in all.iter().enumerate() {
            let mut payload = payload.clone();
            if n == at {
                payload[byte] ^= 0x10;
            }
            match receiver.apply(*kind, &payload) {
                Ok(out) => released.extend(out),
                Err(_) => {
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "a flipped bit at byte {byte} went through");
        assert!(stream.starts_with(&released), "byte {byte}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_rounds_of_pages_arrive_exactly(
        rounds in proptest::collection::vec(
            proptest::collection::vec((0u64..32, 0u8..4, any::<u8>()), 1..40), 1..5),
        chunk in 1usize..9000,
        wait in any::<bool>(),
        batch in 1usize..12,
    ) {
        let mut s = Stream::default();
        s.header();
        s.section_start(0x01, 2, b"ram").ram_setup(&[(b"pc.ram", 32 * 4096)]).eos();
        for round in &rounds {
            s.put(&[0x02]).put(&2u32.to_be_bytes());
            for &(page, kind, fill) in round {
                match kind {
                    0 => { s.zero(b"pc.ram", page * 4096); }
                    1 => { s.page(b"pc.ram", false, page * 4096, 0); } // repeated content
                    _ => { s.page(b"pc.ram", false, page * 4096, fill); }
                }
            }
            s.eos();
        }
        s.section_start(0x04, 3, b"cpu").put(&[1, 2, 3]);
        let stream = s.bytes.clone();
        let (rebuilt, _) = carry(&stream, chunk, config(wait, false, batch));
        prop_assert_eq!(rebuilt, stream);
    }
}

#[test]
fn a_guest_larger_than_the_limit_is_refused_before_any_state() {
    // the fuzzer's find: a START of 2.5 G pages made the decoder ask for 40 GB at once
    let claim = |limit: Option<u64>, kind: u8, pages: u64| {
        let mut r = StreamReceiver::new(None, 1 << 20);
        if let Some(limit) = limit {
            r = r.max_pages(limit).unwrap();
        }
        let mut payload = pages.to_be_bytes().to_vec();
        if kind == PAGES {
            payload.extend(0u32.to_be_bytes()); // no pages
        }
        r.apply(kind, &payload)?;
        Ok::<u64, crate::EngineError>(r.total_pages())
    };
    for kind in [START, PAGES] {
        assert_eq!(claim(Some(1000), kind, 1000).unwrap(), 1000);
        let refused = claim(Some(1000), kind, 1001).unwrap_err().to_string();
        assert!(
            refused.contains("1001 pages is not accepted here (at most 1000)"),
            "{refused}"
        );
        // by default, this host's physical memory
        let refused = claim(None, kind, 0x9898_9898).unwrap_err().to_string();
        assert!(refused.contains("not accepted here"), "{refused}");
    }
    assert!(StreamReceiver::new(None, 1).max_pages(0).is_err());
}

#[test]
fn the_sender_refuses_a_guest_no_receiver_takes() {
    let at_most = |blocks: &[(&[u8], u64)]| {
        let mut s = Stream::default();
        s.header().configuration(&[b"events"]);
        // QEMU's section start (0x01) of its RAM section, then the block list
        s.section_start(0x01, 2, b"ram")
            .ram_setup(blocks)
            .eos()
            .footer(2);
        StreamSender::new(config(false, false, 2)).feed(&s.bytes)
    };
    let limit = super::receiver::MAX_GUEST_PAGES * crate::PAGE_SIZE as u64;
    let started = at_most(&[(b"pc.ram", limit)]).unwrap();
    assert_eq!(frames(&started)[0].0, START);
    // one page more, in a second block: refused before any frame
    let refused = at_most(&[(b"pc.ram", limit), (b"vga.vram", 4096)]).unwrap_err();
    assert!(refused.to_string().contains("at most 2^32"), "{refused}");
}
