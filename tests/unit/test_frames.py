"""The migration channel's framing: round trips in any chunking, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.migration import frames

frame_lists = st.lists(
    st.tuples(st.sampled_from(sorted(frames.TYPES)), st.binary(max_size=300)), max_size=12
)


@given(frame_lists, st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_frames_round_trip_in_any_chunking(items: list[tuple[int, bytes]], cuts: list[int]) -> None:
    wire = b"".join(frames.encode(k, p) for k, p in items)
    dec = frames.FrameDecoder()
    got: list[frames.Frame] = []
    at, n = 0, 0
    while at < len(wire):
        step = cuts[n % len(cuts)]
        got += dec.feed(wire[at : at + step])
        at, n = at + step, n + 1
    assert [(f.kind, f.payload) for f in got] == items
    assert dec.buffered == 0


@given(st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 999)), max_size=20), st.binary())
def test_pages_payload_round_trips(entries: list[tuple[bytes, int]], batch: bytes) -> None:
    (frame,) = frames.FrameDecoder().feed(frames.encode_pages(1000, entries, batch))
    assert frames.decode_pages(frame.payload) == (1000, entries, batch)


def test_refusals() -> None:
    with pytest.raises(frames.FrameError, match="unknown frame type"):
        frames.FrameDecoder().feed(b"\x09\x00\x00\x00\x00")
    with pytest.raises(frames.FrameError, match="limit"):
        frames.FrameDecoder(max_frame=10).feed(b"\x01\x00\x00\x00\x0b")
    bad_index = frames.encode_pages(4, [(b"", 4)], b"")[5:]
    with pytest.raises(frames.FrameError, match="outside"):
        frames.decode_pages(bad_index)
    with pytest.raises(frames.FrameError, match="truncated"):
        frames.decode_pages(b"\x00" * 5)
    with pytest.raises(frames.FrameError, match="wrong size"):
        frames.decode_end(b"\x00")
    length, digest = frames.decode_end(frames.encode_end(7, b"d" * 32)[5:])
    assert (length, digest) == (7, b"d" * 32)
