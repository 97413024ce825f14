"""NBD connections packed on their channels: any bytes, cut anyhow, packed with either
codec and read in any chunking, come out exactly; anything that is not a well-formed
``NBD_BYTES`` frame is refused with a FrameError, never another exception."""

from __future__ import annotations

import os
import struct

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from novacron.blocking import Pool
from novacron.migration import frames, nbd_packing
from novacron.migration.disk_wire import LZ4, RAW, ZERO, ZSTD
from novacron.migration.frames import FrameError
from novacron.migration.nbd_packing import MAX_PIECE, Packer, Unpacker

HEAD = struct.Struct(">BIIB")  # frame type, frame length, piece length, codec


def piece(length: int, codec: int, payload: bytes) -> bytes:
    return HEAD.pack(frames.NBD_BYTES, 5 + len(payload), length, codec) + payload


def unpacked(data: bytes, cuts: list[int]) -> bytes:
    """``data`` fed to an Unpacker cut at ``cuts``, unpacked."""
    unpacker, out, at = Unpacker(), [], 0
    for cut in [*sorted(cuts), len(data)]:
        out.append(Unpacker.unpack(unpacker.feed(data[at:cut])))
        at = cut
    assert unpacker.buffered == 0
    return b"".join(out)


def mixed(runs: list[tuple[int, int]]) -> bytes:
    """Zero runs, text-like runs and random runs."""
    out = []
    for kind, length in runs:
        if kind == 0:
            out.append(bytes(length))
        elif kind == 1:
            out.append((b"nbd request %d; " % length * (length // 10 + 1))[:length])
        else:
            out.append(os.urandom(length))
    return b"".join(out)


runs = st.lists(st.tuples(st.integers(0, 2), st.integers(1, 200_000)), max_size=6)


@given(runs, st.sampled_from([RAW, ZSTD, LZ4]), st.lists(st.integers(0, 1 << 21), max_size=8))
def test_any_bytes_packed_with_either_codec_come_out_exactly(
    layout: list[tuple[int, int]], codec: int, cuts: list[int]
) -> None:
    data = mixed(layout)
    wire = Packer(codec).pack(data)
    assert unpacked(wire, [c for c in cuts if c <= len(wire)]) == data


def test_zero_runs_and_text_travel_small_random_bytes_raw() -> None:
    data = bytes(512 * 1024) + b"write of a block, " * 20_000
    noise = os.urandom(100_000)
    for codec in (ZSTD, LZ4):
        wire = Packer(codec).pack(data)
        assert [p[0] for p in Unpacker().feed(wire)] == [ZERO, codec]  # zero blocks, packed text
        assert len(wire) < 40_000
        assert unpacked(wire, []) == data
        wire = Packer(codec).pack(noise)
        assert [p[0] for p in Unpacker().feed(wire)] == [RAW]  # random bytes as they are
        assert unpacked(wire, []) == noise
    assert [p[0] for p in Unpacker().feed(Packer(LZ4).pack(b"\0" * 100))] == [RAW]  # short: raw


def test_pieces_are_at_most_a_mebibyte() -> None:
    data = b"x" * (MAX_PIECE * 2 + 5)
    pieces = Unpacker().feed(Packer(LZ4).pack(data))
    assert [p[1] for p in pieces] == [MAX_PIECE, MAX_PIECE, 5]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (frames.encode(frames.VERBATIM, b"x"), "frame type 1 on a packed NBD channel"),
        (frames.encode(frames.NBD_BYTES, b"\0\0\0"), "too short"),
        (piece(0, RAW, b""), "of 0 bytes"),
        (piece(MAX_PIECE + 1, ZERO, b""), f"of {MAX_PIECE + 1} bytes"),
        (piece(4, 9, b"abcd"), "of codec 9"),
        (HEAD.pack(frames.NBD_BYTES, nbd_packing.MAX_FRAME + 1, 1, RAW), "over the"),
        (HEAD.pack(99, 5, 1, RAW), "unknown frame type"),
    ],
)
def test_malformed_frames_are_refused(wire: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        Unpacker().feed(wire)


@pytest.mark.parametrize(
    "wire",
    [
        piece(4, RAW, b"abc"),  # raw bytes of another length
        piece(4, ZERO, b"\0"),  # a zero piece that carries bytes
        piece(1000, LZ4, b"\x1f\x05\x01\x00\xff\xff"),  # an LZ4 block of the wrong length
        piece(1000, ZSTD, b"not zstd"),
    ],
)
def test_pieces_that_do_not_unpack_to_their_length_are_refused(wire: bytes) -> None:
    pieces = Unpacker().feed(wire)
    with pytest.raises(FrameError, match="does not unpack"):
        Unpacker.unpack(pieces)


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=4))
def test_any_bytes_are_pieces_or_a_frame_error(wire: bytes, cuts: list[int]) -> None:
    try:
        unpacker, at = Unpacker(), 0
        for cut in [*sorted(c for c in cuts if c <= len(wire)), len(wire)]:
            for codec, length, payload in unpacker.feed(wire[at:cut]):
                assert len(Unpacker.unpack([(codec, length, payload)])) == length
            at = cut
    except FrameError:
        pass


def test_the_packing_is_what_both_ends_know() -> None:
    assert [nbd_packing.agreed(x) for x in ("lz4", "zstd", "none", None, 3, "gzip")] == [
        "lz4",
        "zstd",
        "none",
        "none",
        "none",
        "none",
    ]
    assert nbd_packing.of_answer({}) == "none"  # a destination of an earlier release
    assert nbd_packing.of_answer({"packing": "zstd"}) == "zstd"
    with pytest.raises(ValueError, match="gzip"):
        nbd_packing.of_answer({"packing": "gzip"})
    with pytest.raises(ValueError, match="does not pack"):
        Packer(ZERO)


async def test_a_packed_channel_carries_bytes_both_ways_and_counts_the_wire() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    sent: list[int] = []
    received: list[int] = []
    engine = Pool("test-engine", 2)
    near = nbd_packing.PackedChannel(ours, LZ4, engine, sent.append, received.append)
    far = nbd_packing.PackedChannel(theirs, ZSTD, engine)
    data = b"\0" * 300_000 + b"data of a mirror " * 50_000
    async with trio.open_nursery() as n:
        n.start_soon(near.send_all, data)
        got = b""
        while len(got) < len(data):
            got += await far.receive_some(65536)
    assert got == data
    assert 0 < sum(sent) < len(data) // 20
    await far.send_all(b"reply")
    assert await near.receive_some() == b"reply"
    assert sum(received) == len(piece(5, RAW, b"reply"))
    await far.aclose()
    assert await near.receive_some() == b""


async def test_unpacking_keeps_pace_with_the_reader_whatever_the_frames_stand_for() -> None:
    """26,000 zero pieces in 256 KiB of channel bytes stand for 26 GiB: each read
    unpacks only what it returns (at most one piece more), never all of them."""
    ours, theirs = trio.testing.memory_stream_pair()
    near = nbd_packing.PackedChannel(ours, LZ4, Pool("test-engine", 1))
    bomb = piece(MAX_PIECE, ZERO, b"") * 26_000
    await theirs.send_all(bomb)
    got = 0
    for _ in range(40):
        data = await near.receive_some(256 * 1024)
        assert data == bytes(len(data)) and 0 < len(data) <= 256 * 1024
        got += len(data)
    assert got == 40 * 256 * 1024
    assert len(near._pieces) >= 25_990  # the rest still unpacked: only lengths held
    assert len(near._pending) <= MAX_PIECE


async def test_a_channel_ending_inside_a_frame_is_an_error() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    near = nbd_packing.PackedChannel(ours, LZ4, Pool("test-engine", 1))
    await theirs.send_all(piece(10, RAW, b"abcdefghij")[:-3])
    await theirs.aclose()
    with pytest.raises(FrameError, match="ended inside a frame"):
        await near.receive_some()
