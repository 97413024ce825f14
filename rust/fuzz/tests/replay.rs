//! Every input under `corpus/<target>/` (seeds, and each crash a fuzzer found), run
//! through its target; and a few thousand inputs made here, so that `cargo test` fuzzes
//! briefly too (reproducible: the same seed every run).

use std::path::Path;

use novacron_fuzz::TARGETS;

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

/// xorshift64* bytes.
fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[test]
fn random_inputs_pass() {
    let mut state = 0x9E37_79B9_7F4A_7C15;
    for (name, target) in TARGETS {
        for case in 0..300 {
            let len = [16, 64, 300, 2000][case % 4];
            let data = noise(&mut state, len);
            eprintln!("{name}: case {case}");
            target(&data);
        }
    }
}
