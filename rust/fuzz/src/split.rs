//! QEMU's migration stream split into pages and the bytes between them: any bytes,
//! cut into reads anywhere, give the same pieces, and the pieces laid end to end are
//! the stream again.

use novacron_engine::qemu_stream::{Piece, StreamSplitter};
use novacron_engine::PAGE_SIZE;

use crate::input::Input;

/// Read sizes the input picks (cycled), at least one byte each.
pub(crate) fn read_sizes(input: &mut Input<'_>) -> Vec<usize> {
    let count = 1 + input.below(6);
    (0..count)
        .map(|_| match input.byte() % 4 {
            0 => 1 + input.below(16),
            1 => 1 + input.below(PAGE_SIZE + 64),
            2 => 1 << input.below(21),
            _ => usize::MAX,
        })
        .collect()
}

/// `stream` cut into reads of `sizes` (cycled).
pub(crate) fn reads<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (read, after) = rest.split_at(size.min(rest.len()));
        out.push(read);
        rest = after;
    }
    out
}

/// What a splitter makes of `stream` fed in `sizes`: its pieces (bytes between pages
/// joined), the guest's size it found, and its pass-through reason.
fn split_in(stream: &[u8], sizes: &[usize]) -> (Vec<Piece>, u64, Option<&'static str>) {
    let mut splitter = StreamSplitter::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut push = |piece: Piece| match (pieces.last_mut(), piece) {
        (Some(Piece::Verbatim(last)), Piece::Verbatim(bytes)) => last.extend_from_slice(&bytes),
        (_, piece) => pieces.push(piece),
    };
    for read in reads(stream, sizes) {
        splitter.feed(read).into_iter().for_each(&mut push);
    }
    splitter.finish().into_iter().for_each(&mut push);
    (
        pieces,
        splitter.total_pages(),
        splitter.passthrough_reason(),
    )
}

/// The check: see the module's text.
///
/// # Panics
/// When two cuts of the same stream split differently, or the pieces are not the
/// stream.
pub fn split(data: &[u8]) {
    let mut input = Input::new(data);
    let sizes = read_sizes(&mut input);
    let stream = input.rest();
    let whole = split_in(stream, &[usize::MAX]);
    let cut = split_in(stream, &sizes);
    assert!(whole == cut, "the reads changed the pieces");
    let mut joined = Vec::with_capacity(stream.len());
    for piece in &whole.0 {
        match piece {
            Piece::Verbatim(bytes) => joined.extend_from_slice(bytes),
            Piece::Page { data, .. } => {
                assert_eq!(data.len(), PAGE_SIZE, "a page piece is not a page");
                joined.extend_from_slice(data);
            }
        }
    }
    assert!(joined == stream, "the pieces are not the stream");
}
