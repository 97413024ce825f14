"""This release reads what earlier releases' senders wrote (a rolling upgrade moves VMs
from hosts of the earlier release to hosts of this one): streams each kept release
wrote itself of fixed inputs (``tests/compat_streams.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from novacron._core import PageDecoder
from novacron.migration import frames
from novacron.migration.stream import StreamReceiver
from tests.compat_streams import (
    ENGINE_CODECS,
    ENGINE_PAGES,
    engine_rounds,
    inputs_digest,
    qemu_stream,
)

KEPT = Path(__file__).resolve().parent.parent / "data" / "releases"
RELEASES = sorted(p for p in KEPT.iterdir() if p.is_dir())


def meta(release: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((release / "meta.json").read_text())
    return loaded


def test_at_least_one_earlier_release_is_kept() -> None:
    assert RELEASES, f"no release under {KEPT}"


@pytest.mark.parametrize("release", RELEASES, ids=lambda p: p.name)
def test_the_inputs_are_those_the_release_was_given(release: Path) -> None:
    # (otherwise every other failure here is about the inputs, not the reading)
    assert meta(release)["inputs"] == inputs_digest()


@pytest.mark.parametrize("release", RELEASES, ids=lambda p: p.name)
def test_the_qemu_stream_an_earlier_sender_carried_arrives_byte_exact(release: Path) -> None:
    wire = (release / "channel.frames").read_bytes()
    receiver = StreamReceiver()
    out = bytearray()
    for frame in frames.FrameDecoder().feed(wire):
        out += receiver.apply(frame)
    assert receiver.ended
    assert bytes(out) == qemu_stream()


@pytest.mark.parametrize("codec", ENGINE_CODECS)
@pytest.mark.parametrize("release", RELEASES, ids=lambda p: p.name)
def test_an_earlier_encoders_rounds_decode_to_its_images(release: Path, codec: str) -> None:
    stream = (release / f"engine-{codec}.stream").read_bytes()
    lengths = meta(release)["engine"][codec]["round_bytes"]
    decoder = PageDecoder(ENGINE_PAGES)
    at = 0
    for (image, _), length in zip(engine_rounds(), lengths, strict=True):
        assert decoder.decode(stream[at : at + length]) > 0
        at += length
        assert decoder.image() == image
    assert at == len(stream)
