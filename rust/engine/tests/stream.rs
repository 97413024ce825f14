//! Encoder -> decoder round trips over rounds of guest memory, and hostile input.

use novacron_engine::{
    scan_pages, Codec, Decoder, Encoder, EncoderConfig, MAX_WIRE_PER_PAGE, PAGE_SIZE,
};
use proptest::prelude::*;

mod common;

use common::{apply, sent_whole, Change, PAGES};

/// The pages a change writes.
fn touched(change: &Change) -> Vec<u64> {
    match *change {
        Change::Zero(i)
        | Change::Random(i, _)
        | Change::CopyFrom(i, _)
        | Change::Poke(i, _, _)
        | Change::Text(i, _)
        | Change::Table(i, _, _) => vec![(i % PAGES) as u64],
        Change::Move(dst, src, _) => vec![(dst % PAGES) as u64, (src % PAGES) as u64],
    }
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..PAGES).prop_map(Change::Zero),
        (0..PAGES, any::<u64>()).prop_map(|(i, s)| Change::Random(i, s)),
        (0..PAGES, 0..PAGES).prop_map(|(a, b)| Change::CopyFrom(a, b)),
        (0..PAGES, 0..PAGE_SIZE, any::<u8>()).prop_map(|(i, a, v)| Change::Poke(i, a, v)),
        (0..PAGES, any::<u8>()).prop_map(|(i, s)| Change::Text(i, s)),
        (0..PAGES, 0..PAGES, 0..PAGE_SIZE).prop_map(|(a, b, at)| Change::Move(a, b, at)),
        (0..PAGES, any::<u64>(), any::<u32>()).prop_map(|(i, s, d)| Change::Table(i, s, d)),
    ]
}

fn config(codec: Codec, dedup: bool, delta: usize, batch: usize, threads: usize) -> EncoderConfig {
    EncoderConfig {
        codec,
        zstd_level: 1,
        dedup,
        delta_cache_pages: delta,
        batch_pages: batch,
        threads,
        ..EncoderConfig::default()
    }
}

#[test]
fn tables_go_filtered_in_version_5_and_as_they_are_in_version_4() {
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        let change = if p % 2 == 0 {
            Change::Table(p, 0x8000_0000_0100_0067 + (p as u64) * 0x20_0000, 0x1000)
        } else {
            Change::Text(p, p as u8)
        };
        apply(&mut image, &change);
    }
    let all: Vec<u64> = (0..PAGES as u64).collect();
    let mut sizes = Vec::new();
    for (codec, wire_version) in [
        (Codec::Lz4, 4),
        (Codec::Lz4, 5),
        (Codec::Zstd, 4),
        (Codec::Zstd, 5),
    ] {
        let config = EncoderConfig {
            codec,
            wire_version,
            ..EncoderConfig::default()
        };
        let mut enc = Encoder::new(PAGES, config).unwrap();
        let wire = enc.encode(&image, &all).unwrap();
        assert_eq!(wire[4], wire_version, "the header says the version written");
        let filtered = if wire_version == 5 {
            PAGES as u64 / 2
        } else {
            0
        };
        assert_eq!(enc.stats.filtered, filtered, "{codec:?} v{wire_version}");
        let mut dec = Decoder::new(PAGES).unwrap();
        dec.decode(&wire).unwrap();
        assert_eq!(dec.image(), image, "{codec:?} v{wire_version}");
        sizes.push(wire.len());
    }
    assert!(
        sizes[1] < sizes[0] && sizes[3] < sizes[2],
        "filtered tables are smaller: {sizes:?}"
    );
    let config = EncoderConfig {
        wire_version: 6,
        ..EncoderConfig::default()
    };
    assert!(Encoder::new(PAGES, config).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn every_round_reproduces_the_sender_view(
        rounds in proptest::collection::vec(proptest::collection::vec(change(), 0..12), 1..6),
        codec in prop_oneof![Just(Codec::Lz4), Just(Codec::Zstd), Just(Codec::None)],
        dedup in any::<bool>(),
        delta in prop_oneof![Just(0usize), Just(4), Just(64)],
        batch in 1usize..40,
        threads in 1usize..4,
        repeat in any::<bool>(),
        wire_version in 4u8..=5,
    ) {
        let mut image = vec![0u8; PAGES * PAGE_SIZE];
        let config = EncoderConfig { wire_version, ..config(codec, dedup, delta, batch, threads) };
        let mut enc = Encoder::new(PAGES, config).unwrap();
        // the same rounds through a scan of each image: exactly the same stream
        let mut scanned = Encoder::new(PAGES, config).unwrap();
        // (several batches per round: read ahead on helpers when there are any)
        let mut dec = Decoder::with_threads(PAGES, threads).unwrap();
        dec.read_ahead_from(0); // (small inputs too)
        let all: Vec<u64> = (0..PAGES as u64).collect();
        for (round, changes) in rounds.iter().enumerate() {
            for c in changes { apply(&mut image, c); }
            // round 0 offers every page; later rounds offer every page too (unchanged
            // pages must cost a few bytes) or only the changed ones
            let offered: Vec<u64> = if round % 2 == 0 { all.clone() } else {
                changes.iter().flat_map(touched).collect()
            };
            let mut offered = if round == 0 { all.clone() } else { offered };
            if repeat {
                // the same index twice in one call must still decode exactly
                offered.extend(offered.clone());
            }
            let wire = enc.encode(&image, &offered).unwrap();
            prop_assert!(wire.len() <= offered.len() * MAX_WIRE_PER_PAGE);
            let scan = scan_pages(&image).unwrap();
            let from_scan = scanned.encode_scanned(&image, &offered, &scan).unwrap();
            prop_assert!(from_scan == wire, "round {round}: the scan changed the stream");
            dec.decode(&wire).unwrap();
            prop_assert!(dec.image() == image, "round {round} differs");
        }
    }

    #[test]
    fn corrupted_streams_are_rejected(flip in 0usize..4096, bit in 0u8..8) {
        let mut image = vec![0u8; PAGES * PAGE_SIZE];
        for (i, b) in image.iter_mut().enumerate() { *b = (i % 251) as u8 ^ (i / 4096) as u8; }
        let mut enc = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
        let all: Vec<u64> = (0..PAGES as u64).collect();
        let mut wire = enc.encode(&image, &all).unwrap();
        let at = flip % wire.len();
        wire[at] ^= 1 << bit;
        let mut dec = Decoder::new(PAGES).unwrap();
        prop_assert!(dec.decode(&wire).is_err());
        prop_assert!(dec.image().iter().all(|&b| b == 0), "a rejected batch changed nothing");
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut dec = Decoder::new(4).unwrap();
        let _ = dec.decode(&data);
    }
}

#[test]
fn batches_read_ahead_apply_in_order_and_a_bad_one_stops_the_rest() {
    use novacron_engine::wire::Header;
    // distinct compressible pages (words of a small alphabet)
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    let mut x = 88_172_645_463_325_252u64;
    for b in &mut image {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = b"etaoin shrdlu"[(x % 13) as usize];
    }
    let all: Vec<u64> = (0..PAGES as u64).collect();
    for threads in [1, 2, 3] {
        // batches of 3 pages: 8 per round
        let mut enc = Encoder::new(PAGES, config(Codec::Lz4, true, 64, 3, 1)).unwrap();
        let mut dec = Decoder::with_threads(PAGES, threads).unwrap();
        dec.read_ahead_from(0);
        assert_eq!(dec.decode(&enc.encode(&image, &all).unwrap()).unwrap(), 8);
        let old = image.clone();
        // every page moves one place on with a byte changed: delta-from records whose
        // bases are pages of other batches, as they were when the round began
        let mut new = image.clone();
        for p in 0..PAGES {
            let src = &old[(p + PAGES - 1) % PAGES * PAGE_SIZE..][..PAGE_SIZE];
            new[p * PAGE_SIZE..][..PAGE_SIZE].copy_from_slice(src);
            new[p * PAGE_SIZE + p] ^= 0x33;
        }
        let wire = enc.encode(&new, &all).unwrap();
        assert!(enc.stats.delta_from > 0, "{:?}", enc.stats);
        // batch 5's checksum broken
        let mut at = 0;
        for _ in 0..5 {
            at += Header::read(&wire[at..]).unwrap().1;
        }
        let mut bad = wire.clone();
        bad[at + 45] ^= 1;
        let before = (dec.batches, dec.pages);
        let err = dec.decode(&bad).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert_eq!(dec.batches - before.0, 5, "{threads} threads");
        assert_eq!(dec.pages - before.1, 15);
        let got = dec.image();
        assert_eq!(got[..15 * PAGE_SIZE], new[..15 * PAGE_SIZE]);
        assert_eq!(got[15 * PAGE_SIZE..], old[15 * PAGE_SIZE..]);
        // a cut in batch 6's header: batches 5 and on were not applied, the good 5 is
        let mut cut_at = at;
        cut_at += Header::read(&wire[cut_at..]).unwrap().1;
        assert_eq!(
            dec.decode(&wire[at..cut_at + 10]).unwrap_err().to_string(),
            "malformed page stream: truncated batch header"
        );
        assert_eq!(dec.image()[..18 * PAGE_SIZE], new[..18 * PAGE_SIZE]);
        assert_eq!(dec.decode(&wire[cut_at..]).unwrap(), 2);
        assert_eq!(dec.image(), new);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// One thread frames each batch where it goes in the output; more threads frame
    /// them apart and copy them in, in order. With as many batches as need no
    /// rebalancing over the threads (all pages offered, batches of 2: at least 8), the
    /// two streams are the same bytes.
    #[test]
    fn one_thread_writes_the_bytes_more_threads_do(
        rounds in proptest::collection::vec(proptest::collection::vec(change(), 0..12), 1..5),
        codec in prop_oneof![Just(Codec::Lz4), Just(Codec::Zstd), Just(Codec::None)],
    ) {
        let mut image = vec![0u8; PAGES * PAGE_SIZE];
        let mut one = Encoder::new(PAGES, config(codec, true, 64, 2, 1)).unwrap();
        let mut two = Encoder::new(PAGES, config(codec, true, 64, 2, 2)).unwrap();
        let all: Vec<u64> = (0..PAGES as u64).collect();
        for (round, changes) in rounds.iter().enumerate() {
            for c in changes { apply(&mut image, c); }
            let mut out = vec![7u8; 5]; // appended to, after what it held
            one.encode_into(&image, &all, None, &mut out).unwrap();
            prop_assert!(out[..5] == [7u8; 5]);
            let wire = two.encode(&image, &all).unwrap();
            prop_assert!(out[5..] == wire[..], "round {round}");
            prop_assert_eq!(one.stats.wire_bytes, two.stats.wire_bytes);
        }
    }
}

#[test]
fn a_decoder_takes_1_to_1024_threads() {
    assert!(Decoder::with_threads(4, 0).is_err());
    assert!(Decoder::with_threads(4, 1025).is_err());
    assert_eq!(Decoder::with_threads(4, 2).unwrap().pages(), 4);
}

#[test]
fn truncation_is_rejected_at_every_length() {
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    image[5 * PAGE_SIZE] = 9;
    let mut enc = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    let all: Vec<u64> = (0..PAGES as u64).collect();
    let wire = enc.encode(&image, &all).unwrap();
    for cut in 1..wire.len() {
        let mut dec = Decoder::new(PAGES).unwrap();
        assert!(dec.decode(&wire[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn repeated_and_unchanged_pages_are_cheap() {
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        apply(&mut image, &Change::Random(p % 3, 42 + 2 * (p % 3) as u64));
        let src = (p % 3) * PAGE_SIZE;
        image.copy_within(src..src + PAGE_SIZE, p * PAGE_SIZE);
    }
    let mut enc = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    let all: Vec<u64> = (0..PAGES as u64).collect();
    let first = enc.encode(&image, &all).unwrap();
    assert!(
        first.len() < 4 * PAGE_SIZE,
        "3 distinct pages + refs: {}",
        first.len()
    );
    let second = enc.encode(&image, &all).unwrap();
    assert!(second.len() < 200, "all unchanged: {}", second.len());
    assert_eq!(enc.stats.dup, (PAGES - 3) as u64);
    image[7 * PAGE_SIZE + 10] ^= 0xff;
    let third = enc.encode(&image, &[7]).unwrap();
    assert_eq!(enc.stats.delta, 1);
    assert!(
        third.len() < 80,
        "one-byte change as a delta: {}",
        third.len()
    );
}

#[test]
fn a_batch_failing_midway_is_undone() {
    use novacron_engine::wire::{Header, Kind};
    // page 1 written raw, then a dup reference nobody holds: checksum valid, content bad
    // (indices as steps: page 1 is 1 after -1 + 1, zigzag 2; page 2 is 0 after it)
    let mut records = vec![Kind::Raw as u8, 2, Kind::DupRef as u8, 0];
    records.extend_from_slice(&[0xAB; 16]);
    let mut body = records.clone();
    body.extend_from_slice(&[7u8; PAGE_SIZE]);
    let header = Header {
        version: novacron_engine::wire::VERSION,
        codec: Codec::None,
        records: 2,
        records_len: records.len() as u32,
        block_raw_len: 0,
        block_len: 0,
        raw_len: PAGE_SIZE as u32,
    };
    let mut dec = Decoder::new(4).unwrap();
    let err = dec.decode(&header.frame(&body)).unwrap_err();
    assert!(err.to_string().contains("dup reference"), "{err}");
    assert!(
        dec.image().iter().all(|&b| b == 0),
        "the raw page was taken back"
    );
    // and the receiver's view was taken back too: an unchanged record for page 1 fails
    let unchanged = [Kind::Unchanged as u8, 2];
    let header = Header {
        version: novacron_engine::wire::VERSION,
        codec: Codec::None,
        records: 1,
        records_len: 2,
        block_raw_len: 0,
        block_len: 0,
        raw_len: 0,
    };
    assert!(dec.decode(&header.frame(&unchanged)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Hostile batches that pass the checksum (re-framed after mutation): the decoder
    /// must reject or apply them without panicking or writing outside the guest.
    #[test]
    fn mutated_bodies_with_valid_checksums_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        records_delta in -2i64..3,
    ) {
        use novacron_engine::wire::Header;
        let mut image = vec![0u8; PAGES * PAGE_SIZE];
        apply(&mut image, &Change::Text(1, 3));
        apply(&mut image, &Change::Random(2, 9));
        apply(&mut image, &Change::CopyFrom(3, 1));
        let mut enc = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
        let all: Vec<u64> = (0..PAGES as u64).collect();
        let first = enc.encode(&image, &all).unwrap();
        apply(&mut image, &Change::Poke(1, 10, 7));
        let second = enc.encode(&image, &[1, 2, 3]).unwrap();
        let (header, body, _) = Header::parse(&second).unwrap();
        let mut body = body.to_vec();
        for (at, v) in edits {
            let at = at % body.len();
            body[at] = v;
        }
        let mut header = header;
        header.records = (i64::from(header.records) + records_delta).max(0) as u32;
        let mut dec = Decoder::new(PAGES).unwrap();
        dec.decode(&first).unwrap();
        let before = dec.image();
        let contents = dec.distinct_contents();
        if dec.decode(&header.frame(&body)).is_err() {
            prop_assert!(dec.image() == before, "a rejected batch changed nothing");
            prop_assert_eq!(dec.distinct_contents(), contents, "nor kept a content");
        }
    }
}

#[test]
fn a_second_guest_from_the_same_image_sends_references_to_the_page_store() {
    use novacron_engine::PageStore;
    let mut first = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES / 2 {
        apply(&mut first, &Change::Random(p, 1000 + 2 * p as u64));
    }
    let all: Vec<u64> = (0..PAGES as u64).collect();
    // migration 1: nothing known
    let mut enc = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    let mut dec = Decoder::new(PAGES).unwrap();
    let wire1 = enc.encode(&first, &all).unwrap();
    dec.decode(&wire1).unwrap();
    let store = PageStore::new(1024);
    store.add_image(&dec.image());
    // migration 2: another guest booted from the same image, a few pages different
    let mut second = first.clone();
    apply(&mut second, &Change::Text(3, 1));
    let mut enc2 = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    let mut dec2 = Decoder::new(PAGES).unwrap();
    let hashes = dec2.announce(&store);
    // the store may evict after pinning: the pinned pages stay usable
    store.add_image(&vec![9u8; 2000 * PAGE_SIZE]);
    assert_eq!(enc2.announce(&hashes).unwrap(), PAGES / 2);
    let wire2 = enc2.encode(&second, &all).unwrap();
    dec2.decode(&wire2).unwrap();
    assert_eq!(dec2.image(), &second[..]);
    // the announced pages it received are the store's own, shared, not copies
    let shared = (0..PAGES)
        .filter(|&i| {
            second[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] == first[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]
        })
        .filter_map(|i| dec2.shared_page(i))
        .filter(|(hash, page)| {
            hashes.chunks(16).any(|h| h == hash.to_le_bytes())
                && std::sync::Arc::strong_count(page) > 2
        })
        .count();
    assert_eq!(
        shared,
        PAGES / 2 - 1,
        "every random page but the one rewritten"
    );
    assert!(
        wire2.len() * 5 < wire1.len(),
        "{} vs {}",
        wire2.len(),
        wire1.len()
    );
    assert!(enc2.announce(&[0u8; 15]).is_err());
}

#[test]
fn announced_pages_go_as_a_few_bytes_and_bad_positions_are_refused() {
    use novacron_engine::PageStore;
    let mut memory = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        apply(&mut memory, &Change::Random(p, 7 + p as u64));
    }
    let all: Vec<u64> = (0..PAGES as u64).collect();
    // the destination holds all of it, added in page order
    let store = PageStore::new(PAGES);
    store.add_image(&memory);
    let mut dec = Decoder::new(PAGES).unwrap();
    let hashes = dec.announce(&store);
    let mut enc = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    enc.announce(&hashes).unwrap();
    let wire = enc.encode(&memory, &all).unwrap();
    assert_eq!(enc.stats.dup, PAGES as u64);
    // positions follow the pages, so each reference is kind, index and a one-byte step
    // (16-byte hashes would be over 18 bytes a page)
    assert!(
        wire.len() < PAGES * 6,
        "{} bytes for {PAGES} references",
        wire.len()
    );
    dec.decode(&wire).unwrap();
    assert_eq!(dec.image(), &memory[..]);
    // a receiver that announced less cannot resolve them: refused, nothing applied
    let small = PageStore::new(PAGES / 2);
    small.add_image(&memory[..PAGE_SIZE * PAGES / 2]);
    let mut short = Decoder::new(PAGES).unwrap();
    let _ = short.announce(&small);
    let err = short.decode(&wire).unwrap_err().to_string();
    assert!(err.contains("outside the announcement"), "{err}");
    assert_eq!(short.pages, 0);
    // a second announcement replaces the first on both ends: positions name the latest
    let mut again = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    again.announce(&hashes).unwrap();
    again.announce(&short.announce(&small)).unwrap();
    let wire = again.encode(&memory, &all).unwrap();
    let mut fresh = Decoder::new(PAGES).unwrap();
    let _ = fresh.announce(&small);
    fresh.decode(&wire).unwrap();
    assert_eq!(fresh.image(), &memory[..]);
}

#[test]
fn the_receiver_keeps_each_distinct_content_once() {
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES / 2 {
        apply(&mut image, &Change::Text(p, 5)); // one content, many pages
    }
    apply(&mut image, &Change::Random(PAGES - 1, 3));
    let all: Vec<u64> = (0..PAGES as u64).collect();
    let mut enc = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    let mut dec = Decoder::new(PAGES).unwrap();
    dec.decode(&enc.encode(&image, &all).unwrap()).unwrap();
    assert_eq!(dec.image(), image);
    assert_eq!(
        dec.distinct_contents(),
        2,
        "zero pages and repeats take no room"
    );
    // rewriting every holder of a content lets it go
    apply(&mut image, &Change::Zero(PAGES - 1));
    dec.decode(&enc.encode(&image, &[PAGES as u64 - 1]).unwrap())
        .unwrap();
    assert_eq!(dec.distinct_contents(), 1);
    assert_eq!(dec.page(PAGES - 1), &[0u8; PAGE_SIZE][..]);
}

#[test]
fn packed_pages_encode_exactly_like_pages_of_an_image() {
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        apply(&mut image, &Change::Text(p, p as u8));
    }
    let offer: Vec<u64> = vec![5, 1, 9, 1, 23, 0];
    let packed: Vec<u8> = offer
        .iter()
        .flat_map(|&i| image[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE].to_vec())
        .collect();
    let mut a = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    let mut b = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    let from_image = a.encode(&image, &offer).unwrap();
    let from_pages = b.encode_pages(&offer, &packed).unwrap();
    assert_eq!(from_image, from_pages);
    assert!(b.encode_pages(&offer, &packed[..100]).is_err());
}

#[test]
fn a_scan_of_another_guest_size_is_refused() {
    let image = vec![0u8; PAGES * PAGE_SIZE];
    let smaller = scan_pages(&image[..PAGE_SIZE * 2]).unwrap();
    let mut enc = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    assert!(enc.encode_scanned(&image, &[0, 1], &smaller).is_err());
    assert!(enc
        .encode_scanned(&image[..PAGE_SIZE], &[0], &smaller)
        .is_err());
    let scan = scan_pages(&image).unwrap();
    assert!(enc.encode_scanned(&image, &[PAGES as u64], &scan).is_err());
    assert_eq!(enc.stats.pages, 0, "nothing was encoded");
}

#[test]
fn a_delta_cache_larger_than_the_guest_holds_one_base_per_page() {
    // (the address space of 2^40 pages is more than any system grants: asked for as
    // given, it aborted the process)
    for asked in [1 << 40, usize::MAX] {
        let mut enc = Encoder::new(PAGES, config(Codec::Lz4, true, asked, 8, 1)).unwrap();
        let mut dec = Decoder::new(PAGES).unwrap();
        let mut image = vec![0u8; PAGES * PAGE_SIZE];
        for (i, byte) in image.iter_mut().enumerate() {
            *byte = (i / 7 % 251) as u8;
        }
        let all: Vec<u64> = (0..PAGES as u64).collect();
        dec.decode(&enc.encode(&image, &all).unwrap()).unwrap();
        image[5 * PAGE_SIZE + 100] ^= 0xff;
        let wire = enc.encode(&image, &[5]).unwrap();
        assert!(wire.len() < 200, "the changed page went as a delta");
        dec.decode(&wire).unwrap();
        assert_eq!(dec.image(), image);
    }
}

/// Found by proptest in CI: a page whose content moves away and comes back as a
/// copy of a page that itself was just rewritten.
#[test]
fn dup_of_a_page_rewritten_in_the_same_round() {
    use Change::*;
    let rounds = [
        vec![Poke(3, 0, 1)],
        vec![CopyFrom(18, 3)],
        vec![],
        vec![],
        vec![CopyFrom(3, 0), CopyFrom(19, 18)],
    ];
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    let mut enc = Encoder::new(PAGES, config(Codec::Lz4, true, 0, 1, 1)).unwrap();
    let mut dec = Decoder::new(PAGES).unwrap();
    let all: Vec<u64> = (0..PAGES as u64).collect();
    for (round, changes) in rounds.iter().enumerate() {
        for c in changes {
            apply(&mut image, c);
        }
        let offered: Vec<u64> = if round % 2 == 0 {
            all.clone()
        } else {
            changes.iter().flat_map(touched).collect()
        };
        let wire = enc.encode(&image, &offered).unwrap();
        dec.decode(&wire).unwrap();
        assert!(dec.image() == image, "round {round} differs");
    }
}

#[test]
fn blocks_of_any_size_in_any_order_decode() {
    // batches of 2,048 text pages (an 8 MiB block), then small and mid-sized ones
    const GUEST: usize = 2100;
    for codec in [Codec::Lz4, Codec::Zstd] {
        let mut image = vec![0u8; GUEST * PAGE_SIZE];
        let mut enc = Encoder::new(GUEST, config(codec, false, 0, 2048, 1)).unwrap();
        let mut dec = Decoder::new(GUEST).unwrap();
        for (round, pages) in [(0u8, GUEST), (1, 5), (2, 1500), (3, 3)] {
            for p in 0..pages {
                let at = p * PAGE_SIZE;
                for (j, b) in image[at..at + PAGE_SIZE].iter_mut().enumerate() {
                    *b = b"lorem ipsum dolor sit amet "[(j + p + round as usize) % 27];
                }
                image[at] = round; // distinct from every other page
                image[at + 1..at + 3].copy_from_slice(&(p as u16).to_le_bytes());
            }
            let offered: Vec<u64> = (0..pages as u64).collect();
            dec.decode(&enc.encode(&image, &offered).unwrap()).unwrap();
            assert_eq!(dec.image(), image, "{codec:?} round {round}");
        }
    }
}

#[test]
fn a_first_pass_fills_the_delta_cache_but_never_evicts_from_it() {
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        apply(&mut image, &Change::Random(p, 100 + 2 * p as u64)); // all distinct
    }
    let mut enc = Encoder::new(PAGES, config(Codec::Lz4, true, 4, 1024, 1)).unwrap();
    let mut dec = Decoder::new(PAGES).unwrap();
    let all: Vec<u64> = (0..PAGES as u64).collect();
    let mut round = |enc: &mut Encoder, image: &[u8], pages: &[u64]| {
        dec.decode(&enc.encode(image, pages).unwrap()).unwrap();
        assert_eq!(dec.image(), image);
    };
    round(&mut enc, &image, &all);
    assert_eq!(
        enc.cached_pages(),
        4,
        "the first four pages took the free room"
    );
    // a page of the first pass after the room was gone: not cached, so no delta
    image[10 * PAGE_SIZE + 5] ^= 0xff;
    round(&mut enc, &image, &[10]);
    assert_eq!(enc.stats.delta, 0);
    // sent again, it is cached (evicting the least recently used): the next change
    // goes as a delta, and so does one to a page the first pass cached
    image[10 * PAGE_SIZE + 6] ^= 0xff;
    image[3 * PAGE_SIZE + 6] ^= 0xff;
    round(&mut enc, &image, &[10, 3]);
    assert_eq!(enc.stats.delta, 2);
    assert_eq!(enc.cached_pages(), 4);
}

#[test]
fn a_page_handed_out_keeps_its_bytes_while_the_receiver_reuses_buffers() {
    // the receiver reuses the buffers of contents it dropped; one a caller still holds
    // (the page store keeps arrived pages this way) must never be one of them
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        apply(&mut image, &Change::Random(p, p as u64));
    }
    let (mut enc, mut dec, all) = sent_whole(&image);
    let (_, kept) = dec.shared_page(0).unwrap();
    let original = image[..PAGE_SIZE].to_vec();
    for round in 1..5u64 {
        // every page rewritten: their old buffers become spares and are refilled
        for p in 0..PAGES {
            apply(&mut image, &Change::Random(p, round * 1000 + p as u64));
        }
        dec.decode(&enc.encode(&image, &all).unwrap()).unwrap();
        assert_eq!(dec.image(), image);
        assert_eq!(&kept[..], &original[..], "round {round}");
    }
}

#[test]
fn encoders_and_decoders_work_alike_in_buffers_earlier_ones_left() {
    // encoders leave their batch buffers (holding their last batches) for the next,
    // decoders their block buffers
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        apply(&mut image, &Change::Text(p, p as u8));
    }
    apply(&mut image, &Change::Zero(3));
    let all: Vec<u64> = (0..PAGES as u64).collect();
    for codec in [Codec::Lz4, Codec::Zstd] {
        let settings = config(codec, true, 64, 8, 2);
        let encoded = |image: &[u8]| {
            let mut encoder = Encoder::new(PAGES, settings).unwrap();
            encoder.encode(image, &all).unwrap()
        };
        let decoded = |wire: &[u8]| {
            let mut decoder = Decoder::with_threads(PAGES, 2).unwrap();
            decoder.read_ahead_from(0);
            decoder.decode(wire).unwrap();
            decoder.image()
        };
        let first = encoded(&image);
        for seed in 1..5u8 {
            let mut other = vec![0u8; PAGES * PAGE_SIZE];
            for p in 0..PAGES {
                apply(
                    &mut other,
                    &Change::Text(p, seed.wrapping_mul(37) ^ p as u8),
                );
                apply(
                    &mut other,
                    &Change::Poke(p, p * 131 + usize::from(seed), seed),
                );
            }
            assert_eq!(decoded(&encoded(&other)), other);
        }
        let again = encoded(&image);
        assert_eq!(first, again);
        assert_eq!(decoded(&again), image);
    }
}

#[test]
fn no_output_is_longer_than_its_bound_even_in_batches_of_one_page() {
    // incompressible pages and pages that only look compressible, one per batch: the
    // most a batch's header and a codec's growth add per page
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        apply(&mut image, &Change::Random(p, p as u64 + 1));
        if p % 2 == 0 {
            image[p * PAGE_SIZE..p * PAGE_SIZE + 2048].fill(b'a');
        }
    }
    let all: Vec<u64> = (0..PAGES as u64).collect();
    for codec in [Codec::Lz4, Codec::Zstd, Codec::None] {
        let mut enc = Encoder::new(PAGES, config(codec, false, 0, 1, 1)).unwrap();
        let wire = enc.encode(&image, &all).unwrap();
        assert!(
            wire.len() <= PAGES * MAX_WIRE_PER_PAGE,
            "{codec:?}: {}",
            wire.len()
        );
        assert!(wire.len() > PAGES * PAGE_SIZE / 2);
    }
}

#[test]
fn zero_and_unchanged_pages_go_in_runs_of_a_few_bytes() {
    // 16 MiB: zero pages, then pages of text each marked with its index; then the same
    // again, whose text pages are unchanged
    let pages = 4096;
    let mut image = vec![0u8; pages * PAGE_SIZE];
    for p in pages / 2..pages {
        let page = &mut image[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
        page.fill(b'x');
        page[..8].copy_from_slice(&(p as u64).to_le_bytes());
    }
    let all: Vec<u64> = (0..pages as u64).collect();
    for threads in [1, 2] {
        let config = config(Codec::Lz4, true, 64, 1024, threads);
        let mut enc = Encoder::new(pages, config).unwrap();
        let mut dec = Decoder::new(pages).unwrap();
        let mut wire_len = Vec::new();
        for _ in 0..2 {
            let wire = enc.encode(&image, &all).unwrap();
            wire_len.push(wire.len());
            dec.decode(&wire).unwrap();
            assert_eq!(dec.image(), image);
        }
        // four batches: a header and a run record each
        assert!(wire_len[1] < 4 * 50, "{wire_len:?}");
        assert_eq!(enc.stats.zero, pages as u64);
        assert_eq!(enc.stats.unchanged, pages as u64 / 2);
    }
}
