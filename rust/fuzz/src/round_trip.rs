//! Any rounds of page writes, encoded with any settings, decode on a fresh receiver to
//! exactly the sender's view after every round, whether the stream arrives whole or a
//! batch at a time.

use novacron_engine::wire::Header;
use novacron_engine::{Codec, Decoder, Encoder, EncoderConfig, PageStore, PAGE_SIZE};

use crate::input::Input;

/// Contents kept for pages to be made from (copies with changes, duplicates).
const MADE: usize = 64;

/// The settings the input picks.
fn config(input: &mut Input<'_>) -> EncoderConfig {
    EncoderConfig {
        codec: [Codec::None, Codec::Lz4, Codec::Zstd][input.below(3)],
        zstd_level: [-1, 1, 3][input.below(3)],
        dedup: input.flag(),
        delta_cache_pages: input.below(65),
        batch_pages: 1 + input.below(64),
        threads: 1 + input.below(2),
        wire_version: [4, 5][input.below(2)],
    }
}

/// The batches of `stream`, each whole (the engine's own streams are well formed).
fn batches(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let (_, len) = Header::read(rest).expect("the encoder's batch header reads");
        let (batch, after) = rest.split_at(len);
        out.push(batch);
        rest = after;
    }
    out
}

/// The check: see the module's text.
///
/// # Panics
/// When the receivers' pages differ from the sender's, or the encoder or a decoder
/// refuses what it must take.
pub fn round_trip(data: &[u8]) {
    let mut input = Input::new(data);
    let pages = 1 + input.below(48);
    let mut encoder = Encoder::new(pages, config(&mut input)).expect("valid settings");
    let mut whole = Decoder::with_threads(pages, 1 + input.below(2)).expect("a decoder");
    whole.read_ahead_from(0); // (these inputs are small: read ahead all the same)
    let mut piecewise = Decoder::new(pages).expect("a decoder");
    let mut made: Vec<Vec<u8>> = Vec::new();
    if input.flag() {
        // the receiver's page store, announced before the first round
        let store = PageStore::new(1 + input.below(16));
        let count = input.below(8);
        let mut stored = Vec::with_capacity(count * PAGE_SIZE);
        for _ in 0..count {
            let page = input.page(made.last().map(Vec::as_slice));
            stored.extend_from_slice(&page);
            made.push(page);
        }
        store.add_image(&stored);
        let hashes = whole.announce(&store);
        assert_eq!(piecewise.announce(&store), hashes);
        encoder.announce(&hashes).expect("whole hashes");
    }
    let mut expected = vec![0u8; pages * PAGE_SIZE];
    for round in 0..1 + input.below(6) {
        if round > 0 && input.is_empty() {
            break;
        }
        let packed_mode = input.flag();
        let mut indices = Vec::new();
        let mut packed = Vec::new();
        for _ in 0..input.below(2 * pages + 1) {
            let index = input.below(pages);
            let base = input.below(made.len() + pages);
            let page = if base < made.len() {
                input.page(Some(&made[base]))
            } else {
                let at = (base - made.len()) * PAGE_SIZE;
                input.page(Some(&expected[at..at + PAGE_SIZE]))
            };
            expected[index * PAGE_SIZE..(index + 1) * PAGE_SIZE].copy_from_slice(&page);
            indices.push(index as u64);
            packed.extend_from_slice(&page);
            if made.len() == MADE {
                made.remove(0);
            }
            made.push(page);
        }
        let stream = if packed_mode {
            encoder.encode_pages(&indices, &packed)
        } else {
            encoder.encode(&expected, &indices)
        }
        .expect("a valid round encodes");
        whole.decode(&stream).expect("the encoder's stream decodes");
        assert!(
            whole.image() == expected,
            "round {round}: decoded pages differ"
        );
        for batch in batches(&stream) {
            piecewise.decode(batch).expect("each batch decodes");
        }
        assert!(
            piecewise.image() == expected,
            "round {round}: batch by batch differs"
        );
    }
}
