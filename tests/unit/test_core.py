"""The native module: novacron._core (Rust page scan)."""

from __future__ import annotations

import contextlib
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novacron import _core
from novacron.errors import EngineError
from tests import wire_reference as ref

PAGE = _core.PAGE_SIZE


def bit(bitmap: bytes, i: int) -> bool:
    return bool(bitmap[i // 8] >> (i % 8) & 1)


@given(st.lists(st.sampled_from(["zero", "one", "random"]), max_size=40))
def test_scan_matches_python(kinds: list[str]) -> None:
    pages = []
    for k in kinds:
        if k == "zero":
            pages.append(bytes(PAGE))
        elif k == "one":
            pages.append(bytes(PAGE - 1) + b"\x01")
        else:
            pages.append(os.urandom(PAGE))
    image = b"".join(pages)
    scan = _core.scan_pages(image)
    assert scan.pages == len(pages)
    assert scan.zero_pages == kinds.count("zero")
    assert len(scan.hashes) == 16 * len(pages)
    for i, k in enumerate(kinds):
        assert bit(scan.zero_bitmap, i) == (k == "zero")


def test_same_content_same_hash_and_buffers_without_copy() -> None:
    page = os.urandom(PAGE)
    scan = _core.scan_pages(memoryview(bytearray(page * 3)))
    h = scan.hashes
    assert h[0:16] == h[16:32] == h[32:48]
    assert _core.is_zero_page(bytes(PAGE))
    assert not _core.is_zero_page(page)


def test_dirty_bitmap() -> None:
    image = bytearray(os.urandom(PAGE * 10))
    before = _core.scan_pages(bytes(image))
    image[3 * PAGE + 5] ^= 1
    image[9 * PAGE] ^= 1
    bitmap = _core.dirty_bitmap(before.hashes, bytes(image))
    assert [i for i in range(10) if bit(bitmap, i)] == [3, 9]


def test_a_scan_gives_the_dirty_bitmap_of_its_image() -> None:
    image = bytearray(os.urandom(PAGE * 10))
    before = _core.scan_pages(bytes(image))
    image[2 * PAGE] ^= 1
    image[7 * PAGE + 4095] ^= 1
    after = bytes(image)
    bitmap = _core.scan_pages(after).dirty_since(before.hashes)
    assert bitmap == _core.dirty_bitmap(before.hashes, after)
    assert [i for i in range(10) if bit(bitmap, i)] == [2, 7]
    with pytest.raises(EngineError, match="previous hashes describe"):
        _core.scan_pages(after).dirty_since(before.hashes[:16])


def test_the_encoder_takes_hashes_only_from_a_scan_of_the_same_bytes() -> None:
    image = bytearray(GUEST * PAGE)
    enc, plain = _core.PageEncoder(GUEST), _core.PageEncoder(GUEST)
    dec = _core.PageDecoder(GUEST)
    for n, change in enumerate([("text", 1, 0, 0), ("poke", 1, 0, 9), ("copy", 4, 1, 0)]):
        touched = None if n == 0 else [mutate(image, change)]
        if n == 0:
            mutate(image, change)
        frozen = bytes(image)
        wire = enc.encode(frozen, touched, _core.scan_pages(frozen))
        assert wire == plain.encode(frozen, touched)  # the same stream, fewer hashes
        dec.decode(wire)
        assert dec.image() == frozen
    other = bytes(image)  # equal bytes, another object: the scan does not vouch for it
    with pytest.raises(ValueError, match="this very bytes object"):
        enc.encode(other, None, _core.scan_pages(bytes(image)))
    mutable = bytearray(image)  # a mutable buffer could change after its scan
    with pytest.raises(ValueError, match="this very bytes object"):
        enc.encode(mutable, None, _core.scan_pages(mutable))
    assert enc.stats()["pages"] == plain.stats()["pages"]  # the refusals encoded nothing


def test_engine_errors_are_python_exceptions() -> None:
    with pytest.raises(EngineError, match="multiple of the page size"):
        _core.scan_pages(b"x" * 100)
    with pytest.raises(EngineError, match="previous hashes describe"):
        _core.dirty_bitmap(b"\0" * 16, bytes(PAGE * 2))


def test_non_contiguous_buffer_is_refused() -> None:
    view = memoryview(bytes(PAGE * 2)).cast("B")[::2]
    with pytest.raises(ValueError, match="contiguous"):
        _core.scan_pages(view)


# -- the page stream (PageEncoder / PageDecoder) -----------------------------------------

GUEST = 16

page_change = st.tuples(
    st.sampled_from(["zero", "random", "copy", "poke", "text"]),
    st.integers(0, GUEST - 1),
    st.integers(0, GUEST - 1),
    st.integers(0, PAGE - 1),
)


def mutate(image: bytearray, change: tuple[str, int, int, int]) -> int:
    kind, i, j, at = change
    page = slice(i * PAGE, (i + 1) * PAGE)
    if kind == "zero":
        image[page] = bytes(PAGE)
    elif kind == "random":
        image[page] = os.urandom(PAGE)
    elif kind == "copy":
        image[page] = image[j * PAGE : (j + 1) * PAGE]
    elif kind == "poke":
        image[i * PAGE + at] ^= 0x5A
    else:
        image[page] = (b"kernel text %d " % j * 400)[:PAGE]
    return i


@given(
    st.lists(st.lists(page_change, max_size=10), min_size=1, max_size=5),
    st.sampled_from(["lz4", "zstd", "none"]),
    st.booleans(),
    st.sampled_from([0, 8]),
    st.sampled_from([1, 2]),
)
def test_stream_round_trip_reproduces_every_round(
    rounds: list[list[tuple[str, int, int, int]]],
    compression: str,
    dedup: bool,
    delta: int,
    threads: int,
) -> None:
    image = bytearray(GUEST * PAGE)
    enc = _core.PageEncoder(
        GUEST, compression=compression, dedup=dedup, delta_cache_pages=delta, batch_pages=5
    )
    # batches of 5 pages: a decoder with a helper reads some ahead of the one applied
    dec = _core.PageDecoder(GUEST, threads=threads)
    for n, changes in enumerate(rounds):
        touched = sorted({mutate(image, c) for c in changes})
        wire = enc.encode(image, None if n == 0 else touched)
        dec.decode(wire)
        assert dec.image() == bytes(image)


@given(st.integers(min_value=0), st.integers(0, 7))
def test_stream_bit_flips_are_rejected(position: int, bit: int) -> None:
    image = bytearray(os.urandom(PAGE)) * 2 + bytearray(b"abc" * 2000)[:PAGE] + bytes(PAGE)
    wire = bytearray(_core.PageEncoder(4).encode(image))
    wire[position % len(wire)] ^= 1 << bit
    dec = _core.PageDecoder(4)
    with pytest.raises(EngineError, match="malformed"):
        dec.decode(wire)
    assert dec.image() == bytes(4 * PAGE)


def test_a_decoder_takes_1_to_1024_threads() -> None:
    for bad in (0, 1025):
        with pytest.raises(EngineError, match="threads"):
            _core.PageDecoder(4, threads=bad)


def test_stream_sizes_and_stats() -> None:
    text = (b"log line %06d\n" * 300)[:PAGE]
    image = bytearray(text * 8 + bytes(PAGE * 8))
    enc = _core.PageEncoder(16)
    first = enc.encode(image)
    assert len(first) < 2 * PAGE  # 8 identical text pages -> 1 page + 7 refs; 8 zero records
    assert len(enc.encode(image)) < 200  # nothing changed
    stats = enc.stats()
    assert stats["zero"] == 16 and stats["dup"] >= 7 and stats["unchanged"] >= 8
    with pytest.raises(EngineError, match="out of range"):
        enc.encode(image, [99])
    with pytest.raises(ValueError, match="compression"):
        _core.PageEncoder(1, compression="gzip")


def test_a_delta_cache_larger_than_the_guest_is_taken_as_the_guest() -> None:
    # (asked for as given, 2**40 pages aborted the interpreter: no system grants it)
    image = bytearray(os.urandom(8 * PAGE))
    enc = _core.PageEncoder(8, delta_cache_pages=2**40)
    dec = _core.PageDecoder(8)
    dec.decode(enc.encode(image))
    image[3 * PAGE + 17] ^= 0xFF
    wire = enc.encode(image, [3])
    assert len(wire) < 200  # a delta against the cached base
    dec.decode(wire)
    assert dec.image() == image


def test_the_encoders_output_is_a_read_only_view_that_outlives_the_encoder() -> None:
    rng = random.Random(5)
    image = bytearray(rng.randbytes(PAGE * 40))
    enc = _core.PageEncoder(40, threads=2, batch_pages=4)  # ten batches, in order
    first = enc.encode(bytes(image))
    assert isinstance(first, memoryview) and first.readonly
    kept = bytes(first)
    with pytest.raises(TypeError):
        first[0] = 0
    image[5 * PAGE] ^= 1
    again = enc.encode(bytes(image), [5])
    del enc
    assert bytes(first) == kept  # later calls, and the encoder gone, change nothing
    dec = _core.PageDecoder(40)
    dec.decode(first)
    dec.decode(again)
    assert dec.image() == bytes(image)


def test_an_output_let_go_of_is_written_again_only_by_a_later_encode() -> None:
    # outputs Python lets go of are kept for later encodes: one still held never is
    rng = random.Random(6)
    pages = 64
    images = [rng.randbytes(PAGE * 8) * (pages // 8) for _ in range(3)]
    held = _core.PageEncoder(pages, threads=2, batch_pages=8).encode(images[0])
    kept = bytes(held)
    expected = []
    for image in images[1:]:
        out = _core.PageEncoder(pages, threads=2, batch_pages=8).encode(image)
        expected.append(bytes(out))
        del out  # to the shelf: the next encode writes into it
    for image, wire in zip(images[1:], expected, strict=True):
        again = _core.PageEncoder(pages, threads=2, batch_pages=8).encode(image)
        assert bytes(again) == wire
        dec = _core.PageDecoder(pages)
        dec.decode(again)
        assert dec.image() == image
        del again
    assert bytes(held) == kept


def test_content_moved_to_another_page_goes_as_a_delta_from_it() -> None:
    # page 1's content moves to page 3 with a few bytes changed while page 1 is
    # rewritten: page 3's own old version is no base, what page 1 held is
    rng = random.Random(7)
    image = bytearray(rng.randbytes(4 * PAGE))
    image[PAGE : 2 * PAGE] = bytes(range(256)) * 16
    enc = _core.PageEncoder(4, compression="zstd")
    dec = _core.PageDecoder(4)
    dec.decode(enc.encode(bytes(image)))
    moved = bytearray(image[PAGE : 2 * PAGE])
    moved[100:104] = b"NEW!"
    image[3 * PAGE : 4 * PAGE] = moved
    image[PAGE : 2 * PAGE] = rng.randbytes(PAGE)
    wire = enc.encode(bytes(image), [1, 3])
    assert enc.stats()["delta_from"] == 1
    assert len(wire) < PAGE + 200  # page 1's random bytes, and a few for page 3
    dec.decode(wire)
    assert dec.image() == bytes(image)


def test_a_large_round_on_two_threads_decodes_to_the_image_and_pages_read_back() -> None:
    # over 1 MiB of output: the encoder copies its batches into the bytes object on
    # both threads; the decoder's image and pages are written into new bytes whole
    rng = random.Random(11)
    pages = 600
    image = bytearray(rng.randbytes(pages * PAGE))
    image[: 50 * PAGE] = bytes(50 * PAGE)
    enc = _core.PageEncoder(pages, threads=2, batch_pages=64)
    dec = _core.PageDecoder(pages)
    wire = enc.encode(bytes(image))
    assert len(wire) > 1 << 20
    assert dec.decode(wire) == 10  # 600 pages in batches of 64
    assert dec.image() == bytes(image)
    want = [599, 0, 77, 77, 10]
    assert dec.pages(want) == b"".join(image[i * PAGE : (i + 1) * PAGE] for i in want)
    assert dec.pages([]) == b""
    with pytest.raises(EngineError, match="out of range"):
        dec.pages([1, 600])


@settings(max_examples=1500)
@given(st.binary(max_size=4096))
def test_decoder_fuzz_garbage_is_rejected_cleanly(data: bytes) -> None:
    dec = _core.PageDecoder(4)
    with contextlib.suppress(EngineError):
        dec.decode(data)
    assert len(dec.image()) == 4 * PAGE


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.integers(0, 40), max_size=16), st.integers(-1, 1 << 20))
def test_one_and_two_threads_decode_any_splice_of_batches_alike(
    seed: int, picks: list[int], flip: int
) -> None:
    """Batches of three rounds (deltas, references, pages moved) spliced in any order,
    repeated or left out, and a bit flipped: whatever one thread makes of it (the count,
    or the error and the batches before it applied), a decoder reading ahead on a
    helper makes the same."""
    rng = random.Random(seed)
    pages = 24
    image = bytearray(
        b"".join(rng.choice([bytes(PAGE), rng.randbytes(PAGE)]) for _ in range(pages))
    )
    enc = _core.PageEncoder(pages, batch_pages=3, delta_cache_pages=pages)
    batches = ref.batches(enc.encode(bytes(image)))
    for _ in range(2):
        touched = sorted(rng.sample(range(pages), 8))
        for i in touched:
            source = rng.randrange(pages)
            page = bytearray(image[source * PAGE : (source + 1) * PAGE])
            page[rng.randrange(PAGE)] ^= 0xFF
            image[i * PAGE : (i + 1) * PAGE] = page
        batches += ref.batches(enc.encode(bytes(image), touched))
    stream = bytearray(b"".join(batches[p % len(batches)] for p in picks))
    if stream and flip >= 0:
        stream[flip % len(stream)] ^= 1 << (flip % 8)
    outcomes = []
    for threads in (1, 2):
        dec = _core.PageDecoder(pages, threads=threads)
        try:
            result: int | str = dec.decode(bytes(stream))
        except EngineError as exc:
            result = str(exc)
        outcomes.append((result, dec.pages_written, dec.image()))
    assert outcomes[0] == outcomes[1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=24),
    st.lists(st.integers(0, 5), min_size=1, max_size=24),
    st.lists(st.integers(0, 5), max_size=12),
)
def test_announced_pages_arrive_exactly_in_any_store_order(
    guest: list[int], later: list[int], stored: list[int]
) -> None:
    """Pages are one of six contents (0 = zero); the receiver's store holds some of
    them, added in any order: whatever the encoder names by announced position or by
    hash, a fresh receiver with that store rebuilds both rounds exactly."""
    contents = [bytes(PAGE)] + [bytes([n]) * 7 + os.urandom(PAGE - 7) for n in range(1, 6)]
    store = _core.PageStore(64)
    store.add_image(b"".join(contents[n] for n in stored))
    pages = max(len(guest), len(later))
    enc, dec = _core.PageEncoder(pages, batch_pages=5), _core.PageDecoder(pages)
    enc.announce(dec.announce(store))
    for round_ in (guest, later):
        image = b"".join(contents[n] for n in round_) + bytes(PAGE * (pages - len(round_)))
        dec.decode(enc.encode(image))
        assert dec.image() == image


def test_page_store_announcement_turns_known_pages_into_references() -> None:
    base = bytearray(os.urandom(PAGE * 8)) + bytearray(PAGE * 8)
    enc1, dec1 = _core.PageEncoder(16), _core.PageDecoder(16)
    first = enc1.encode(base)
    dec1.decode(first)
    store = _core.PageStore(1024)
    assert store.add_image(dec1.image()) == 8
    assert len(store) == 8
    clone = bytearray(base)
    clone[3 * PAGE] ^= 0xFF  # one page differs in the second guest
    enc2, dec2 = _core.PageEncoder(16), _core.PageDecoder(16)
    hashes = dec2.announce(store)
    assert len(hashes) == 8 * _core.HASH_LEN
    assert enc2.announce(hashes) == 8
    second = enc2.encode(clone)
    dec2.decode(second)
    assert dec2.image() == bytes(clone)
    assert len(second) < len(first) // 4
    assert enc2.stats()["dup"] == 7
    with pytest.raises(EngineError, match="16 bytes"):
        enc2.announce(b"x" * 15)
    with pytest.raises(EngineError, match="multiple of the page size"):
        store.add_image(b"x")


def test_encode_pages_streams_pages_as_delivered() -> None:
    image = bytearray(os.urandom(PAGE * 4)) + bytearray(PAGE * 4)
    offer = [6, 2, 0, 2]
    packed = b"".join(image[i * PAGE : (i + 1) * PAGE] for i in offer)
    a, b = _core.PageEncoder(8), _core.PageEncoder(8)
    assert a.encode(image, offer) == b.encode_pages(offer, packed)
    with pytest.raises(EngineError, match="one page per index"):
        b.encode_pages(offer, packed[:PAGE])
