"""``vm.stats`` of a real TCG guest: the counters move as the guest works."""

from __future__ import annotations

from pathlib import Path

from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.nodes import wait_until


def wait_for(path: Path, needle: str, count: int) -> None:
    wait_until(lambda: guest.console_text(path).count(needle) >= count, 120, f"{count}x {needle}")


def test_a_busy_guest_reports_cpu_memory_and_disk_use(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "st1", memory_mib=128, options="novacron.disk", disks=[{"size_gib": 1}]
            ),
        )
        log = Path(vm["console_log"])
        wait_for(log, guest.DISK_OK, 1)  # 1 MiB written and read back at least once
        first = c.call("vm.stats", name="st1")
        wait_for(log, guest.DISK_OK, 2)
        second = c.call("vm.stats", name="st1")
        assert first["state"] == second["state"] == "running"
        assert second["at"] > first["at"]

        # CPU: TCG runs the guest on host threads; its time only grows
        assert first["cpu"]["vcpus"] == 1
        assert 0 < first["cpu"]["time_ns"] < second["cpu"]["time_ns"]
        # memory: the QEMU process holds some of the guest's 128 MiB and its own
        memory = second["memory"]
        assert memory["max_kib"] == memory["current_kib"] == 128 * 1024
        assert 16 * 1024 < memory["rss_kib"] < 1024 * 1024, memory
        # the disk: 1 MiB pattern written at boot, read back every 3 s, a counter a second
        [disk0], [disk1] = first["disks"], second["disks"]
        assert (disk1["target"], disk1["path"]) == ("vda", vm["disks"][0]["path"])
        assert disk0["wr_bytes"] >= 1 << 20 and disk0["rd_bytes"] >= 1 << 20, disk0
        assert disk1["rd_bytes"] - disk0["rd_bytes"] >= 1 << 20  # one more read-back
        assert disk1["wr_reqs"] > disk0["wr_reqs"]  # more counters written
        assert disk1["capacity_bytes"] == 1 << 30
        assert second["nics"] == []

        [listed] = c.call("vm.stats.list")
        assert (listed["name"], listed["tenant"], listed["state"]) == ("st1", "default", "running")
        c.call("vm.stop", name="st1")
        stopped = c.call("vm.stats", name="st1")
        assert (stopped["state"], stopped["cpu"], stopped["disks"]) == ("stopped", None, [])
        c.call("vm.delete", name="st1")
