"""The storage copy's frames: any volumes, in any chunking of the wire, arrive exactly;
anything corrupted, truncated, reordered or over a volume's limit is refused."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron.migration import disk_wire, frames
from novacron.migration.disk_wire import DiskReceiver, DiskSender
from novacron.migration.frames import FrameError

BLOCK = 64 * 1024

# a volume: its reads in order, each data (bytes) or a hole (its length)
Segment = bytes | int


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    kind = draw(st.sampled_from(["zero", "random", "text", "mixed", "hole"]))
    size = draw(st.integers(1, 3 * BLOCK))
    if kind == "hole":
        return size
    if kind == "zero":
        return bytes(size)
    if kind == "random":
        return random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    if kind == "text":
        return (b"novacron moves disks " * (size // 21 + 1))[:size]
    # a zero block between two data blocks, at any alignment
    cut = draw(st.integers(0, size))
    return b"\x01" * cut + bytes(BLOCK) + b"\x02" * (size - cut)


volumes = st.lists(st.lists(segments(), max_size=6), min_size=1, max_size=3)


def send(vols: list[list[Segment]]) -> bytes:
    sender = DiskSender()
    wire = []
    for index, vol in enumerate(vols):
        wire.append(sender.begin(index))
        for seg in vol:
            wire.append(sender.hole(seg) if isinstance(seg, int) else sender.data(seg))
        wire.append(sender.end())
    out = b"".join(wire)
    assert sender.wire == len(out)
    return out


def content(vol: list[Segment]) -> bytes:
    return b"".join(bytes(s) if isinstance(s, int) else s for s in vol)


def receive(wire: bytes, limits: list[int], cuts: list[int]) -> tuple[list[bytes], bool]:
    """What the receiver rebuilds from ``wire`` fed in pieces of ``cuts`` bytes: each
    volume's bytes, and whether every volume ended."""
    decoder, receiver = frames.FrameDecoder(), DiskReceiver(limits)
    rebuilt: list[bytearray] = []
    at = n = 0
    while at < len(wire):
        step = cuts[n % len(cuts)]
        for frame in decoder.feed(wire[at : at + step]):
            action = receiver.feed(frame)
            if isinstance(action, disk_wire.Begin):
                rebuilt.append(bytearray())
            elif isinstance(action, disk_wire.Data):
                rebuilt[-1] += action.data
            elif isinstance(action, disk_wire.Hole):
                rebuilt[-1] += bytes(action.length)
            else:
                assert action.length == len(rebuilt[-1])
        at, n = at + step, n + 1
    return [bytes(r) for r in rebuilt], receiver.done


LIMITS = [2 << 20] * 3  # (over any volume drawn here: holes are rebuilt as zeros)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(volumes, st.lists(st.integers(1, 200_000), min_size=1, max_size=5))
def test_volumes_arrive_exactly_in_any_chunking(vols: list[list[Segment]], cuts: list[int]) -> None:
    wire = send(vols)
    got, done = receive(wire, LIMITS[: len(vols)], cuts)
    assert done and got == [content(v) for v in vols]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(volumes, st.data())
def test_a_flipped_byte_is_never_accepted_as_the_volume(
    vols: list[list[Segment]], data: st.DataObject
) -> None:
    """One corrupted byte anywhere: refused, or the copy never ends; it never ends with
    other bytes than the source's."""
    wire = bytearray(send(vols))
    at = data.draw(st.integers(0, len(wire) - 1))
    wire[at] ^= data.draw(st.integers(1, 255))
    try:
        got, done = receive(bytes(wire), LIMITS[: len(vols)], [len(wire)])
    except FrameError:
        return
    assert not done or got == [content(v) for v in vols]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(volumes, st.data())
def test_a_truncated_copy_never_ends(vols: list[list[Segment]], data: st.DataObject) -> None:
    wire = send(vols)
    cut = data.draw(st.integers(0, len(wire) - 1))
    try:
        _, done = receive(wire[:cut], LIMITS[: len(vols)], [len(wire)])
    except FrameError:
        return
    assert not done


def test_refusals() -> None:
    sender = DiskSender()
    head = sender.begin(0) + sender.data(os.urandom(1000))
    with pytest.raises(FrameError, match="over its limit"):
        receive(head, [999], [len(head)])
    with pytest.raises(FrameError, match="out of order"):
        receive(DiskSender().begin(1), [10, 10], [100])
    with pytest.raises(FrameError, match="out of order"):
        receive(DiskSender().begin(0), [], [100])
    with pytest.raises(FrameError, match="outside a volume"):
        other = DiskSender()
        other.begin(0)
        receive(other.hole(5), [10], [100])
    with pytest.raises(FrameError, match="empty piece"):
        receive(DiskSender().begin(0) + frames.encode(frames.HOLE, bytes(16)), [10], [100])
    with pytest.raises(FrameError, match="codec 7"):
        bad = frames.encode(frames.EXTENT, (0).to_bytes(8, "big") + b"\0\0\0\1\7x")
        receive(DiskSender().begin(0) + bad, [10], [100])
    with pytest.raises(FrameError, match=r"does not unpack|claims"):
        lying = frames.encode(frames.EXTENT, (0).to_bytes(8, "big") + b"\0\0\0\2\0x")
        receive(DiskSender().begin(0) + lying, [10], [100])
    with pytest.raises(FrameError, match="the source aborted: no space"):
        receive(frames.encode_abort("no space"), [10], [100])
    with pytest.raises(FrameError, match="unexpected frame type"):
        receive(frames.encode(frames.VERBATIM, b"x"), [10], [100])
    ends = DiskSender()
    wire = ends.begin(0) + ends.data(b"abc") + ends.end()
    with pytest.raises(FrameError, match="ends at 4 bytes"):
        receive(wire[:-24] + (4).to_bytes(8, "big") + wire[-16:], [10], [100])
    with pytest.raises(ValueError, match="over"):
        DiskSender().data(bytes(disk_wire.MAX_EXTENT + 1))
    assert DiskSender().hole(0) == b""


def test_zero_blocks_and_holes_cost_no_volume_bytes_on_the_wire() -> None:
    sender = DiskSender()
    wire = sender.begin(0) + sender.data(bytes(4 * BLOCK)) + sender.hole(1 << 40) + sender.end()
    assert len(wire) < 100 and sender.logical == 4 * BLOCK + (1 << 40) == sender.zero
    receiver = DiskReceiver([1 << 41])
    actions = [receiver.feed(f) for f in frames.FrameDecoder().feed(wire)]
    assert receiver.done and actions[-1] == disk_wire.Finished(0, 4 * BLOCK + (1 << 40))
    assert sum(a.length for a in actions if isinstance(a, disk_wire.Hole)) == 4 * BLOCK + (1 << 40)


def test_copied_round_trips_and_refuses_the_wrong_size() -> None:
    frame = frames.FrameDecoder().feed(disk_wire.encode_copied(2, 1 << 33))[0]
    assert frame.kind == frames.COPIED
    assert disk_wire.decode_copied(frame.payload) == (2, 1 << 33)
    with pytest.raises(FrameError):
        disk_wire.decode_copied(b"\0" * 11)
