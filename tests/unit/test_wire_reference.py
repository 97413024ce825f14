"""The page stream against its spec: `tests/wire_reference.py` is version 5 written again
from `docs/migration-wire.md` alone. It must read every stream NovaCron's encoder writes,
and NovaCron's decoder every stream it writes, with every choice the spec allows."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novacron import _core
from novacron.errors import EngineError
from tests import wire_reference as ref

PAGE = ref.PAGE
GUEST = 12

# each round: pages changed as (page, what, where), what: 0 zero, 1 random, 2 a copy of
# page 0, 3 a few bytes changed, 4 text, 5 the next page's content moved here with a few
# bytes changed and the next page rewritten, 6 a table of 8-byte words growing by a step
change = st.tuples(st.integers(0, GUEST - 1), st.integers(0, 6), st.integers(0, PAGE - 8))
rounds = st.lists(st.lists(change, max_size=8), min_size=1, max_size=4)


def changed(image: bytearray, page: int, what: int, at: int, rng: random.Random) -> set[int]:
    where = slice(page * PAGE, (page + 1) * PAGE)
    if what == 5:
        other = (page + 1) % GUEST
        image[where] = image[other * PAGE : (other + 1) * PAGE]
        image[page * PAGE + at : page * PAGE + at + 8] = rng.randbytes(8)
        image[other * PAGE : (other + 1) * PAGE] = rng.randbytes(PAGE)
        return {page, other}
    if what == 0:
        image[where] = bytes(PAGE)
    elif what == 1:
        image[where] = rng.randbytes(PAGE)
    elif what == 2:
        image[where] = image[:PAGE]
    elif what == 3:
        image[page * PAGE + at : page * PAGE + at + 8] = rng.randbytes(8)
    elif what == 6:
        start = rng.getrandbits(64)
        image[where] = b"".join(
            ((start + k * (at + 1) * 8) % (1 << 64)).to_bytes(8, "little") for k in range(PAGE // 8)
        )
    else:
        image[where] = (b"text %d of page %d " % (at, page) * 300)[:PAGE]
    return {page}


def half_random(rng: random.Random) -> bytearray:
    """A guest whose first half is random pages, the rest zero."""
    return bytearray(rng.randbytes(GUEST * PAGE // 2) + bytes(GUEST * PAGE // 2))


def store_of(pages: list[bytes]) -> _core.PageStore:
    store = _core.PageStore(64)
    store.add_image(b"".join(pages))
    return store


@settings(max_examples=80, deadline=None)
@given(rounds, st.sampled_from(["lz4", "zstd", "none"]), st.sampled_from([0, 16]), st.integers())
def test_the_spec_reads_every_stream_the_encoder_writes(
    plan: list[list[tuple[int, int, int]]], compression: str, cache: int, seed: int
) -> None:
    rng = random.Random(seed)
    image = half_random(rng)
    known = [bytes(image[:PAGE]), (b"text 0 of page 3 " * 300)[:PAGE]]
    enc = _core.PageEncoder(GUEST, compression=compression, delta_cache_pages=cache, batch_pages=5)
    receiver = ref.Receiver(GUEST)
    enc.announce(receiver.announce(known))
    for n, changes in enumerate(plan):
        touched: set[int] = set()
        for page, what, at in changes:
            touched |= changed(image, page, what, at, rng)
        receiver.decode(enc.encode(bytes(image), None if n == 0 else sorted(touched)))
        assert receiver.image() == bytes(image)


@settings(max_examples=80, deadline=None)
@given(rounds, st.integers(), st.booleans(), st.sampled_from([4, 5]))
def test_the_decoder_reads_every_choice_the_spec_allows(
    plan: list[list[tuple[int, int, int]]], seed: int, announce: bool, version: int
) -> None:
    rng = random.Random(seed)
    image = half_random(rng)
    writer = ref.Writer(GUEST, seed, version=version)
    dec, check = _core.PageDecoder(GUEST), ref.Receiver(GUEST)
    if announce:
        known = [bytes(image[:PAGE]), bytes(image[PAGE : 2 * PAGE]), bytes(PAGE)]
        writer.announce(dec.announce(store_of(known)))
        check.announce(known)
    for n, changes in enumerate(plan):
        touched = set(range(GUEST)) if n == 0 else set()
        for page, what, at in changes:
            touched |= changed(image, page, what, at, rng)
        wire = writer.round(bytes(image), touched)
        dec.decode(wire)
        check.decode(wire)
        assert writer.receiver.image() == bytes(image)
        assert dec.image() == bytes(image) == check.image()


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_the_spec_reads_the_encoders_delta_from_records(compression: str) -> None:
    rng = random.Random(3)
    # pages 2 and 4 move to pages 1 and 3 (random before), which are rewritten
    text = [(b"struct %d of kind %d " % (n, k) * 300)[:PAGE] for n, k in ((1, 2), (3, 4))]
    image = bytearray(rng.randbytes(2 * PAGE) + text[0] + rng.randbytes(PAGE) + text[1])
    enc, spec = _core.PageEncoder(GUEST, compression=compression), ref.Receiver(GUEST)
    image += bytes(GUEST * PAGE - len(image))
    spec.decode(enc.encode(bytes(image)))
    touched = changed(image, 1, 5, 100, rng) | changed(image, 3, 5, 200, rng)
    spec.decode(enc.encode(bytes(image), sorted(touched)))
    assert enc.stats()["delta_from"] == 2
    assert spec.image() == bytes(image)


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_the_spec_reads_the_encoders_filtered_records(compression: str) -> None:
    rng = random.Random(4)
    image = bytearray(GUEST * PAGE)
    for page in range(0, GUEST, 2):
        changed(image, page, 6, 511, rng)  # words growing by 4096: a page table's
    for wire_version, filtered in ((_core.WIRE_VERSION, GUEST // 2), (4, 0)):
        enc, spec = (
            _core.PageEncoder(GUEST, compression=compression, wire_version=wire_version),
            (ref.Receiver(GUEST)),
        )
        spec.decode(enc.encode(bytes(image)))
        assert enc.stats()["filtered"] == filtered
        assert spec.kinds[ref.FILTERED] == filtered
        assert spec.image() == bytes(image)
    with pytest.raises(ValueError, match="wire_version"):
        _core.PageEncoder(GUEST, wire_version=_core.WIRE_VERSION + 1)


def batch(
    codec: int,
    records: list[tuple[int, int, bytes]],
    block: bytes = b"",
    compress: bool = True,
    pages: int | None = None,
) -> bytes:
    """A batch of `(kind, index step, extra record bytes)`, the raw area from the pages;
    `pages`: the header's count of pages named (default: one per record)."""
    area, raw = bytearray(), bytearray()
    for kind, step, extra in records:
        area.append(kind)
        ref.put_zigzag(area, step)
        area += extra
        if kind == ref.RAW:
            raw += os.urandom(PAGE)
    count = len(records) if pages is None else pages
    return ref.frame(codec, count, bytes(area), block, bytes(raw), compress)


def varints(*values: int) -> bytes:
    out = bytearray()
    for v in values:
        ref.put_varint(out, v)
    return bytes(out)


@pytest.mark.parametrize("codec", [ref.CODEC_NONE, ref.CODEC_LZ4, ref.CODEC_ZSTD])
def test_a_page_first_written_in_a_batch_may_take_a_delta_later_in_it(codec: int) -> None:
    # page 2 never had a version before this batch: a raw record writes it, then a delta
    # changes what the raw record wrote
    d = varints(10, 4) + b"abcd"  # bytes 10..14 of whatever the page holds
    stream = batch(codec, [(ref.RAW, 2, b""), (ref.DELTA, -1, varints(len(d)))], d)
    spec, dec = ref.Receiver(4), _core.PageDecoder(4)
    spec.decode(stream)
    dec.decode(stream)
    assert dec.image() == spec.image()
    assert dec.image()[2 * PAGE + 10 : 2 * PAGE + 14] == b"abcd"


@pytest.mark.parametrize("codec", [ref.CODEC_LZ4, ref.CODEC_ZSTD])
@pytest.mark.parametrize("wire", ["compressed", "absent"])
def test_an_empty_block_of_either_codec_is_read(codec: int, wire: str) -> None:
    # "absent": block_len 0, no compressed form of nothing at all
    stream = batch(codec, [(ref.ZERO_K, 0, b""), (ref.RAW, 0, b"")], compress=wire != "absent")
    dec = _core.PageDecoder(2)
    assert dec.decode(stream) == 1
    assert dec.image()[:PAGE] == bytes(PAGE)


def test_a_delta_for_a_page_the_receiver_never_had_is_refused_by_both() -> None:
    d = varints(10, 4) + b"abcd"
    stream = batch(ref.CODEC_NONE, [(ref.DELTA, 1, varints(len(d)))], d)
    with pytest.raises(ref.Malformed):
        ref.Receiver(4).decode(stream)
    with pytest.raises(EngineError, match="never had"):
        _core.PageDecoder(4).decode(stream)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(),
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0), st.integers(0, 255)), min_size=1, max_size=6
    ),
    st.integers(-1, 1),
)
def test_the_decoder_and_the_spec_agree_on_hostile_batches(
    seed: int, edits: list[tuple[int, int, int]], records_delta: int
) -> None:
    """A valid stored batch with a few bytes of its records, block or raw area changed and
    its checksum made right again (its record count off by one, sometimes): the engine
    and the spec accept or refuse it alike, and hold the same pages after it."""
    rng = random.Random(seed)
    image = half_random(rng)
    writer = ref.Writer(GUEST, seed, codecs=(ref.CODEC_NONE,))
    first = writer.round(bytes(image), range(GUEST))
    for page in rng.sample(range(GUEST), 4):
        changed(image, page, rng.randrange(6), rng.randrange(PAGE - 8), rng)
    batches = [b for b in ref.batches(writer.round(bytes(image), range(GUEST))) if len(b) > 40]
    victim = rng.randrange(len(batches))
    records, records_len, _, block_len = ref.HEADER.unpack_from(batches[victim])[4:8]
    body = batches[victim][40:]
    areas = [
        bytearray(body[:records_len]),
        bytearray(body[records_len : records_len + block_len]),
        bytearray(body[records_len + block_len :]),
    ]
    for area, at, value in edits:
        if areas[area]:
            areas[area][at % len(areas[area])] = value
    record_area, block, raw = map(bytes, areas)
    count = max(0, records + records_delta)
    mutated = ref.frame(ref.CODEC_NONE, count, record_area, block, raw, compress=False)
    dec, spec = _core.PageDecoder(GUEST), ref.Receiver(GUEST)
    for reader in (dec, spec):
        reader.decode(first + b"".join(batches[:victim]))
    engine_error = spec_error = None
    try:
        dec.decode(mutated)
    except EngineError as e:
        engine_error = e
    try:
        spec.decode(mutated)
    except ref.Malformed as e:
        spec_error = e
    assert (engine_error is None) == (spec_error is None), (engine_error, spec_error)
    assert dec.image() == spec.image()


def test_run_records_are_read_alike_and_may_not_name_more_pages_than_the_batch_or_guest() -> None:
    six_raw = batch(ref.CODEC_NONE, [(ref.RAW, 0, b"")] * 6)
    # pages 1..=3 zero (page 1: a step of 1; 2 more), pages 4..=5 unchanged (1 more)
    runs = batch(
        ref.CODEC_NONE,
        [(ref.ZERO_RUN, 1, varints(2)), (ref.UNCHANGED_RUN, 0, varints(1))],
        pages=5,
    )
    spec, dec = ref.Receiver(6), _core.PageDecoder(6)
    for reader in (spec, dec):
        reader.decode(six_raw + runs)
    image = dec.image()
    assert image == spec.image()
    assert image[PAGE : 4 * PAGE] == bytes(3 * PAGE)
    assert image[:PAGE] != bytes(PAGE) and image[4 * PAGE :].count(0) < PAGE
    for bad, why in [
        (batch(ref.CODEC_NONE, [(ref.ZERO_RUN, 0, varints(2))], pages=2), "run longer"),
        (batch(ref.CODEC_NONE, [(ref.ZERO_RUN, 4, varints(2))], pages=3), "out of range"),
        (batch(ref.CODEC_NONE, [(ref.UNCHANGED_RUN, 0, varints(1))], pages=2), "never had"),
    ]:
        spec, dec = ref.Receiver(6), _core.PageDecoder(6)
        with pytest.raises(ref.Malformed):
            spec.decode(bad)
        with pytest.raises(EngineError, match=why):
            dec.decode(bad)
        assert dec.image() == bytes(6 * PAGE)


def test_the_reference_writer_writes_runs() -> None:
    """(So that the round-trip property above reads them: pages in order, some zero.)"""
    image = bytes(half_random(random.Random(1)))
    spec = ref.Receiver(GUEST)
    for seed in range(10):
        writer, dec = ref.Writer(GUEST, seed), _core.PageDecoder(GUEST)
        for _ in range(3):
            wire = writer.round(image, range(GUEST))
            dec.decode(wire)
            spec.decode(wire)
        assert dec.image() == image == spec.image()
    assert spec.kinds[ref.ZERO_RUN] > 0 and spec.kinds[ref.UNCHANGED_RUN] > 0, spec.kinds
    assert spec.kinds[ref.FILTERED] > 0, spec.kinds
