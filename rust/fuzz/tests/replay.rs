//! Every input under `corpus/<target>/` (seeds, and each crash a fuzzer found), run
//! through its target; and a few thousand inputs made here, so that `cargo test` fuzzes
//! briefly too (reproducible: the same seed every run).

use std::path::Path;

use novacron_fuzz::{noise, TARGETS};

/// The inputs of a pack (`examples/pack.rs`): a 4-byte little-endian length, the bytes.
fn unpack(mut packed: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !packed.is_empty() {
        let (len, rest) = packed.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let (input, rest) = rest.split_at(len);
        out.push(input);
        packed = rest;
    }
    out
}

/// A fuzzer's minimised corpus (`corpus/<target>.pack`), where there is one.
#[test]
fn the_minimised_corpora_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut packs = 0;
    for (name, target) in TARGETS {
        let Ok(packed) = std::fs::read(root.join(format!("{name}.pack"))) else {
            continue;
        };
        let inputs = unpack(&packed);
        assert!(!inputs.is_empty(), "{name}: an empty pack");
        packs += 1;
        for (k, input) in inputs.into_iter().enumerate() {
            eprintln!("{name}: packed input {k}");
            target(input);
        }
    }
    assert!(packs >= 2, "the decode and round_trip packs are missing");
}

#[test]
fn the_corpus_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut ran = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: no corpus");
        for file in files {
            let data = std::fs::read(&file).expect("a corpus file");
            eprintln!("{name}: {}", file.display());
            target(&data);
            ran += 1;
        }
    }
    assert!(ran >= TARGETS.len());
}

#[test]
fn random_inputs_pass() {
    let mut state = 0x9E37_79B9_7F4A_7C15;
    for (name, target) in TARGETS {
        for case in 0..300 {
            let len = [16, 64, 300, 2000][case % 4];
            let mut data = vec![0; len];
            noise(&mut state, &mut data);
            eprintln!("{name}: case {case}");
            target(&data);
        }
    }
}
