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


def test_refusals() -> None:
    with pytest.raises(frames.FrameError, match="unknown frame type"):
        frames.FrameDecoder().feed(b"\x11\x00\x00\x00\x00")
    with pytest.raises(frames.FrameError, match="limit"):
        frames.FrameDecoder(max_frame=10).feed(b"\x01\x00\x00\x00\x0b")
    with pytest.raises(ValueError, match="unknown frame type"):
        frames.encode(42, b"")
    assert frames.decode_abort(frames.encode_abort("x" * 600)[5:]) == "x" * 200
