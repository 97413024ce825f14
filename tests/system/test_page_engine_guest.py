"""The page engine on a real guest's memory: images read through libvirt, encoded in
rounds, decoded and verified (the benchmark harness's path, on a TCG guest)."""

from __future__ import annotations

import libvirt
from bench.guest_images import capture
from bench.pagebench import run

from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.libvirt_host import URI
from tests.system.test_guest_lifecycle import wait_console


def test_rounds_of_a_running_guest_round_trip(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        c.call("vm.create", **guest_images.vm("pagebench", options="novacron.workload"))
        wait_console(c, "pagebench", guest.WORKLOAD_MARKER, timeout=180)
        conn = libvirt.open(URI)
        try:
            images = capture(conn.lookupByName("pagebench"), count=3, interval=1.0)
        finally:
            conn.close()
        c.call("vm.delete", name="pagebench", force=True)
    assert len(images[0]) == 128 * 1024 * 1024
    rounds = run(images, threads=1, compression="lz4", cache_pages=len(images[0]) // 4096)
    assert all(r["verified"] for r in rounds)
    assert rounds[0]["pages"] == len(images[0]) // 4096
    # the workload keeps dirtying memory between images, but not all of it
    assert 0 < rounds[1]["pages"] < rounds[0]["pages"] // 2
    for r in rounds:
        assert r["wire_bytes"] < r["baselines"]["qemu_bytes"]
