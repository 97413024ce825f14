"""The page engine on a real guest's memory: images read through libvirt, encoded in
rounds, decoded and verified (the benchmark harness's path, on a TCG guest); and the
harness reading `virsh dump --memory-only`'s ELF dumps of the same guest."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest
from bench import memory_image
from bench.guest_images import capture, memory_bytes, read_image, workload_guest
from bench.pagebench import run

from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.libvirt_host import URI, LibvirtHost
from tests.system.test_guest_lifecycle import wait_console


def test_rounds_of_a_running_guest_round_trip(libvirt_host: LibvirtHost) -> None:
    # the suite's guest as `python -m bench.guest_images --boot 128 ...` boots it
    conn = libvirt.open(URI)
    try:
        with workload_guest(conn, 128, settle=1.0, name="pagebench") as dom:
            images = list(capture(dom, count=3, interval=1.0))
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName("pagebench")  # destroyed, and transient: gone
    finally:
        conn.close()
    assert len(images[0]) == 128 * 1024 * 1024
    rounds = run(images, threads=1, compression="lz4", cache_pages=len(images[0]) // 4096)
    assert all(r["verified"] for r in rounds)
    assert rounds[0]["pages"] == len(images[0]) // 4096
    # the workload keeps dirtying memory between images, but not all of it
    assert 0 < rounds[1]["pages"] < rounds[0]["pages"] // 2
    for r in rounds:
        assert r["wire_bytes"] < r["baselines"]["qemu_bytes"]


def memory_only_dump(dom: libvirt.virDomain, path: Path) -> None:
    """What `virsh dump --memory-only DOMAIN PATH` does (its default format: ELF)."""
    dom.coreDumpWithFormat(
        str(path), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, libvirt.VIR_DUMP_MEMORY_ONLY
    )


def test_memory_only_dumps_read_as_the_guests_ram(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    dumps = [system_daemon.state_dir / f"dump.{n}.elf" for n in range(2)]
    with system_daemon.client(timeout=300) as c:
        c.call("vm.create", **guest_images.vm("dumped", options="novacron.workload"))
        wait_console(c, "dumped", guest.WORKLOAD_MARKER, timeout=180)
        conn = libvirt.open(URI)
        try:
            dom = conn.lookupByName("dumped")
            dom.suspend()  # one moment for both readings
            try:
                peeked = read_image(dom, memory_bytes(dom))
                memory_only_dump(dom, dumps[0])
            finally:
                dom.resume()
            time.sleep(1.0)
            memory_only_dump(dom, dumps[1])
        finally:
            conn.close()
        c.call("vm.delete", name="dumped", force=True)
    with dumps[0].open("rb") as f:
        segments = memory_image.segments(f, dumps[0])
    assert segments, "an ELF dump"
    image = memory_image.load(dumps[0])
    # every segment of guest RAM the peek also read holds the same bytes at its address
    at, compared = 0, 0
    for s in segments:
        if s.paddr + s.memsz <= len(peeked):
            assert image[at : at + s.memsz] == peeked[s.paddr : s.paddr + s.memsz], hex(s.paddr)
            compared += s.memsz
        at += s.padded
    assert compared > len(peeked) * 0.99  # all of it but a VGA window, if the machine has one
    rounds = run(dumps, threads=1, compression="lz4", cache_pages=len(image) // 4096)
    assert all(r["verified"] for r in rounds)
    assert rounds[0]["pages"] == len(image) // 4096
    assert 0 < rounds[1]["pages"] < rounds[0]["pages"] // 2
