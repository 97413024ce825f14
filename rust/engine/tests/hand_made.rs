//! Batches written by hand from `docs/migration-wire.md`: what a decoder must accept that
//! NovaCron's own encoder never writes, and the references it must refuse.

mod common;

use common::{apply, sent_whole, Change, PAGES};
use novacron_engine::{Codec, Decoder, PAGE_SIZE};

/// A batch of `count` records (`records`) with `block` on the wire as it is (stored, or
/// empty with any codec) and `raw` as its raw area.
fn hand_made(codec: Codec, count: u32, records: &[u8], block: &[u8], raw: &[u8]) -> Vec<u8> {
    let header = novacron_engine::wire::Header {
        version: novacron_engine::wire::VERSION,
        codec,
        records: count,
        records_len: records.len() as u32,
        block_raw_len: block.len() as u32,
        block_len: block.len() as u32,
        raw_len: raw.len() as u32,
    };
    header.frame_parts(&[records, block, raw])
}

/// A stored batch of two records (`records`): a raw page of 7s, then one whose payload
/// is `delta`.
fn raw_and_delta(records: &[u8], delta: &[u8]) -> Vec<u8> {
    hand_made(Codec::None, 2, records, delta, &[7u8; PAGE_SIZE])
}

#[test]
fn a_moved_content_goes_as_a_delta_from_its_old_page_and_bad_bases_are_refused() {
    use novacron_engine::wire::Kind;
    let mut image = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        apply(&mut image, &Change::Text(p, p as u8));
    }
    let (mut enc, mut dec, _) = sent_whole(&image);
    // in both directions: a lower page takes a higher one's content and the reverse
    for (dst, src, at) in [(2, 9, 77), (20, 5, 78)] {
        apply(&mut image, &Change::Move(dst, src, at));
        let before = enc.stats.delta_from;
        let wire = enc.encode(&image, &[2, 5, 9, 20]).unwrap();
        dec.decode(&wire).unwrap();
        assert_eq!(dec.image(), image);
        assert_eq!(enc.stats.delta_from, before + 1, "{dst} from {src}");
    }
    // a base outside the guest, or one the receiver never had, is refused, changing nothing
    let mut fresh = Decoder::new(4).unwrap();
    for (base, why) in [(7u8, "out of range"), (2, "never had")] {
        // skip 0, copy 1 byte
        let delta = [0u8, 1, 0xAB];
        // page 1 raw, then page 3 (a step of 1 after page 1 + 1: zigzag 2) from `base`
        let records = [Kind::Raw as u8, 2, Kind::DeltaFrom as u8, 2, base, 3];
        let err = fresh.decode(&raw_and_delta(&records, &delta)).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert!(fresh.image().iter().all(|&b| b == 0), "nothing applied");
    }
}

#[test]
fn a_delta_may_change_what_an_earlier_record_of_its_batch_wrote() {
    use novacron_engine::wire::Kind;
    // page 1 never had a version: raw, then a delta on it (skip 3, copy 2 bytes);
    // page 2 the same but with no record before the delta, refused
    for (records, applied) in [
        (vec![Kind::Raw as u8, 2, Kind::Delta as u8, 1, 4], true),
        (vec![Kind::Raw as u8, 2, Kind::Delta as u8, 0, 4], false),
    ] {
        let mut dec = Decoder::new(4).unwrap();
        let result = dec.decode(&raw_and_delta(&records, &[3u8, 2, 0xAB, 0xCD]));
        let image = dec.image();
        if applied {
            result.unwrap();
            assert_eq!(&image[PAGE_SIZE..PAGE_SIZE + 6], &[7, 7, 7, 0xAB, 0xCD, 7]);
        } else {
            let err = result.unwrap_err();
            assert!(err.to_string().contains("never had"), "{err}");
            assert!(image.iter().all(|&b| b == 0), "nothing applied");
        }
    }
}

#[test]
fn an_empty_block_may_be_absent_whatever_the_codec() {
    use novacron_engine::wire::Kind;
    for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
        let batch = hand_made(codec, 1, &[Kind::Zero as u8, 0], &[], &[]);
        let mut dec = Decoder::new(1).unwrap();
        assert_eq!(dec.decode(&batch).unwrap(), 1, "{codec:?}");
    }
}

#[test]
fn a_dup_ref_may_name_content_any_page_holds() {
    use novacron_engine::wire::Kind;
    // page 0 gets X, page 1 a reference to it, page 0 then Y: X is still held (by page
    // 1), so page 2 may name it, though the sender's index no longer has a page for it
    let (x, y) = ([1u8; PAGE_SIZE], [2u8; PAGE_SIZE]);
    let hash = novacron_engine::hash_page(&x).to_le_bytes();
    for holds in [true, false] {
        let mut records = vec![Kind::Raw as u8, 0, Kind::DupRef as u8, 0];
        records.extend_from_slice(&hash);
        // page 0 again (a step of -2: zigzag 3); then page 2 (step 1) refers to X, or page
        // 1 becomes zero first (step 0) so that nothing holds X, and page 2 (step 0) is refused
        records.extend_from_slice(&[Kind::Raw as u8, 3]);
        if !holds {
            records.extend_from_slice(&[Kind::Zero as u8, 0]);
        }
        records.extend_from_slice(&[Kind::DupRef as u8, if holds { 2 } else { 0 }]);
        records.extend_from_slice(&hash);
        let raw = [x, y].concat();
        let batch = hand_made(Codec::None, if holds { 4 } else { 5 }, &records, &[], &raw);
        let mut dec = Decoder::new(4).unwrap();
        let result = dec.decode(&batch);
        assert_eq!(result.is_ok(), holds, "{result:?}");
        if holds {
            assert_eq!(&dec.image()[2 * PAGE_SIZE..3 * PAGE_SIZE], &x[..]);
            assert_eq!(&dec.image()[..PAGE_SIZE], &y[..]);
        }
    }
}

#[test]
fn runs_name_consecutive_pages_and_may_not_reach_past_the_batch_or_the_guest() {
    use novacron_engine::wire::Kind;
    let page = |image: &[u8], p: usize| image[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].to_vec();
    // pages 0..=5 raw (a run of 1 raw + unchanged could not stand first: nothing held)
    let mut records = Vec::new();
    for _ in 0..6 {
        records.extend_from_slice(&[Kind::Raw as u8, 0]);
    }
    let raw: Vec<u8> = (1..=6u8).flat_map(|v| [v; PAGE_SIZE]).collect();
    let mut dec = Decoder::new(8).unwrap();
    dec.decode(&hand_made(Codec::None, 6, &records, &[], &raw))
        .unwrap();
    // pages 1..=3 zero (page 1: a step of 1, zigzag 2; 2 more), pages 4..=5 unchanged
    // (1 more), page 6 zero alone as a run of 1 (0 more)
    let records = [
        Kind::ZeroRun as u8,
        2,
        2,
        Kind::UnchangedRun as u8,
        0,
        1,
        Kind::ZeroRun as u8,
        0,
        0,
    ];
    assert_eq!(
        dec.decode(&hand_made(Codec::None, 6, &records, &[], &[]))
            .unwrap(),
        1
    );
    let image = dec.image();
    assert_eq!(page(&image, 0), [1u8; PAGE_SIZE]);
    for p in [1, 2, 3, 6, 7] {
        assert!(page(&image, p).iter().all(|&b| b == 0), "page {p}");
    }
    assert_eq!(page(&image, 5), [6u8; PAGE_SIZE]);
    // the pages a batch names are its header's count: a run may not name more, nor may
    // the batch end before its count; a run may not pass the guest's last page; an
    // unchanged run may not name a page never held
    for (count, records, why) in [
        (
            2,
            vec![Kind::ZeroRun as u8, 0, 2],
            "run longer than the batch's pages",
        ),
        (4, vec![Kind::ZeroRun as u8, 0, 2], "truncated record"),
        (3, vec![Kind::ZeroRun as u8, 12, 2], "out of range"),
        (
            1,
            vec![Kind::ZeroRun as u8, 0, 0xff, 0xff, 0xff, 0xff, 0x1f],
            "longer",
        ),
        (3, vec![Kind::UnchangedRun as u8, 10, 2], "never had"),
    ] {
        let mut fresh = Decoder::new(8).unwrap();
        let mut held = Decoder::new(8).unwrap();
        held.decode(&hand_made(
            Codec::None,
            1,
            &[Kind::Raw as u8, 0],
            &[],
            &[9; PAGE_SIZE],
        ))
        .unwrap();
        for dec in [&mut fresh, &mut held] {
            let before = dec.image();
            let err = dec
                .decode(&hand_made(Codec::None, count, &records, &[], &[]))
                .unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
            assert_eq!(dec.image(), before, "nothing applied");
        }
    }
}

/// A batch of `version` whose block (`block`, before compression) is lz4-compressed.
fn compressed(version: u8, count: u32, records: &[u8], block: &[u8]) -> Vec<u8> {
    let wire = lz4_flex::block::compress(block);
    let header = novacron_engine::wire::Header {
        version,
        codec: Codec::Lz4,
        records: count,
        records_len: records.len() as u32,
        block_raw_len: block.len() as u32,
        block_len: wire.len() as u32,
        raw_len: 0,
    };
    header.frame_parts(&[records, &wire, &[]])
}

#[test]
fn a_filtered_page_is_its_block_bytes_with_the_filter_undone() {
    use novacron_engine::filter::Filter;
    use novacron_engine::wire::Kind;
    // page 0: 4-byte words 1, 4, 7, ... sent as differences from the word before (filter
    // byte 0x00) — 1, then 3 repeated; page 1 (step 0): 8-byte words, each the one two
    // before plus 5 (filter byte 0x11) — two words, then 5s
    let mut block: Vec<u8> = 1u32.to_le_bytes().to_vec();
    block.extend((1..PAGE_SIZE / 4).flat_map(|_| 3u32.to_le_bytes()));
    block.extend([10u64, 20].iter().flat_map(|w| w.to_le_bytes()));
    block.extend((2..PAGE_SIZE / 8).flat_map(|_| 5u64.to_le_bytes()));
    let records = [Kind::Filtered as u8, 0, 0x00, Kind::Filtered as u8, 0, 0x11];
    let batch = compressed(5, 2, &records, &block);
    let mut dec = Decoder::new(2).unwrap();
    assert_eq!(dec.decode(&batch).unwrap(), 1);
    let image = dec.image();
    let words4: Vec<u32> = image[..PAGE_SIZE]
        .chunks(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
        .collect();
    assert!(words4
        .iter()
        .enumerate()
        .all(|(k, &w)| w == 1 + 3 * k as u32));
    let words8: Vec<u64> = image[PAGE_SIZE..]
        .chunks(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .collect();
    for (k, &w) in words8.iter().enumerate() {
        assert_eq!(w, [10, 20][k % 2] + 5 * (k as u64 / 2), "word {k}");
    }
    // what the encoder writes for such a page reads back the same way
    let mut again = Vec::new();
    Filter::new(8, 2).apply_into(&image[PAGE_SIZE..], &mut again);
    assert_eq!(again, block[PAGE_SIZE..]);
}

#[test]
fn filtered_records_only_in_version_5_compressed_batches_with_a_known_filter() {
    use novacron_engine::wire::Kind;
    let page = [3u8; PAGE_SIZE];
    let filtered = [Kind::Filtered as u8, 0, 0x10];
    for (batch, why) in [
        (compressed(4, 1, &filtered, &page), "version 4 batch"),
        (
            hand_made(Codec::None, 1, &filtered, &page, &[]),
            "without compression",
        ),
        (
            compressed(5, 1, &[Kind::Filtered as u8, 0, 0x20], &page),
            "unknown filter",
        ),
        (
            compressed(5, 1, &[Kind::Filtered as u8, 0], &page),
            "truncated record",
        ),
        (
            compressed(5, 2, &[Kind::Filtered as u8, 0, 0x10, 4, 0], &page),
            "run past the block",
        ),
        (compressed(3, 1, &filtered, &page), "wire version 3"),
        (compressed(6, 1, &filtered, &page), "wire version 6"),
    ] {
        let mut dec = Decoder::new(2).unwrap();
        let err = dec.decode(&batch).unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
        assert!(dec.image().iter().all(|&b| b == 0), "nothing applied");
    }
    // version 4 batches are read as before
    let lz4 = compressed(4, 1, &[Kind::Lz4 as u8, 0], &page);
    let mut dec = Decoder::new(1).unwrap();
    dec.decode(&lz4).unwrap();
    assert_eq!(dec.image(), page);
}
