"""The page stream (version 5, and 4) written again from `docs/migration-wire.md` alone, as a third
party would: a reader, and a writer that makes every choice the format allows (at random)
where NovaCron's encoder makes one. Slow and plain on purpose; for tests only."""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lz4.block
import xxhash
import zstandard

if TYPE_CHECKING:
    from typing_extensions import Buffer

PAGE = 4096
ZERO = bytes(PAGE)
HEADER = struct.Struct("<4sBBH6I")  # up to the checksum
MAGIC, VERSION, OLDEST_VERSION = b"NCPB", 5, 4
(
    ZERO_K,
    UNCHANGED,
    DUP,
    DELTA,
    LZ4,
    ZSTD,
    RAW,
    ANNOUNCED,
    DELTA_FROM,
    ZERO_RUN,
    UNCHANGED_RUN,
    FILTERED,
) = range(12)
CODEC_NONE, CODEC_LZ4, CODEC_ZSTD = 0, 1, 2
RUN_OF = {ZERO_K: ZERO_RUN, UNCHANGED: UNCHANGED_RUN}  # the run record of a single's kind


class Malformed(Exception):
    """The stream breaks the spec."""


def content_hash(page: bytes) -> int:
    return xxhash.xxh3_128_intdigest(page)


def put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def put_zigzag(out: bytearray, value: int) -> None:
    put_varint(out, (value << 1) ^ (value >> 63))


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise Malformed("truncated")
        self.at += n
        return self.data[self.at - n : self.at]

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if value >> 64:
                raise Malformed("varint over 64 bits")
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise Malformed("varint too long")

    def zigzag(self) -> int:
        raw = self.varint()
        return (raw >> 1) ^ -(raw & 1)


def delta(old: bytes, new: bytes) -> bytes:
    """An XBZRLE-style delta: (skip, copy) pairs, one per run of differing bytes."""
    out, pos = bytearray(), 0
    while pos < PAGE:
        start = pos
        while pos < PAGE and old[pos] == new[pos]:
            pos += 1
        if pos == PAGE:
            break
        lit = pos
        while pos < PAGE and old[pos] != new[pos]:
            pos += 1
        put_varint(out, lit - start)
        put_varint(out, pos - lit)
        out += new[lit:pos]
    return bytes(out)


def filter_words(page: bytes, filter_byte: int, undo: bool = False) -> bytes:
    """A `filtered` record's filter (or, with `undo`, its inverse): words of 4 or 8 bytes
    (bit 4), each minus (plus) the word `distance` (bits 0-3, plus one) before it."""
    if filter_byte & 0xE0:
        raise Malformed("unknown filter")
    width = 8 if filter_byte & 0x10 else 4
    distance = (filter_byte & 0x0F) + 1
    mask = (1 << (8 * width)) - 1
    words = [int.from_bytes(page[i : i + width], "little") for i in range(0, len(page), width)]
    out = list(words)
    for k in range(distance, len(words)):
        if undo:
            out[k] = (words[k] + out[k - distance]) & mask
        else:
            out[k] = (words[k] - words[k - distance]) & mask
    return b"".join(w.to_bytes(width, "little") for w in out)


def apply_delta(page: bytes, data: bytes) -> bytes:
    out, reader, pos = bytearray(page), Reader(data), 0
    while reader.at < len(data):
        skip, copy = reader.varint(), reader.varint()
        pos += skip
        if pos + copy > PAGE:
            raise Malformed("delta runs past the page")
        out[pos : pos + copy] = reader.take(copy)
        pos += copy
    return bytes(out)


@dataclass
class Receiver:
    """What the receiver holds, kept as the spec's "Receiver state" says."""

    pages: int
    held: dict[int, bytes] = field(default_factory=dict)
    hashes: dict[int, int] = field(default_factory=dict)
    announced: list[int] = field(default_factory=list)
    pinned: dict[int, bytes] = field(default_factory=dict)
    # records read, by kind (of refused batches too)
    kinds: Counter[int] = field(default_factory=Counter)

    def announce(self, pages: Sequence[bytes]) -> bytes:
        self.announced = [content_hash(p) for p in pages]
        self.pinned = {content_hash(p): p for p in pages}
        return b"".join(h.to_bytes(16, "little") for h in self.announced)

    def copy(self) -> Receiver:
        return Receiver(
            self.pages,
            dict(self.held),
            dict(self.hashes),
            self.announced,
            self.pinned,
        )

    def resolve(self, h: int) -> bytes:
        """Any page holding content `h` now, else an announced one."""
        for index, held in self.hashes.items():
            if held == h:
                return self.held[index]
        if h in self.pinned:
            return self.pinned[h]
        raise Malformed("dup-ref to content the receiver does not hold")

    def write(self, index: int, page: bytes) -> None:
        self.held[index], self.hashes[index] = page, content_hash(page)

    def image(self) -> bytes:
        return b"".join(self.held.get(i, ZERO) for i in range(self.pages))

    def decode(self, stream: Buffer) -> int:
        """Applies every batch; a bad one raises and changes nothing."""
        stream = bytes(stream)
        count = 0
        while stream:
            stream = self.batch(stream)
            count += 1
        return count

    def batch(self, stream: bytes) -> bytes:
        if len(stream) < 40:
            raise Malformed("truncated header")
        magic, version, codec, r0, records, records_len, raw_len_b, block_len, raw_len, r1 = (
            HEADER.unpack_from(stream)
        )
        if (
            magic != MAGIC
            or not OLDEST_VERSION <= version <= VERSION
            or codec > 2
            or r0
            or r1
            or records > 65536
        ):
            raise Malformed("bad header")
        block_raw_len = raw_len_b
        if block_raw_len > PAGE * records or raw_len > PAGE * records:
            raise Malformed("sizes")
        if codec == CODEC_NONE and block_len != block_raw_len:
            raise Malformed("stored block size")
        end = 40 + records_len + block_len + raw_len
        if len(stream) < end:
            raise Malformed("truncated body")
        digest = xxhash.xxh3_64_intdigest(stream[:32] + stream[40:end])
        if digest != struct.unpack_from("<Q", stream, 32)[0]:
            raise Malformed("checksum")
        body = stream[40:end]
        records_area = Reader(body[:records_len])
        block_wire = body[records_len : records_len + block_len]
        raw = Reader(body[records_len + block_len :])
        block = Reader(self.decompress(codec, block_wire, block_raw_len))
        start = self.held  # delta-from bases: the batch's start (writes go to `state`)
        state = self.copy()
        index, position = -1, 0
        named = 0  # pages the records named so far (a run names several)
        while named < records:
            named += 1
            kind = records_area.take(1)[0]
            self.kinds[kind] += 1
            index += 1 + records_area.zigzag()
            if not 0 <= index < self.pages:
                raise Malformed("index")
            if kind in (ZERO_RUN, UNCHANGED_RUN):
                more = records_area.varint()
                if more > records - named or index + more >= self.pages:
                    raise Malformed("run")
                named += more
                for at in range(index, index + more + 1):
                    if kind == UNCHANGED_RUN and at not in state.held:
                        raise Malformed("unchanged page never had")
                    state.write(at, ZERO if kind == ZERO_RUN else state.held[at])
                index += more
                continue
            if kind == ZERO_K:
                page = ZERO
            elif kind == UNCHANGED:
                if index not in state.held:
                    raise Malformed("unchanged page never had")
                page = state.held[index]
            elif kind == DUP:
                page = state.resolve(int.from_bytes(records_area.take(16), "little"))
            elif kind == ANNOUNCED:
                position += records_area.zigzag()
                if not 0 <= position < len(self.announced):
                    raise Malformed("announced position")
                page = self.pinned[self.announced[position]]
            elif kind == DELTA:
                size = records_area.varint()
                if size > PAGE or index not in state.held:
                    raise Malformed("delta")
                page = apply_delta(state.held[index], block.take(size))
            elif kind == DELTA_FROM:
                base, size = records_area.varint(), records_area.varint()
                if base >= self.pages or base not in start or size > PAGE:
                    raise Malformed("delta-from")
                page = apply_delta(start[base], block.take(size))
            elif kind in (LZ4, ZSTD):
                if (kind, codec) not in ((LZ4, CODEC_LZ4), (ZSTD, CODEC_ZSTD)):
                    raise Malformed("record kind against the codec")
                page = block.take(PAGE)
            elif kind == FILTERED and version >= 5 and codec != CODEC_NONE:
                filter_byte = records_area.take(1)[0]
                page = filter_words(block.take(PAGE), filter_byte, undo=True)
            elif kind == RAW:
                page = raw.take(PAGE)
            else:
                raise Malformed(f"kind {kind}")
            state.write(index, page)
        if (records_area.at, block.at, raw.at) != (records_len, block_raw_len, raw_len):
            raise Malformed("left-over bytes")
        self.held, self.hashes = state.held, state.hashes
        return stream[end:]

    @staticmethod
    def decompress(codec: int, wire: bytes, size: int) -> bytes:
        try:
            if codec == CODEC_LZ4:
                out = lz4.block.decompress(wire, uncompressed_size=size) if wire else b""
            elif codec == CODEC_ZSTD and wire:
                out = zstandard.ZstdDecompressor().decompress(wire, max_output_size=size)
            else:
                out = wire
        except (lz4.block.LZ4BlockError, zstandard.ZstdError) as e:
            raise Malformed(str(e)) from e
        if len(out) != size:
            raise Malformed("block size")
        return out


class Writer:
    """Encodes rounds with every kind of record the spec allows, chosen at random: page
    indices in any order, a page written twice in a batch, dup-refs to content the
    same batch wrote, delta-from any page's content at the batch's start (itself
    included), all three codecs, any filter (version 5), empty batches. Tracks the
    receiver with [`Receiver`]."""

    def __init__(
        self,
        pages: int,
        seed: int,
        codecs: Sequence[int] = (CODEC_NONE, CODEC_LZ4, CODEC_ZSTD),
        version: int = VERSION,
    ) -> None:
        self.rng = random.Random(seed)
        self.receiver = Receiver(pages)
        self.codecs = codecs
        self.version = version

    def announce(self, hashes: bytes) -> None:
        self.receiver.announced = [
            int.from_bytes(hashes[i : i + 16], "little") for i in range(0, len(hashes), 16)
        ]

    def round(self, image: bytes, indices: Iterable[int]) -> bytes:
        order = list(indices)
        if self.rng.random() < 0.5:  # else in order: runs of consecutive pages
            self.rng.shuffle(order)
        out = bytearray()
        while order or self.rng.random() < 0.2:
            size = self.rng.randint(0, min(len(order), 40))
            out += self.batch([(i, image[i * PAGE : (i + 1) * PAGE]) for i in order[:size]])
            order = order[size:]
        return bytes(out)

    def batch(self, writes: list[tuple[int, bytes]]) -> bytes:
        rng, receiver = self.rng, self.receiver
        if writes and rng.random() < 0.3:  # an intermediate version first
            index, _ = rng.choice(writes)
            writes.insert(0, (index, rng.randbytes(PAGE)))
        codec = rng.choice(self.codecs)
        start = dict(receiver.held)
        announced = set(receiver.announced)
        records, block, raw = bytearray(), bytearray(), bytearray()
        previous, position = -1, 0
        # the last record, while later pages may join it as a run: its kind, where its
        # kind byte is, where its `more` varint goes, and its pages after the first
        run: tuple[int, int, int, int] | None = None
        for index, page in writes:
            h = content_hash(page)
            options = ["raw"] + (["block"] if codec != CODEC_NONE else [])
            if codec != CODEC_NONE and self.version >= 5:
                options.append("filtered")
            if page == ZERO:
                options.append("zero")
            if receiver.hashes.get(index) == h:
                options.append("unchanged")
            if h in receiver.hashes.values() or h in announced:
                options.append("dup")
            if h in announced:
                options.append("announced")
            # a few pages' contents at the batch's start as bases (the page itself first)
            tried = ([index] if index in start else []) + rng.sample(
                sorted(start), min(3, len(start))
            )
            bases = {b: d for b in tried if len(d := delta(start[b], page)) <= PAGE}
            if bases:
                options.append("delta_from")
            own = delta(receiver.held[index], page) if index in receiver.held else None
            if own is not None and len(own) <= PAGE:
                options.append("delta")
            choice = rng.choice(options)
            kind = {
                "raw": RAW,
                "block": LZ4 if codec == CODEC_LZ4 else ZSTD,
                "filtered": FILTERED,
                "zero": ZERO_K,
                "unchanged": UNCHANGED,
                "dup": DUP,
                "announced": ANNOUNCED,
                "delta_from": DELTA_FROM,
                "delta": DELTA,
            }[choice]
            if run and run[0] == kind and index == previous + 1 and rng.random() < 0.8:
                of, kind_at, more_at, more = run
                records[kind_at] = RUN_OF[of]
                del records[more_at:]
                put_varint(records, more + 1)
                run = (of, kind_at, more_at, more + 1)
                previous = index
                receiver.write(index, page)
                continue
            run, kind_at = None, len(records)
            records.append(kind)
            put_zigzag(records, index - previous - 1)
            previous = index
            if kind in RUN_OF:
                run = (kind, kind_at, len(records), 0)
                if rng.random() < 0.1:  # a run record naming one page (`more` 0)
                    records[kind_at] = RUN_OF[kind]
                    records.append(0)
            if kind == DUP:
                records += h.to_bytes(16, "little")
            elif kind == ANNOUNCED:
                at = receiver.announced.index(h)
                put_zigzag(records, at - position)
                position = at
            elif kind == DELTA:
                assert own is not None  # offered only then
                put_varint(records, len(own))
                block += own
            elif kind == DELTA_FROM:
                base = rng.choice(list(bases))
                d = bases[base]
                put_varint(records, base)
                put_varint(records, len(d))
                block += d
            elif kind in (LZ4, ZSTD):
                block += page
            elif kind == FILTERED:
                filter_byte = rng.randrange(0x20)
                records.append(filter_byte)
                block += filter_words(page, filter_byte)
            elif kind == RAW:
                raw += page
            receiver.write(index, page)
        return frame(
            codec, len(writes), bytes(records), bytes(block), bytes(raw), version=self.version
        )


def batches(stream: Buffer) -> list[bytes]:
    """The stream cut into its batches (sizes from the headers, nothing verified)."""
    stream = bytes(stream)
    out = []
    while stream:
        _, _, _, _, _, records_len, _, block_len, raw_len, _ = HEADER.unpack_from(stream)
        end = 40 + records_len + block_len + raw_len
        out.append(stream[:end])
        stream = stream[end:]
    return out


def frame(
    codec: int,
    records: int,
    record_area: bytes,
    block: bytes,
    raw: bytes,
    compress: bool = True,
    version: int = VERSION,
) -> bytes:
    """A batch; with `compress` false, `block` goes on the wire as it is whatever `codec`
    says (for an empty block, or a broken one)."""
    if not compress:
        wire = block
    elif codec == CODEC_LZ4:
        wire = lz4.block.compress(block, store_size=False)
    elif codec == CODEC_ZSTD:
        wire = zstandard.ZstdCompressor(level=3).compress(block)
    else:
        wire = block
    head = HEADER.pack(
        MAGIC, version, codec, 0, records, len(record_area), len(block), len(wire), len(raw), 0
    )
    body = record_area + wire + raw
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head + body)) + body
