"""``bench.block_anatomy``: a round's batches taken apart by the wire spec, and their
blocks compressed again other ways."""

from __future__ import annotations

from collections import Counter

import lz4.block
import zstandard
from bench.block_anatomy import Batch, anatomy, run, split_delta, take_apart
from bench.pagebench import dirty_pages
from bench.synth import generate
from hypothesis import given
from hypothesis import strategies as st

from novacron import _core
from tests import wire_reference as spec

PAGE = _core.PAGE_SIZE


def interleave(controls: bytes, literals: bytes) -> bytes:
    """The delta ``split_delta`` took apart, put back together."""
    reader, out, at = spec.Reader(controls), bytearray(), 0
    while reader.at < len(controls):
        start = reader.at
        reader.varint()
        copy = reader.varint()
        out += controls[start : reader.at] + literals[at : at + copy]
        at += copy
    assert at == len(literals)
    return bytes(out)


@given(
    st.binary(min_size=64, max_size=64),
    st.lists(st.tuples(st.integers(0, PAGE - 1), st.integers(0, 255)), max_size=40),
)
def test_a_delta_split_into_its_varints_and_literals_loses_nothing(
    line: bytes, changes: list[tuple[int, int]]
) -> None:
    old = line * (PAGE // len(line))
    new = bytearray(old)
    for at, value in changes:
        new[at] = value
    delta = spec.delta(old, bytes(new))
    controls, literals = split_delta(delta)
    assert interleave(controls, literals) == delta
    # (the reference delta has a literal run for each run of changed bytes, and no more)
    assert literals == bytes(b for a, b in zip(old, new, strict=True) if a != b)


def later_round(compression: str = "lz4") -> tuple[bytes, list[int]]:
    """Round 1 of a small synthetic guest, as the engine encodes it, and its pages."""
    first, second = generate(4, 2, seed=7)
    guest = len(first) // PAGE
    encoder = _core.PageEncoder(guest, compression=compression, delta_cache_pages=guest)
    scan = _core.scan_pages(first)
    encoder.encode(first, None, scan)
    bitmap = _core.scan_pages(second).dirty_since(scan.hashes)
    indices = dirty_pages(bitmap, guest)
    return bytes(encoder.encode(second, indices)), indices


def test_a_batch_taken_apart_accounts_for_every_byte_of_its_block() -> None:
    wire, indices = later_round()
    batches = [take_apart(b) for b in spec.batches(wire)]
    assert sum(b.wire_bytes for b in batches) == len(wire)
    for b, raw in zip(batches, spec.batches(wire), strict=True):
        header = spec.HEADER.unpack_from(raw)
        assert b.block_wire_bytes == header[7] and len(b.block) == header[6]
        assert len(b.pages) == PAGE * b.records["lz4"]
        # the block is the compressed pages and the deltas' varints and literals, nothing else
        assert len(b.pages) + len(b.controls) + len(b.literals) == len(b.block)
        assert b.fixed_bytes == 40 + header[5] + header[8]  # header, records, raw area
    records: Counter[str] = Counter()
    for b in batches:
        records.update(b.records)
    assert records["delta"] > 0 and records["lz4"] > 0  # (the mix has both)
    assert sum(records.values()) <= len(indices)  # a run record names several pages


def test_the_engines_block_is_given_as_it_went_and_the_others_as_they_would() -> None:
    wire, _ = later_round()
    batches = [take_apart(b) for b in spec.batches(wire)]
    zstd1 = 100_000
    figures = anatomy(batches, zstd1)
    fixed = sum(b.fixed_bytes for b in batches)
    assert fixed + figures["blocks"]["engine"] == len(wire) == figures["wire_bytes"]
    assert figures["blocks"]["lz4"] == sum(
        len(lz4.block.compress(b.block, store_size=False)) for b in batches
    )
    assert figures["blocks"]["zstd3"] == sum(
        len(zstandard.ZstdCompressor(level=3).compress(b.block)) for b in batches
    )
    assert figures["blocks"]["lz4_hc12"] <= figures["blocks"]["lz4"]
    assert figures["block_room_bytes"] == zstd1 // 2 - fixed
    assert figures["ratios"]["engine"] == round(len(wire) / zstd1, 4)
    block = figures["block"]
    assert block["raw_bytes"] == sum(len(b.block) for b in batches)
    assert block["raw_bytes"] == (
        block["page_bytes"] + block["delta_control_bytes"] + block["delta_literal_bytes"]
    )


def test_a_batch_of_pages_alone_has_no_deltas_to_split() -> None:
    batch = Batch(wire_bytes=100, block_wire_bytes=60, block=b"x" * PAGE, pages=b"x" * PAGE)
    figures = anatomy([batch], 1000)
    assert figures["blocks"]["lz4_split"] == figures["blocks"]["lz4"]
    assert figures["block"]["delta_control_bytes"] == 0


def test_every_later_round_is_taken_apart_with_either_codec() -> None:
    images = generate(4, 3, seed=3)
    for compression in ("lz4", "zstd"):
        rounds = run(images, compression)
        assert [r["round"] for r in rounds] == [1, 2]
        for r in rounds:
            assert r["pages"] > 0
            assert r["fixed_bytes"] + r["blocks"]["engine"] == r["wire_bytes"]
            assert r["records"].get(compression, 0) * PAGE == r["block"]["page_bytes"]
