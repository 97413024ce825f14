"""Live migration of a VM placed with a dedicated thread and backed by 2 MiB huge pages,
between two namespaced hosts whose daemons dedicate different threads of the machine
(host A its last, host B its first): the destination places the VM on its own topology
as it arrives (its dedicated thread, huge pages from its pool), and the source gives
back what the VM held there."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system import guest
from tests.system.libvirt_host import LibvirtHost
from tests.system.nodes import Node, TwoNodes, migrate, running_nodes
from tests.system.test_migration import boot, intact_on, only_on, retire
from tests.system.test_placement_guest import parse_vcpupin

HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
# both QEMUs hold the guest's 128 MiB while it moves: 2 x 64 pages, and room to spare
POOL_PAGES = 192
FREE_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
COMPACT = Path("/proc/sys/vm/compact_memory")


@pytest.fixture(scope="module")
def placing_nodes(
    libvirt_host: LibvirtHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoNodes]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.fail("this test needs a host with at least 2 threads")
    old_pages = HUGEPAGES.read_text().strip()
    HUGEPAGES.write_text(f"{POOL_PAGES}\n")  # read by the daemons as they start
    if int(FREE_2M.read_text()) < POOL_PAGES:  # the kernel found too few free 2 MiB runs
        COMPACT.write_text("1\n")
        HUGEPAGES.write_text(f"{POOL_PAGES}\n")
    free = int(FREE_2M.read_text())
    if free < POOL_PAGES:
        HUGEPAGES.write_text(old_pages + "\n")
        pytest.fail(f"the kernel gave {free} free 2 MiB pages of the {POOL_PAGES} asked for")

    def flags(dedicated: int) -> list[str]:
        shared = [cpu for cpu in cpus if cpu != dedicated]
        return [
            *("--dedicated-cpus", str(dedicated)),
            *("--shared-cpus", ",".join(map(str, shared))),
            *("--reserved-memory-mib", "256"),
        ]

    scratch = tmp_path_factory.mktemp("placing")
    try:
        with running_nodes(scratch, extra=(flags(cpus[-1]), flags(cpus[0]))) as pair:
            yield pair
    finally:
        HUGEPAGES.write_text(old_pages + "\n")


def pins(node: Node, vm: str) -> dict[int, str]:
    """``virsh vcpupin VM`` on ``node``'s libvirtd, as {vcpu: cpu list}."""
    return parse_vcpupin(node.host.virsh("vcpupin", vm))


def topology(node: Node) -> dict[str, Any]:
    with node.client() as c:
        topo: dict[str, Any] = c.call("node.info")["topology"]
    return topo


def huge_placeable(topo: dict[str, Any]) -> int:
    return sum(int(n["hugepages"]["2048"]["placeable"]) for n in topo["nodes"])


def test_a_dedicated_hugepage_vm_is_placed_again_where_it_arrives(
    placing_nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a, b = placing_nodes.a, placing_nodes.b
    cpus = sorted(os.sched_getaffinity(0))
    dedicated = {a.name: cpus[-1], b.name: cpus[0]}
    idle = {node.name: topology(node) for node in (a, b)}
    for topo in idle.values():
        assert topo["problem"] is None and topo["placed_vms"] == 0, topo
    boot(a, "m11", guest_images, cpu_policy="dedicated", hugepage_kib=2048)
    assert pins(a, "m11") == {0: str(dedicated[a.name])}
    assert huge_placeable(topology(a)) == huge_placeable(idle[a.name]) - 64

    for src, dst in ((a, b), (b, a)):
        result = migrate(src, dst, "m11")["result"]
        assert result["destination_state"] == "succeeded", result
        only_on("m11", dst, src)
        intact_on(dst, "m11")
        # the destination's own placement (its dedicated thread), in libvirt and its books
        assert pins(dst, "m11") == {0: str(dedicated[dst.name])}
        xml = re.sub(r"\s", "", dst.host.virsh("dumpxml", "m11"))
        assert "<hugepages><pagesize='2048'unit='KiB'" in xml, xml
        with dst.client() as c:
            vm = c.call("vm.get", name="m11")
        assert vm["placement"]["cells"][0]["cpus"] == [dedicated[dst.name]], vm
        assert vm["placement"]["hugepage_kib"] == 2048, vm
        here = topology(dst)
        assert here["placed_vms"] == 1
        assert huge_placeable(here) == huge_placeable(idle[dst.name]) - 64
        # the source gave back the thread and the pages
        there = topology(src)
        assert there["placed_vms"] == 0, there
        assert huge_placeable(there) == huge_placeable(idle[src.name]), there
        assert not any(cpu["in_use"] for n in there["nodes"] for cpu in n["cpus"]), there
    retire(a, "m11")
