"""Both ends of the migration data path on streams built to QEMU's layout."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
import xxhash
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from novacron.errors import EngineError
from novacron.migration import frames
from novacron.migration.stream import (
    DigestMismatch,
    StreamReceiver,
    StreamSender,
    guest_page_limit,
)
from tests import wire_reference
from tests.qemu_stream_builder import PAGE, StreamBuilder


def iterations(rounds: int, seed: int, incompressible: bool = False) -> tuple[bytes, int]:
    """A precopy of 64 pages dirtied over several iterations (pages resent, zeros);
    ``incompressible``: page contents are random bytes."""
    rng = random.Random(seed)
    b = StreamBuilder().header().ram_setup([(b"pc.ram", 64 * PAGE), (b"vga.vram", 4 * PAGE)])
    pages = 0
    for _ in range(rounds):
        b.part()
        for _ in range(rng.randrange(1, 40)):
            n = rng.randrange(64)
            kind = rng.random()
            if kind < 0.2:
                b.zero(b"pc.ram", n)
            else:
                fill = bytes([rng.randrange(256)]) * 16
                data = (fill + bytes(rng.randrange(4) for _ in range(16))) * (PAGE // 32)
                if incompressible:
                    data = rng.randbytes(PAGE)
                b.page(b"pc.ram", n, data)
                pages += 1
        b.page(b"vga.vram", rng.randrange(4), bytes(PAGE))
        pages += 1
        b.eos()
    b.device_and_eof()
    return bytes(b.out), pages


def sent(
    stream: bytes, chunk: int, batch_pages: int = 8, threads: int = 1, **sender_args: Any
) -> tuple[list[frames.Frame], StreamSender]:
    """The frames a sender makes of ``stream`` fed ``chunk`` bytes at a time."""
    sender = StreamSender(batch_pages=batch_pages, threads=threads, **sender_args)
    wire = []
    for at in range(0, len(stream), chunk):
        wire += sender.feed(stream[at : at + chunk])
    wire += sender.finish()
    return list(frames.FrameDecoder().feed(b"".join(wire))), sender


def carry(
    stream: bytes, chunk: int, batch_pages: int = 8, threads: int = 1
) -> tuple[bytes, StreamSender]:
    wire, sender = sent(stream, chunk, batch_pages, threads)
    receiver = StreamReceiver(threads=threads)
    out = bytearray()
    for f in wire:
        out += receiver.apply(f)
    assert receiver.ended
    return bytes(out), sender


@given(st.integers(1, 6), st.integers(0, 1000), st.sampled_from([1, 100, 4096, 70000]))
def test_any_precopy_arrives_byte_exact(rounds: int, seed: int, chunk: int) -> None:
    stream, pages = iterations(rounds, seed)
    rebuilt, sender = carry(stream, chunk)
    assert rebuilt == stream
    assert sender.split_stats["pages"] == pages
    assert sender.length == len(stream)


@given(st.integers(1, 6), st.integers(0, 1000))
def test_a_precopy_through_engines_on_two_threads_arrives_byte_exact(
    rounds: int, seed: int
) -> None:
    # a frame's batch is encoded as one per thread, and its batches read on both
    stream, pages = iterations(rounds, seed)
    rebuilt, sender = carry(stream, 4096, batch_pages=32, threads=2)
    assert rebuilt == stream
    assert sender.split_stats["pages"] == pages


def test_engine_threads_outside_1_to_1024_are_refused() -> None:
    with pytest.raises(EngineError, match="threads"):
        StreamReceiver(threads=0)
    with pytest.raises(EngineError, match="threads"):
        StreamSender(threads=1025)


@given(st.integers(1, 20_000), st.integers(1, 16), st.integers(0, 2**32))
def test_a_feed_said_not_to_encode_never_encodes(chunk: int, batch_pages: int, seed: int) -> None:
    """``may_encode`` is what the relay asks before it hands a read to a worker thread:
    a read it says no to encodes nothing (while no page index repeats), so running it
    on the event loop costs only the split."""
    rng = random.Random(seed)
    pages = 2 * batch_pages + 1  # more than a batch (and small: tiny chunks feed long)
    b = StreamBuilder().header().ram_setup([(b"pc.ram", pages * PAGE)])
    b.part()
    for n in range(pages):  # every index once: no batch closes early
        b.page(b"pc.ram", n, bytes([rng.randrange(256)]) * PAGE)
    b.eos()
    stream = bytes(b.out)
    sender = StreamSender(batch_pages=batch_pages)
    decoder = frames.FrameDecoder()
    said = []
    for at in range(0, len(stream), chunk):
        data = stream[at : at + chunk]
        may = sender.may_encode(len(data))
        kinds = {f.kind for f in decoder.feed(b"".join(sender.feed(data)))}
        said.append(may)
        if not may:
            assert not kinds & frames.PAGE_FRAMES
    if len(stream) >= (batch_pages + 1) * (PAGE + 64):
        assert any(said)  # a full batch was fed at some point


@given(st.integers(1, 6), st.integers(0, 1000))
def test_released_bytes_are_lent_read_only_and_never_reused_while_held(
    rounds: int, seed: int
) -> None:
    """The receiver lends what it releases without a copy, and rebuilds later releases
    in buffers earlier ones gave back: a release still held must keep its bytes."""
    stream, _ = iterations(rounds, seed)
    wire, _ = sent(stream, 4096)
    receiver = StreamReceiver()
    held: list[memoryview | bytes] = []
    for f in wire:
        released = receiver.apply(f)
        assert isinstance(released, memoryview) and released.readonly
        held.append(released)
        if len(held) % 3 == 0:
            held[-1] = bytes(held[-1])  # some let go at once: their buffers get reused
    assert receiver.ended and b"".join(held) == stream
    with pytest.raises(TypeError):
        next(v for v in held if isinstance(v, memoryview) and len(v))[0] = 0


def test_pages_cost_less_than_their_bytes() -> None:
    stream, _pages = iterations(6, 7)
    _, sender = carry(stream, 65536, batch_pages=1024)
    assert sender.wire_bytes < len(stream) / 4


def test_tampering_is_caught() -> None:
    stream, _ = iterations(3, 1)
    sender = StreamSender()
    wire = frames.FrameDecoder().feed(b"".join(sender.feed(stream) + sender.finish()))
    # a changed verbatim byte: the digest catches it
    tampered = [
        frames.Frame(f.kind, b"X" + f.payload[1:]) if f.kind == frames.VERBATIM else f for f in wire
    ]
    receiver = StreamReceiver()
    released = bytearray()
    with pytest.raises(DigestMismatch):
        for f in tampered:
            released += receiver.apply(f)
    assert stream.startswith(bytes(released)), "nothing unverified was released to QEMU"
    # a flipped bit in a page batch: the engine's checksum catches it
    flipped = []
    for f in wire:
        if f.kind in frames.PAGE_FRAMES:
            payload = bytearray(f.payload)
            payload[-20] ^= 1
            f = frames.Frame(f.kind, bytes(payload))
        flipped.append(f)
    receiver = StreamReceiver()
    with pytest.raises((EngineError, DigestMismatch)):
        for f in flipped:
            receiver.apply(f)
    receiver = StreamReceiver()
    with pytest.raises(frames.FrameError, match="aborted"):
        receiver.apply(frames.Frame(frames.ABORT, b"cancelled"))


def test_pages_held_for_announce_are_released_one_checked_batch_at_a_time() -> None:
    """Regression: a source that held many batches while waiting for ANNOUNCE sent them
    under one CHECK, and a receiver (rightly) refused that much unvouched stream."""
    stream, _ = iterations(40, 3, incompressible=True)
    sender = StreamSender(batch_pages=8, wait_for_announce=True)
    batch_bytes = 8 * (PAGE + 64)
    receiver = StreamReceiver(max_unchecked=2 * batch_bytes)
    decoder = frames.FrameDecoder()
    out = bytearray()
    held = []
    for at in range(0, len(stream), 4096):
        held += sender.feed(stream[at : at + 4096])
    assert sum(f[0] in frames.PAGE_FRAMES for f in held) == 0  # all pages held back
    wire = held + sender.announce(b"") + sender.finish()
    frames_seen = list(decoder.feed(b"".join(wire)))
    assert sum(f.kind in frames.PAGE_FRAMES for f in frames_seen) > 10
    for f in frames_seen:
        out += receiver.apply(f)
    assert receiver.ended and bytes(out) == stream


def test_a_stream_claiming_a_larger_guest_than_allowed_is_refused() -> None:
    """A START's guest size sets up per-page state: the destination bounds it by the
    guest it expects (a fuzzer found a START of 2.5 G pages asking for 40 GB at once)."""
    stream, _ = iterations(2, 5)  # 64 + 4 pages of RAM blocks
    wire = list(
        frames.FrameDecoder().feed(b"".join((s := StreamSender()).feed(stream) + s.finish()))
    )
    for limit, taken in [(68, True), (67, False)]:
        receiver = StreamReceiver(max_pages=limit)
        out = bytearray()
        if taken:
            for f in wire:
                out += receiver.apply(f)
            assert receiver.ended and bytes(out) == stream
        else:
            with pytest.raises(frames.FrameError, match="68 pages is not accepted here"):
                for f in wire:
                    out += receiver.apply(f)
            assert bytes(out) == b"", "nothing was released"
    huge = frames.Frame(frames.START, (0x9898_9898).to_bytes(8, "big"))
    with pytest.raises(frames.FrameError, match="not accepted here"):
        StreamReceiver().apply(huge)  # by default: more than this host's memory
    with pytest.raises(EngineError, match="max_pages"):
        StreamReceiver(max_pages=0)


@pytest.mark.parametrize(
    ("memory_mib", "pages"),
    [(16, (16 + 1024) * 256), (4096, (4096 + 1024) * 256), (65536, (65536 + 16384) * 256)],
)
def test_the_guest_page_limit_leaves_room_for_qemus_other_ram_blocks(
    memory_mib: int, pages: int
) -> None:
    assert guest_page_limit(memory_mib) == pages


def read_as_the_spec_says(wire: list[frames.Frame]) -> tuple[bytes, set[int]]:
    """The stream the frames stand for, read as ``docs/migration-wire.md`` describes the
    channel (the batches by ``tests/wire_reference.py``, the page stream written again
    from that page); returns it and the frame types seen."""
    out = bytearray()
    receiver: wire_reference.Receiver | None = None
    kinds = set()
    for f in wire:
        kinds.add(f.kind)
        body = f.payload
        if f.kind == frames.START:
            receiver = wire_reference.Receiver(struct.unpack(">Q", body)[0])
        elif f.kind == frames.VERBATIM:
            out += body
        elif f.kind in frames.PAGE_FRAMES:
            total, count = struct.unpack_from(">QI", body)
            assert receiver is not None and receiver.pages == total
            if f.kind == frames.PACKED_PAGES:
                head_len, packed_len = struct.unpack_from(">II", body, 12)
                head = zstandard.ZstdDecompressor().decompress(
                    body[20 : 20 + packed_len], max_output_size=head_len
                )
                assert len(head) == head_len
                batch = body[20 + packed_len :]
            else:
                head, batch = body[12:], b""
            at, entries = 0, []
            for _ in range(count):
                (prefix_len,) = struct.unpack_from(">I", head, at)
                prefix = head[at + 4 : at + 4 + prefix_len]
                (index,) = struct.unpack_from(">Q", head, at + 4 + prefix_len)
                entries.append((prefix, index))
                at += 12 + prefix_len
            if f.kind == frames.PAGES:
                batch = head[at:]
            else:
                assert at == len(head)
            assert receiver.batch(batch) == b""  # one batch, the frame's rest
            for prefix, index in entries:
                out += prefix + receiver.held.get(index, wire_reference.ZERO)
        elif f.kind in (frames.CHECK, frames.END):
            length, digest = struct.unpack(">Q16s", body)
            assert length == len(out)
            assert digest == xxhash.xxh3_128_digest(bytes(out))
    return bytes(out), kinds


@given(st.integers(0, 2**32), st.sampled_from(["lz4", "zstd", "none"]))
def test_the_channel_reads_as_its_spec_says(seed: int, compression: str) -> None:
    """Another implementation of the channel, from its spec, reads what the sender
    sends: QEMU's stream, each CHECK and END vouching for it (heads packed or not)."""
    stream, _ = iterations(4, seed)
    sender = StreamSender(batch_pages=16, compression=compression)
    wire = frames.FrameDecoder().feed(b"".join(sender.feed(stream) + sender.finish()))
    rebuilt, kinds = read_as_the_spec_says(wire)
    assert rebuilt == stream
    assert frames.END in kinds


def test_a_page_frame_head_goes_packed_where_that_is_smaller() -> None:
    stream, _ = iterations(8, 11)
    wire, _ = sent(stream, 65536, batch_pages=64)
    assert read_as_the_spec_says(wire) == (stream, {f.kind for f in wire})
    assert frames.PACKED_PAGES in {f.kind for f in wire}
    wire, _ = sent(stream, 65536, batch_pages=1)  # a lone page's entry is not worth it
    assert sum(f.kind == frames.PAGES for f in wire) > sum(
        f.kind == frames.PACKED_PAGES for f in wire
    )
    assert read_as_the_spec_says(wire)[0] == stream


def test_a_sender_for_a_destination_without_packed_pages_sends_none() -> None:
    # (a destination from before PACKED_PAGES refuses type 10: migration.terms)
    stream, _ = iterations(8, 11)
    wire, _ = sent(stream, 65536, batch_pages=64, packed_heads=False)
    kinds = {f.kind for f in wire}
    assert frames.PAGES in kinds and frames.PACKED_PAGES not in kinds
    assert read_as_the_spec_says(wire) == (stream, kinds)
