//! A small guest for the engine's integration tests: its size, changes to its pages,
//! and an encoder and a receiver it went between.
#![allow(dead_code)] // (each test file uses part of it)

use novacron_engine::{Decoder, Encoder, EncoderConfig, PAGE_SIZE};

pub const PAGES: usize = 24;

#[derive(Debug, Clone)]
pub enum Change {
    Zero(usize),
    Random(usize, u64),
    CopyFrom(usize, usize),
    Poke(usize, usize, u8),
    Text(usize, u8),
    /// page `.0` takes page `.1`'s content with byte `.2` changed, and page `.1` is
    /// rewritten: a content moved to another page (a `delta-from` of the first)
    Move(usize, usize, usize),
    /// page `.0` becomes 8-byte words from `.1` up by `.2` each (a page table's shape:
    /// the encoder sends it `filtered`)
    Table(usize, u64, u32),
}

pub fn apply(image: &mut [u8], change: &Change) {
    let page = |i: usize| i % PAGES * PAGE_SIZE..(i % PAGES + 1) * PAGE_SIZE;
    match *change {
        Change::Zero(i) => image[page(i)].fill(0),
        Change::Random(i, seed) => {
            let mut x = seed | 1;
            for b in &mut image[page(i)] {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        Change::CopyFrom(dst, src) => {
            let src = page(src);
            image.copy_within(src, page(dst).start);
        }
        Change::Poke(i, at, v) => image[page(i).start + at % PAGE_SIZE] = v,
        Change::Text(i, seed) => {
            for (j, b) in image[page(i)].iter_mut().enumerate() {
                *b = b"the quick brown fox "[(j + seed as usize) % 20];
            }
        }
        Change::Table(i, start, step) => {
            for (k, word) in image[page(i)].chunks_exact_mut(8).enumerate() {
                let value = start.wrapping_add(u64::from(step).wrapping_mul(k as u64));
                word.copy_from_slice(&value.to_le_bytes());
            }
        }
        Change::Move(dst, src, at) => {
            apply(image, &Change::CopyFrom(dst, src));
            image[page(dst).start + at % PAGE_SIZE] ^= 0x55;
            apply(image, &Change::Random(src, at as u64));
        }
    }
}

/// An encoder and a receiver that `image` went between whole (default settings), and
/// every page index.
pub fn sent_whole(image: &[u8]) -> (Encoder, Decoder, Vec<u64>) {
    let mut enc = Encoder::new(PAGES, EncoderConfig::default()).unwrap();
    let mut dec = Decoder::new(PAGES).unwrap();
    let all: Vec<u64> = (0..PAGES as u64).collect();
    dec.decode(&enc.encode(image, &all).unwrap()).unwrap();
    (enc, dec, all)
}
