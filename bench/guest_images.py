"""Raw memory images of a running guest, for ``bench/pagebench.py``.

    python -m bench.guest_images DOMAIN OUT_PREFIX [--count 4] [--interval 1.0]
        [--uri qemu:///system]

Reads the guest's physical memory through libvirt's ``virDomainMemoryPeek``
(``VIR_MEMORY_PHYSICAL``, 64 KiB per call, the API's limit) and writes
``OUT_PREFIX.0.raw`` ...; the guest runs ``interval`` seconds between two images. The
guest is paused while each image is read, so every image is one consistent moment.

Physical addresses 0 to the guest's memory size are RAM only on a small guest: on a PC
machine with more than about 3 GiB, part of it lies above 4 GiB, past the PCI hole. For
such a guest take ELF dumps instead, one per round (``virsh dump --memory-only DOMAIN
FILE``), which ``bench/pagebench.py`` reads as images (``bench/memory_image.py``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt

CHUNK = 64 * 1024  # virDomainMemoryPeek refuses more per call


def memory_bytes(dom: libvirt.virDomain) -> int:
    """The guest's memory size in bytes: its RAM as the machine was given it (libvirt's
    ``<memory>``, in KiB), not what a balloon leaves the guest (``<currentMemory>``):
    a balloon takes pages from the guest, not addresses from the machine."""
    return int(dom.maxMemory()) * 1024


def read_image(dom: libvirt.virDomain, size: int) -> bytes:
    out = bytearray(size)
    for offset in range(0, size, CHUNK):
        length = min(CHUNK, size - offset)
        out[offset : offset + length] = dom.memoryPeek(offset, length, libvirt.VIR_MEMORY_PHYSICAL)
    return bytes(out)


def capture(dom: libvirt.virDomain, count: int, interval: float) -> Iterator[bytes]:
    """``count`` images; the guest runs ``interval`` seconds between two (or as long as
    the caller takes with an image, if longer). Each is given as soon as it is read: a
    large guest's images need not all be in memory at once."""
    size = memory_bytes(dom)
    resumed: float | None = None
    for _ in range(count):
        if resumed is not None:
            time.sleep(max(0.0, resumed + interval - time.monotonic()))
        dom.suspend()
        try:
            image = read_image(dom, size)
        finally:
            dom.resume()
            resumed = time.monotonic()
        yield image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domain")
    parser.add_argument("prefix", type=Path)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    conn = libvirt.open(args.uri)
    try:
        images = capture(conn.lookupByName(args.domain), args.count, args.interval)
        for n, image in enumerate(images):  # written while the guest runs on
            Path(f"{args.prefix}.{n}.raw").write_bytes(image)
            del image
    finally:
        conn.close()


if __name__ == "__main__":
    main()
