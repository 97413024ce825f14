"""The page engine on a real guest's memory: images taken through libvirt as
``bench.guest_images`` takes them (memory-only dumps, read back), encoded in rounds,
decoded and verified (the benchmark harness's path, on a TCG guest); and the harness
reading `virsh dump --memory-only`'s ELF dumps of the same guest, checked against the
guest's memory peeked through ``virDomainMemoryPeek`` at the same moment.

One guest serves both (peeking a whole 128 MiB image, 64 KiB a call, would take about
16 s under TCG; a dump takes under a second)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import libvirt
import pytest
from bench import memory_image
from bench.guest_images import CHUNK, capture, dump, workload_guest
from bench.pagebench import run

from tests.system.libvirt_host import URI, LibvirtHost

MEMORY_MIB = 128
EVERY_NTH_CHUNK = 16  # the dump is checked against the guest's memory at these chunks


def sampled_chunks(dom: libvirt.virDomain, size: int) -> dict[int, bytes]:
    """Every ``EVERY_NTH_CHUNK``-th 64 KiB chunk of the guest's physical memory, by address."""
    return {
        at: dom.memoryPeek(at, CHUNK, libvirt.VIR_MEMORY_PHYSICAL)
        for at in range(0, size, CHUNK * EVERY_NTH_CHUNK)
    }


def test_a_running_guests_memory_round_trips_as_images_and_as_dumps(
    libvirt_host: LibvirtHost,
) -> None:
    # the suite's guest as `python -m bench.guest_images --boot 128 ...` boots it
    size = MEMORY_MIB << 20
    with tempfile.TemporaryDirectory(prefix="novacron-dumps-", dir="/var/tmp") as tmp:
        dumps = [Path(tmp) / f"dump.{n}.elf" for n in range(2)]
        scratch = Path(tmp) / "capture"
        scratch.mkdir()
        conn = libvirt.open(URI)
        try:
            with workload_guest(conn, MEMORY_MIB, settle=1.0, name="pagebench") as dom:
                images = list(capture(dom, count=2, interval=1.0, dump_dir=scratch))
                dom.suspend()  # one moment for the dump and the peeks
                try:
                    dump(dom, dumps[0])  # (virsh dump --memory-only)
                    peeked = sampled_chunks(dom, size)
                finally:
                    dom.resume()
                time.sleep(1.0)
                dump(dom, dumps[1])
            with pytest.raises(libvirt.libvirtError):
                conn.lookupByName("pagebench")  # destroyed, and transient: gone
        finally:
            conn.close()

        # the harness's own images: the guest's RAM and its firmware's ROM, as the dump
        # lays them out; the dumps they were read from are gone
        assert list(scratch.iterdir()) == []
        image_size = len(images[0])
        assert image_size > size and [len(i) for i in images] == [image_size] * 2
        rounds = run(images, threads=1, compression="lz4", cache_pages=image_size // 4096)
        assert all(r["verified"] for r in rounds)
        assert rounds[0]["pages"] == image_size // 4096
        # the workload keeps dirtying memory between images, but not all of it
        assert 0 < rounds[1]["pages"] < rounds[0]["pages"] // 2
        for r in rounds:
            assert r["wire_bytes"] < r["baselines"]["qemu_bytes"]

        # the ELF dumps: their RAM segments, in order, are the guest's memory
        with dumps[0].open("rb") as f:
            segments = memory_image.segments(f, dumps[0])
        assert segments, "an ELF dump"
        image = memory_image.load(dumps[0])
        at, compared, nonzero = 0, 0, 0
        for s in segments:
            for address, chunk in peeked.items():
                if s.paddr <= address and address + CHUNK <= s.paddr + s.memsz:
                    offset = at + address - s.paddr
                    assert image[offset : offset + CHUNK] == chunk, hex(address)
                    compared += 1
                    nonzero += any(chunk)
            at += s.padded
        # all of them but a VGA window, if the machine has one; and the workload's data
        assert compared >= len(peeked) - 1 and nonzero >= 8, (compared, nonzero, len(peeked))
        rounds = run(dumps, threads=1, compression="lz4", cache_pages=len(image) // 4096)
        assert all(r["verified"] for r in rounds)
        assert rounds[0]["pages"] == len(image) // 4096
        assert 0 < rounds[1]["pages"] < rounds[0]["pages"] // 2
