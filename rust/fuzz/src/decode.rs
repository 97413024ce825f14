//! Hostile batches, framed with a right checksum so that they reach the decoder's
//! every check, against a receiver that holds pages: each is taken whole or refused
//! whole (a refused batch changes no page), the receiver's hashes stay true to its
//! pages, and an lz4 block the decoder takes decompresses as `lz4_flex` has it.
//!
//! Batches are written from `docs/migration-wire.md` (the header's fields, the
//! record kinds, the varints), not from the engine's own writer.

use std::borrow::Cow;

use novacron_engine::{hash_page, Decoder, Encoder, EncoderConfig, PageStore, PAGE_SIZE};
use xxhash_rust::xxh3::xxh3_64;

use crate::input::Input;

const KINDS: u8 = 11;
const LZ4: u8 = 4;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_signed(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// A batch: the header (`codec` byte as given, `block_raw_len` as given) and a body of
/// the three parts, with the checksum the spec defines.
fn frame(codec: u8, records: u32, parts: [&[u8]; 3], block_raw_len: u32) -> Vec<u8> {
    let [record_bytes, block, raw] = parts;
    let mut batch = Vec::with_capacity(40 + parts.iter().map(|p| p.len()).sum::<usize>());
    batch.extend_from_slice(b"NCPB");
    batch.extend_from_slice(&[4, codec, 0, 0]);
    for field in [
        records,
        record_bytes.len() as u32,
        block_raw_len,
        block.len() as u32,
        raw.len() as u32,
        0,
    ] {
        batch.extend_from_slice(&field.to_le_bytes());
    }
    for part in parts {
        batch.extend_from_slice(part);
    }
    // (bytes 0..32 of the header, then the body: all of it, before the checksum goes in)
    let checksum = xxh3_64(&batch);
    batch.splice(32..32, checksum.to_le_bytes());
    batch
}

/// A delta payload (pairs of skip, copy and literals), sensible or not.
fn delta(input: &mut Input<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..input.below(6) {
        put_varint(&mut out, input.below(PAGE_SIZE + 8) as u64);
        let copy = input.below(80);
        put_varint(&mut out, copy as u64);
        out.extend_from_slice(input.bytes(copy));
    }
    out
}

/// Records in the spec's language, their block and raw parts; `known`: hashes the
/// receiver holds, so that some `dup-ref` records name real contents.
fn records(
    input: &mut Input<'_>,
    pages: usize,
    known: &[u128],
) -> (u32, Vec<u8>, Vec<u8>, Vec<u8>) {
    let count = input.below(12);
    let (mut out, mut block, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    // pages the records name (a run names 1 + `more`)
    let mut named = count as u64;
    for _ in 0..count {
        let kind = input.byte() % (KINDS + 1); // one past the last kind: unknown
        out.push(kind);
        // mostly a page of the guest, sometimes past its end
        put_signed(&mut out, input.below(pages + 2) as i64 - 1);
        match kind {
            2 => {
                let hash = match input.below(known.len() + 1) {
                    k if k < known.len() => known[k],
                    _ => u128::from(input.u64()),
                };
                out.extend_from_slice(&hash.to_le_bytes());
            }
            3 | 8 => {
                if kind == 8 {
                    put_varint(&mut out, input.below(pages + 1) as u64);
                }
                let payload = delta(input);
                let len = if input.byte() < 16 {
                    input.below(PAGE_SIZE + 2)
                } else {
                    payload.len()
                };
                put_varint(&mut out, len as u64);
                block.extend_from_slice(&payload);
            }
            4 | 5 => block.extend_from_slice(&input.page(None)),
            6 => raw.extend_from_slice(&input.page(None)),
            7 => put_signed(&mut out, i64::from(input.byte() % 8) - 2),
            9 | 10 => {
                // mostly inside the guest, sometimes past it, sometimes huge
                let more = match input.byte() {
                    0..8 => input.u64() >> input.below(64),
                    _ => input.below(pages + 1) as u64,
                };
                put_varint(&mut out, more);
                named = named.saturating_add(more);
            }
            _ => {}
        }
    }
    (u32::try_from(named).unwrap_or(u32::MAX), out, block, raw)
}

/// One hostile batch; for a batch of lz4 records at pages 0, 1, ... (see
/// [`lz4_agrees`]), also their count and the block.
fn batch<'a>(
    input: &mut Input<'a>,
    pages: usize,
    known: &[u128],
) -> (Vec<u8>, Option<(usize, &'a [u8])>) {
    match input.byte() % 8 {
        0 => (input.chunk().to_vec(), None), // any bytes (mostly a wrong checksum)
        1 => {
            // pages of an lz4 block the input writes (see `lz4_agrees`)
            let count = 1 + input.below(pages.min(4));
            let mut out = Vec::new();
            for _ in 0..count {
                out.extend_from_slice(&[LZ4, 0]); // pages 0, 1, ...: steps of 0
            }
            let block = input.chunk();
            let raw_len = (count * PAGE_SIZE) as u32;
            let batch = frame(1, count as u32, [&out, block, &[]], raw_len);
            (batch, Some((count, block)))
        }
        _ => {
            let (count, mut out, block, raw) = records(input, pages, known);
            if input.byte() < 24 {
                out.extend_from_slice(input.bytes(4)); // stray bytes
            }
            let codec = input.byte() % 4; // 3: no such codec
            let wire = match codec {
                1 => Cow::Owned(lz4_flex::block::compress(&block)),
                2 => Cow::Owned(zstd_frame(&block)),
                _ => Cow::Borrowed(&block[..]),
            };
            let raw_len = match input.byte() {
                0..4 => input.u32(),
                _ => block.len() as u32,
            };
            let count = if input.byte() < 8 { input.u32() } else { count };
            (frame(codec, count, [&out, &wire, &raw], raw_len), None)
        }
    }
}

/// A zstd frame of `data` as a third party would write it: a raw block (the frame
/// format lets any decoder read it).
fn zstd_frame(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD];
    // frame header: single segment, 4-byte content size
    out.push(0b1010_0000);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let mut chunks = data.chunks(128 * 1024).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0]); // one empty, last, raw block
    }
    while let Some(chunk) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        let header = last | (chunk.len() as u32) << 3; // block type 0: raw
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    out
}

/// For a batch of `count` lz4 records at pages 0.. with the block `block`: if the
/// decoder took it, its pages are what `lz4_flex` decompresses the block to.
fn lz4_agrees(decoder: &Decoder, count: usize, block: &[u8]) {
    let theirs = lz4_flex::block::decompress(block, count * PAGE_SIZE);
    let theirs = theirs.expect("lz4_flex refuses a block the decoder took");
    assert_eq!(
        theirs.len(),
        count * PAGE_SIZE,
        "lz4_flex decompressed another size"
    );
    for (k, page) in theirs.chunks_exact(PAGE_SIZE).enumerate() {
        assert!(
            decoder.page(k) == page,
            "page {k}: the decoder's lz4 differs from lz4_flex"
        );
    }
}

/// The check: see the module's text.
///
/// # Panics
/// When a refused batch changed pages, the receiver's hashes are not its pages', or the
/// decoder's lz4 differs from `lz4_flex`.
pub fn decode(data: &[u8]) {
    let mut input = Input::new(data);
    let pages = 1 + input.below(16);
    let mut decoder = Decoder::with_threads(pages, 1 + input.below(2)).expect("a decoder");
    // (these inputs are small: read ahead all the same)
    decoder.read_ahead_from(0);
    // a first round the engine encodes, so that the receiver holds pages
    let mut image = Vec::with_capacity(pages * PAGE_SIZE);
    for _ in 0..pages {
        let page = input.page(image.get(image.len().saturating_sub(PAGE_SIZE)..));
        image.extend_from_slice(&page);
    }
    let config = EncoderConfig {
        batch_pages: 4,
        delta_cache_pages: 16,
        ..EncoderConfig::default()
    };
    let mut encoder = Encoder::new(pages, config).expect("valid settings");
    let all: Vec<u64> = (0..pages as u64).collect();
    decoder
        .decode(&encoder.encode(&image, &all).expect("encodes"))
        .expect("the engine's own round decodes");
    // pages of a page store, announced: `announced-ref` records may name them
    let mut stored = Vec::new();
    for _ in 0..input.below(4) {
        stored.extend_from_slice(&input.page(image.get(..PAGE_SIZE)));
    }
    let store = PageStore::new(8);
    store.add_image(&stored);
    decoder.announce(&store);
    let stored: Vec<u128> = stored.chunks_exact(PAGE_SIZE).map(hash_page).collect();
    while !input.is_empty() {
        let mut known: Vec<u128> = (0..pages).map(|i| hash_page(decoder.page(i))).collect();
        known.extend_from_slice(&stored);
        let before = decoder.image();
        let (batch, lz4) = batch(&mut input, pages, &known);
        let taken = decoder.decode(&batch).is_ok();
        if !taken {
            assert!(
                decoder.image() == before,
                "a refused batch changed the receiver's pages"
            );
        }
        for index in 0..pages {
            if let Some((hash, _)) = decoder.held_page(index) {
                assert_eq!(
                    hash,
                    hash_page(decoder.page(index)),
                    "page {index}: hash is not its page's"
                );
            }
        }
        if let (true, Some((count, block))) = (taken, lz4) {
            lz4_agrees(&decoder, count, block);
        }
    }
}
