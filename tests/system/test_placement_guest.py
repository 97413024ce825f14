"""NUMA placement on this machine's real topology: TCG guests on qemu:///system
with dedicated pinning, then backed by 2 MiB hugepages; what the engine decided
is what ``virsh vcpupin``, ``virsh emulatorpin`` and ``virsh numatune`` report."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron import errors
from novacron._core import format_cpuset
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.conftest import daemon_on_system
from tests.system.libvirt_host import URI, LibvirtHost
from tests.system.test_guest_lifecycle import wait_console

HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
POOL_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def host_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@pytest.fixture
def pinning_daemon(libvirt_host: LibvirtHost, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose last host thread is dedicated, the others shared."""
    cpus = host_cpus()
    dedicated, shared = cpus[-1:], cpus[:-1] or cpus[-1:]
    if len(cpus) < 2:
        pytest.fail("this test needs a host with at least 2 threads")
    old_pages = HUGEPAGES.read_text().strip()
    HUGEPAGES.write_text("96\n")  # 192 MiB in 2 MiB pages, read by the daemon on start
    try:
        with daemon_on_system(
            tmp_path,
            "--dedicated-cpus",
            ",".join(map(str, dedicated)),
            "--shared-cpus",
            ",".join(map(str, shared)),
            "--reserved-memory-mib",
            "256",
        ) as d:
            yield d
    finally:
        HUGEPAGES.write_text(old_pages + "\n")


def pins(name: str) -> dict[int, str]:
    """``virsh vcpupin NAME`` as {vcpu: cpu list}."""
    return parse_vcpupin(virsh("vcpupin", name))


def parse_vcpupin(text: str) -> dict[int, str]:
    """``virsh vcpupin``'s table as {vcpu: cpu list}."""
    out = {}
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) == 2 and parts[0].isdigit():
            out[int(parts[0])] = parts[1]
    return out


def numatune(name: str) -> dict[str, str]:
    out = {}
    for line in virsh("numatune", name).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def test_dedicated_guest_runs_where_the_engine_put_it(
    pinning_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    dedicated = host_cpus()[-1]
    with pinning_daemon.client(timeout=300) as c:
        topo = c.call("node.info")["topology"]
        assert topo["problem"] is None
        vm = c.call("vm.create", **guest_images.vm("pinned", cpu_policy="dedicated"))
        cell = vm["placement"]["cells"][0]
        assert cell["cpus"] == [dedicated]
        wait_console(c, "pinned", guest.BOOT_MARKER)
        assert pins("pinned") == {0: str(dedicated)}
        emulator = virsh("emulatorpin", "pinned").split()
        assert emulator[-1] == format_cpuset(host_cpus()[:-1]), emulator
        tune = numatune("pinned")
        assert tune["numa_mode"] == "strict"
        assert tune["numa_nodeset"] == str(cell["node"])
        # the thread is taken: a second dedicated VM is refused with the reason
        with pytest.raises(errors.InsufficientResources, match="dedicated threads"):
            c.call("vm.create", name="second", vcpus=1, memory_mib=64, cpu_policy="dedicated")
        c.call("vm.stop", name="pinned")
        c.call("vm.delete", name="pinned")
        after = c.call("node.info")["topology"]
        assert after["placed_vms"] == 0, after
        assert not any(cpu["in_use"] for n in after["nodes"] for cpu in n["cpus"]), after


def test_hugepage_backed_guest_takes_its_pages(
    pinning_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    free_before = int((POOL_2M / "free_hugepages").read_text())
    assert free_before >= 64, "the kernel did not give the 2 MiB pool its pages"
    with pinning_daemon.client(timeout=300) as c:
        vm = c.call("vm.create", **guest_images.vm("huge", hugepage_kib=2048))
        assert vm["placement"]["hugepage_kib"] == 2048
        wait_console(c, "huge", guest.BOOT_MARKER)
        assert "<hugepages>" in virsh("dumpxml", "huge").replace(" ", "")
        node = c.call("node.info")["topology"]["nodes"][vm["placement"]["cells"][0]["node"]]
        assert node["hugepages"]["2048"]["placeable"] == node["hugepages"]["2048"]["total"] - 64
        # QEMU maps the guest's RAM from the pool; TCG touches it as the guest boots
        assert int((POOL_2M / "free_hugepages").read_text()) < free_before
        # more than the pool holds is refused, and says so
        with pytest.raises(errors.InsufficientResources, match="hugepages"):
            c.call("vm.create", name="toobig", memory_mib=256, hugepage_kib=2048)
        c.call("vm.stop", name="huge")
        c.call("vm.delete", name="huge")
