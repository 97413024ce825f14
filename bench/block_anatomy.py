"""What a later round's batches are made of, and what their blocks would take compressed
otherwise (the figures of session 69 in ``docs/benchmarks-page-engine.md``).

    python -m bench.block_anatomy IMAGE IMAGE [IMAGE ...] [--compression lz4|zstd] [--json]
    python -m bench.block_anatomy --synthetic [--mib 256] [--rounds 4] [--json]

The rounds are ``bench.pagebench``'s (round k offers the pages the engine's scan finds
changed since image k-1; one thread; the sender's delta cache holds the whole guest).
Each later round's output is taken apart by the wire spec (``docs/migration-wire.md``):
per batch its header and record section, its block decompressed (compressed pages, and
the delta and delta-from payloads, in record order) and its raw area. Then every block
is compressed again: with lz4's fast mode (the engine's codec), liblz4's hash-chain
levels 3, 9 and 12, zstd levels 1 to 3, and laid out another way (every compressed page,
then every delta's ``(skip, copy)`` varints, then every delta's literals) with lz4 and
zstd-1. Each way is given as the round's wire bytes it would make (headers, record
sections and raw areas as they are) and their ratio to zstd-1 alone over the offered
pages, the issue's later-round target being at most 0.5. Nothing is timed.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.block
import zstandard

if not __package__:  # run as `python bench/block_anatomy.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import wire_reference as spec

from bench.pagebench import (
    Image,
    check_images,
    dirty_pages,
    image_arguments,
    load,
    offered_bytes,
)
from bench.synth import generate
from novacron import _core

PAGE = _core.PAGE_SIZE
KIND_NAMES = {
    spec.ZERO_K: "zero",
    spec.UNCHANGED: "unchanged",
    spec.DUP: "dup-ref",
    spec.DELTA: "delta",
    spec.LZ4: "lz4",
    spec.ZSTD: "zstd",
    spec.RAW: "raw",
    spec.ANNOUNCED: "announced-ref",
    spec.DELTA_FROM: "delta-from",
    spec.ZERO_RUN: "zero-run",
    spec.UNCHANGED_RUN: "unchanged-run",
}


@dataclass
class Batch:
    """One batch taken apart: what the codec compressed, and the rest as it is."""

    wire_bytes: int  # the whole batch
    block_wire_bytes: int  # its block as the engine compressed it
    block: bytes  # decompressed: the payloads in record order
    pages: bytes = b""  # the compressed pages' bytes, in order
    controls: bytes = b""  # the deltas' (skip, copy) varints, in order
    literals: bytes = b""  # the deltas' literal bytes, in order
    records: Counter[str] = field(default_factory=Counter)

    @property
    def fixed_bytes(self) -> int:
        """Header, record section and raw area: what no block codec changes."""
        return self.wire_bytes - self.block_wire_bytes


def split_delta(payload: bytes) -> tuple[bytes, bytes]:
    """A delta's ``(skip, copy)`` varints and its literals, each run together."""
    reader = spec.Reader(payload)
    controls, literals = bytearray(), bytearray()
    while reader.at < len(payload):
        start = reader.at
        reader.varint()
        copy = reader.varint()
        controls += payload[start : reader.at]
        literals += reader.take(copy)
    return bytes(controls), bytes(literals)


def take_apart(batch: bytes) -> Batch:
    """A batch's parts, by ``docs/migration-wire.md`` (a well-formed batch: the engine's)."""
    _, _, codec, _, records, records_len, block_raw_len, block_len, _, _ = spec.HEADER.unpack_from(
        batch
    )
    body = batch[40:]
    block = spec.Receiver.decompress(
        codec, body[records_len : records_len + block_len], block_raw_len
    )
    reader, payloads = spec.Reader(body[:records_len]), spec.Reader(block)
    pages, controls, literals = bytearray(), bytearray(), bytearray()
    kinds: Counter[str] = Counter()
    named = 0
    while named < records:
        kind = reader.take(1)[0]
        kinds[KIND_NAMES[kind]] += 1
        reader.zigzag()
        named += 1
        if kind in (spec.ZERO_RUN, spec.UNCHANGED_RUN):
            named += reader.varint()
        elif kind == spec.DUP:
            reader.take(16)
        elif kind == spec.ANNOUNCED:
            reader.zigzag()
        elif kind in (spec.DELTA, spec.DELTA_FROM):
            if kind == spec.DELTA_FROM:
                reader.varint()  # the base
            control, literal = split_delta(payloads.take(reader.varint()))
            controls += control
            literals += literal
        elif kind in (spec.LZ4, spec.ZSTD):
            pages += payloads.take(PAGE)
    return Batch(
        len(batch), block_len, block, bytes(pages), bytes(controls), bytes(literals), kinds
    )


def lz4_fast(data: bytes) -> int:
    return len(lz4.block.compress(data, store_size=False)) if data else 0


def lz4_hc(level: int) -> Callable[[bytes], int]:
    def size(data: bytes) -> int:
        if not data:
            return 0
        out = lz4.block.compress(data, mode="high_compression", compression=level, store_size=False)
        return len(out)

    return size


def zstd(level: int) -> Callable[[bytes], int]:
    compressor = zstandard.ZstdCompressor(level=level)
    return lambda data: len(compressor.compress(data)) if data else 0


# the ways a block is compressed again: name -> bytes of one block laid out as it was
AS_LAID_OUT: dict[str, Callable[[bytes], int]] = {
    "lz4": lz4_fast,
    "lz4_hc3": lz4_hc(3),
    "lz4_hc9": lz4_hc(9),
    "lz4_hc12": lz4_hc(12),
    "zstd1": zstd(1),
    "zstd2": zstd(2),
    "zstd3": zstd(3),
}
# and laid out as pages, then the deltas' varints, then their literals
SPLIT: dict[str, Callable[[bytes], int]] = {"lz4_split": lz4_fast, "zstd1_split": zstd(1)}


def anatomy(batches: Sequence[Batch], zstd1_bytes: int) -> dict[str, Any]:
    """One round's figures from its batches (``zstd1_bytes``: zstd-1 over its pages)."""
    fixed = sum(b.fixed_bytes for b in batches)
    blocks: dict[str, int] = {"engine": sum(b.block_wire_bytes for b in batches)}
    for name, size in AS_LAID_OUT.items():
        blocks[name] = sum(size(b.block) for b in batches)
    for name, size in SPLIT.items():
        blocks[name] = sum(size(b.pages + b.controls + b.literals) for b in batches)
    records: Counter[str] = Counter()
    for b in batches:
        records.update(b.records)
    return {
        "wire_bytes": sum(b.wire_bytes for b in batches),
        "zstd1_bytes": zstd1_bytes,
        "fixed_bytes": fixed,
        "block_room_bytes": zstd1_bytes // 2 - fixed,  # what the blocks may take at 0.5
        "records": dict(sorted(records.items())),
        "block": {
            "raw_bytes": sum(len(b.block) for b in batches),
            "page_bytes": sum(len(b.pages) for b in batches),
            "delta_control_bytes": sum(len(b.controls) for b in batches),
            "delta_literal_bytes": sum(len(b.literals) for b in batches),
        },
        "blocks": blocks,
        "ratios": {name: round((fixed + n) / zstd1_bytes, 4) for name, n in blocks.items()},
    }


def run(images: Sequence[Image], compression: str) -> list[dict[str, Any]]:
    """Every later round's anatomy (round 0 is encoded, not taken apart)."""
    first = load(images[0])
    guest = len(first) // PAGE
    encoder = _core.PageEncoder(guest, compression=compression, delta_cache_pages=guest)
    previous = _core.scan_pages(first)
    encoder.encode(first, None, previous)
    del first
    out = []
    for n, source in enumerate(images[1:], 1):
        image = load(source)
        if len(image) != guest * PAGE:
            raise SystemExit(f"round {n}: the image is not the first one's size")
        scan = _core.scan_pages(image)
        bitmap = scan.dirty_since(previous.hashes)
        indices = dirty_pages(bitmap, guest)
        wire = bytes(encoder.encode(image, indices, scan))
        zstd1_bytes = len(zstandard.ZstdCompressor(level=1).compress(offered_bytes(image, indices)))
        batches = [take_apart(b) for b in spec.batches(wire)]
        out.append({"round": n, "pages": len(indices), **anatomy(batches, zstd1_bytes)})
        previous = scan
    return out


def main() -> None:
    parser = image_arguments(__doc__, ["lz4", "zstd"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    images: list[Image]
    if args.synthetic:
        images = list(generate(args.mib, args.rounds, seed=1))
    elif len(args.images) >= 2:
        check_images(parser, args.images)
        images = list(args.images)
    else:
        parser.error("give two IMAGEs or more, or --synthetic")
    rounds = run(images, args.compression)
    if args.json:
        print(json.dumps({"compression": args.compression, "rounds": rounds}, indent=2))
        return
    for r in rounds:
        print(
            f"round {r['round']}: {r['pages']} pages offered, {r['wire_bytes']:,} wire bytes "
            f"against zstd-1's {r['zstd1_bytes']:,} (headers, records and raw areas "
            f"{r['fixed_bytes']:,}; the blocks may take {r['block_room_bytes']:,} at 0.5)"
        )
        print("  records: " + ", ".join(f"{k} {v}" for k, v in r["records"].items()))
        print("  block: " + ", ".join(f"{k} {v:,}" for k, v in r["block"].items()))
        for name, size in r["blocks"].items():
            print(f"  {name:<12} block {size:>9,}   wire / zstd-1 {r['ratios'][name]:.4f}")


if __name__ == "__main__":
    main()
