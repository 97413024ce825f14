"""Reproducible synthetic guest memory images for the page-engine benchmark.

    python -m bench.synth OUT_PREFIX [--mib 256] [--rounds 4] [--seed 1]

writes ``OUT_PREFIX.0.raw`` ... ``OUT_PREFIX.N.raw``: image 0 is a freshly booted guest,
each next image the same memory a moment later. The mix (fractions of pages):

* 35 % zero pages (free memory);
* 20 % duplicates of a pool of 512 "library" pages (shared code and data);
* 30 % text/code-like pages: 4 KiB windows of a 256 KiB token corpus with a few
  bytes changed, so every page is distinct but compresses well;
* 15 % random pages (compressed or encrypted data).

Each later round dirties 5 % of the pages, nine in ten of them from a hot working set of
10 % of the pages (fixed for the run) and the rest anywhere: half get small in-page
changes (8 or 64 bytes: a counter, a record), a fifth are rewritten as new text, a tenth
become new random data, a tenth are freed to zero and a tenth load a library page.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

PAGE = 4096
TOKENS = (
    b"int main ( ) { return 0 ; } static const char * struct list_head next prev "
    b"mov rax rbx call ret push pop jmp cmp if else for while the of and to in is "
    b"GET /index.html HTTP/1.1 200 OK Content-Length: error warning info debug "
    b"0x7ffd 0xdeadbeef nginx postgres systemd kernel: [ 12.345678 ] eth0 link up "
).split()


def corpus(rng: random.Random, size: int = 256 * 1024) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += rng.choice(TOKENS) + (b"\n" if rng.random() < 0.1 else b" ")
    return bytes(out[:size])


def text_page(rng: random.Random, text: bytes) -> bytes:
    start = rng.randrange(len(text) - PAGE)
    page = bytearray(text[start : start + PAGE])
    for _ in range(8):
        page[rng.randrange(PAGE)] = rng.randrange(32, 127)
    return bytes(page)


def generate(mib: int, rounds: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    text = corpus(rng)
    pages = mib * 256
    library = [text_page(rng, text) if i % 2 else rng.randbytes(PAGE) for i in range(512)]
    image = bytearray(pages * PAGE)
    for i in range(pages):
        roll = rng.random()
        if roll < 0.35:
            continue
        if roll < 0.55:
            content = rng.choice(library)
        elif roll < 0.85:
            content = text_page(rng, text)
        else:
            content = rng.randbytes(PAGE)
        image[i * PAGE : (i + 1) * PAGE] = content
    images = [bytes(image)]
    hot = rng.sample(range(pages), pages // 10)
    for _ in range(rounds - 1):
        dirty = {
            rng.choice(hot) if rng.random() < 0.9 else rng.randrange(pages)
            for _ in range(pages // 20)
        }
        for i in sorted(dirty):
            at = i * PAGE
            roll = rng.random()
            if roll < 0.5:
                size = rng.choice((8, 64))
                off = rng.randrange(PAGE - size)
                image[at + off : at + off + size] = rng.randbytes(size)
            elif roll < 0.7:
                image[at : at + PAGE] = text_page(rng, text)
            elif roll < 0.8:
                image[at : at + PAGE] = rng.randbytes(PAGE)
            elif roll < 0.9:
                image[at : at + PAGE] = bytes(PAGE)
            else:
                image[at : at + PAGE] = rng.choice(library)
        images.append(bytes(image))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", type=Path)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for n, image in enumerate(generate(args.mib, args.rounds, args.seed)):
        Path(f"{args.prefix}.{n}.raw").write_bytes(image)


if __name__ == "__main__":
    main()
