//! Criterion benchmarks of the page engine's hot paths (`cargo bench -p novacron-engine`).
//!
//! The figures the issue asks for (ratios against memcpy, lz4, zstd-1 and QEMU on whole
//! rounds) come from `bench/pagebench.py`; these track the pieces.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use novacron_engine::{
    dirty_bitmap, filter, scan_pages, wire::Header, Codec, Decoder, Encoder, EncoderConfig,
    PAGE_SIZE,
};
use std::hint::black_box;

const PAGES: usize = 16 * 1024; // 64 MiB

/// A mix like bench/synth.py's: zero, repeated, text-like and random pages.
fn image() -> Vec<u8> {
    let mut out = vec![0u8; PAGES * PAGE_SIZE];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let words: &[&[u8]] = &[
        b"static ",
        b"return ",
        b"kernel: ",
        b"0xdeadbeef ",
        b"GET / ",
    ];
    for p in 0..PAGES {
        let page = &mut out[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
        match p % 20 {
            0..=6 => {}
            7..=10 => page.copy_from_slice(&[(p % 7) as u8 + 1; PAGE_SIZE]),
            11..=16 => {
                let mut at = 0;
                while at < PAGE_SIZE {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let w = words[(x % words.len() as u64) as usize];
                    let n = w.len().min(PAGE_SIZE - at);
                    page[at..at + n].copy_from_slice(&w[..n]);
                    at += n;
                }
            }
            _ => {
                for b in page.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
        }
    }
    out
}

fn benches(c: &mut Criterion) {
    let img = image();
    let all: Vec<u64> = (0..PAGES as u64).collect();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Bytes(img.len() as u64));
    group.sample_size(10);
    group.bench_function("scan_pages", |b| {
        b.iter(|| scan_pages(black_box(&img)).unwrap())
    });
    let hashes = scan_pages(&img).unwrap().hashes;
    group.bench_function("dirty_bitmap", |b| {
        b.iter(|| dirty_bitmap(black_box(&hashes), black_box(&img)).unwrap());
    });
    // the encoder's guess at a filter, for every page it compresses (pages of a
    // page table's shape: it tries all three filters and keeps one)
    let tables: Vec<u8> = (0..(PAGES * PAGE_SIZE / 8) as u64)
        .flat_map(|k| (0x8000_0001_0000_0067u64 + k * 0x1000).to_le_bytes())
        .collect();
    for (name, pages) in [("mix", &img), ("tables", &tables)] {
        group.bench_function(format!("filter_choose_{name}"), |b| {
            b.iter(|| {
                pages
                    .chunks_exact(PAGE_SIZE)
                    .filter(|p| filter::choose(black_box(p)).is_some())
                    .count()
            });
        });
    }
    let step = filter::Filter::new(8, 1);
    let mut filtered = Vec::with_capacity(tables.len());
    step.apply_into(&tables, &mut filtered);
    group.bench_function("filter_undo_tables", |b| {
        b.iter(|| {
            for page in filtered.chunks_exact_mut(PAGE_SIZE) {
                step.undo(black_box(page));
            }
        });
    });
    for codec in [Codec::Lz4, Codec::Zstd] {
        let config = EncoderConfig {
            codec,
            delta_cache_pages: 0,
            ..EncoderConfig::default()
        };
        group.bench_function(format!("encode_round0_{codec:?}"), |b| {
            b.iter(|| {
                Encoder::new(PAGES, config)
                    .unwrap()
                    .encode(&img, &all)
                    .unwrap()
            });
        });
        let wire = Encoder::new(PAGES, config)
            .unwrap()
            .encode(&img, &all)
            .unwrap();
        // every batch's header read and checksum verified (the checksum's cost)
        group.bench_function(format!("verify_round0_{codec:?}"), |b| {
            b.iter(|| {
                let mut rest = black_box(&wire[..]);
                while !rest.is_empty() {
                    rest = Header::parse(rest).unwrap().2;
                }
            });
        });
        group.bench_function(format!("decode_round0_{codec:?}"), |b| {
            b.iter(|| {
                Decoder::new(PAGES)
                    .unwrap()
                    .decode(black_box(&wire))
                    .unwrap()
            });
        });
    }
    group.finish();
}

#[allow(missing_docs)] // the macro generates an undocumented function
mod group {
    use super::{benches, criterion_group};
    criterion_group!(engine, benches);
}
use group::engine;
criterion_main!(engine);
