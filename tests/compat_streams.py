"""Streams an earlier release wrote, for checking that this one still reads them.

During a rolling upgrade a VM moves from a host of the earlier release to one of this
release: this release's receiver must read what the earlier sender writes (the page
engine's record stream, ``docs/migration-wire.md``, inside the channel's frames). The
inputs here are made the same way every time (fixed seeds); what an earlier release
made of them is kept under ``tests/data/releases/<commit>/``, written by that release
itself::

    git worktree add /tmp/old COMMIT   # and build its extension into /tmp/old/python
    PYTHONPATH=/tmp/old/python python -m tests.compat_streams tests/data/releases/COMMIT COMMIT

(``novacron`` is imported from ``PYTHONPATH``, the inputs from this checkout).
``tests/unit/test_earlier_releases.py`` reads every release kept there. The inputs are
made here, not by the suite's other stream and image helpers, so that changing those never
changes what the kept streams must rebuild.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any

from tests.qemu_stream_builder import PAGE, StreamBuilder

QEMU_PAGES = 64
CHANNEL_BATCH_PAGES = 8
ENGINE_PAGES = 64
ENGINE_BATCH_PAGES = 32
ENGINE_CODECS = ("lz4", "zstd")


def _text(rng: random.Random) -> bytes:
    words = [b"mov", b"rax", b"call", b"ret", b"GET", b"/index", b"200", b"kernel:", b"eth0"]
    out = bytearray()
    while len(out) < PAGE:
        out += rng.choice(words) + (b"\n" if rng.random() < 0.1 else b" ")
    return bytes(out[:PAGE])


def _page(image: bytes, n: int) -> bytes:
    return image[n * PAGE : (n + 1) * PAGE]


def _changed(rng: random.Random, page: bytes) -> bytes:
    """``page`` with a few bytes here and there rewritten (a counter, a pointer)."""
    out = bytearray(page)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(PAGE - 16)
        out[at : at + 8] = rng.randbytes(8)
    return bytes(out)


def memory(seed: int, pages: int, rounds: int) -> list[bytes]:
    """``rounds`` images of a guest of ``pages`` pages, each the one before a moment
    later: zero pages, copies of a few shared pages, text, a little random data; later
    images rewrite some pages a little, some whole, free some and copy in others."""
    rng = random.Random(seed)
    shared = [_text(rng) for _ in range(4)]
    image = []
    for _ in range(pages):
        roll = rng.random()
        if roll < 0.3:
            image.append(bytes(PAGE))
        elif roll < 0.45:
            image.append(rng.choice(shared))
        elif roll < 0.95:
            image.append(_text(rng))
        else:
            image.append(rng.randbytes(PAGE))
    images = [b"".join(image)]
    for _ in range(rounds - 1):
        for n in rng.sample(range(pages), pages // 6):
            roll = rng.random()
            if roll < 0.5:
                image[n] = _changed(rng, image[n])
            elif roll < 0.7:
                image[n] = _text(rng)
            elif roll < 0.8:
                image[n] = bytes(PAGE)
            elif roll < 0.9:
                image[n] = rng.choice(shared)
            else:
                image[n] = rng.randbytes(PAGE)
        images.append(b"".join(image))
    return images


def qemu_stream() -> bytes:
    """A QEMU precopy of a guest of ``QEMU_PAGES`` pages (and a 4-page video RAM): every page once,
    then three iterations resending the pages that changed, then the device state."""
    images = memory(seed=11, pages=QEMU_PAGES, rounds=4)
    b = (
        StreamBuilder()
        .header()
        .ram_setup([(b"pc.ram", QEMU_PAGES * PAGE), (b"vga.vram", 4 * PAGE)])
    )
    previous: bytes | None = None
    for image in images:
        b.part()
        first = True
        for n in range(QEMU_PAGES):
            page = _page(image, n)
            if previous is not None and _page(previous, n) == page:
                continue
            if page == bytes(PAGE):
                b.zero(b"pc.ram", n, cont=not first)
            else:
                b.page(b"pc.ram", n, page, cont=not first)
            first = False
        b.page(b"vga.vram", 0, bytes(PAGE))
        b.eos()
        previous = image
    b.device_and_eof()
    return bytes(b.out)


def engine_rounds() -> list[tuple[bytes, list[int] | None]]:
    """The page engine's rounds: each image and the pages it offers (all of them
    first; then those that changed, and every fifth page whether it changed or not)."""
    images = memory(seed=5, pages=ENGINE_PAGES, rounds=3)
    rounds: list[tuple[bytes, list[int] | None]] = [(images[0], None)]
    for before, image in itertools.pairwise(images):
        offer = [
            n for n in range(ENGINE_PAGES) if n % 5 == 0 or _page(before, n) != _page(image, n)
        ]
        rounds.append((image, offer))
    return rounds


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inputs_digest() -> dict[str, str]:
    """What the inputs hash to: a change here is a change of the inputs, not of what
    reads them."""
    return {
        "qemu_stream": digest(qemu_stream()),
        "engine_images": digest(b"".join(image for image, _ in engine_rounds())),
    }


def record(out: Path, commit: str) -> None:
    """What the ``novacron`` on ``sys.path`` writes of the inputs, into ``out``."""
    from novacron import _core
    from novacron.migration.stream import StreamSender

    print(f"recording with {_core.__file__}", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    sender = StreamSender(batch_pages=CHANNEL_BATCH_PAGES)
    stream = qemu_stream()
    wire = b"".join(bytes(f) for f in sender.feed(stream) + sender.finish())
    (out / "channel.frames").write_bytes(wire)
    meta: dict[str, Any] = {
        "commit": commit,
        "inputs": inputs_digest(),
        "channel": {"batch_pages": CHANNEL_BATCH_PAGES, "bytes": len(wire)},
        "engine": {"pages": ENGINE_PAGES, "batch_pages": ENGINE_BATCH_PAGES},
    }
    for codec in ENGINE_CODECS:
        enc = _core.PageEncoder(ENGINE_PAGES, compression=codec, batch_pages=ENGINE_BATCH_PAGES)
        lengths = []
        with (out / f"engine-{codec}.stream").open("wb") as f:
            for image, offer in engine_rounds():
                chunk = bytes(enc.encode(image, offer))
                f.write(chunk)
                lengths.append(len(chunk))
        meta["engine"][codec] = {"round_bytes": lengths}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.compat_streams OUT_DIR COMMIT")
    record(Path(sys.argv[1]), sys.argv[2])
