"""PlacementService on the test driver's topology (2 nodes of 8 threads, 2 and 4 GiB)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from novacron import errors
from novacron.config import Config, dev_defaults
from novacron.placement.service import PlacementService, summary
from novacron.placement.topology import HostNode
from novacron.vm.driver import Hypervisor
from novacron.vm.spec import VmSpec


@pytest.fixture(scope="module")
def nodes() -> list[HostNode]:
    hv = Hypervisor("test:///default")
    try:
        return hv.numa_nodes()
    finally:
        hv.close()


def service(nodes: list[HostNode], **changes: object) -> PlacementService:
    config: Config = replace(dev_defaults(), **changes)  # type: ignore[arg-type]
    svc = PlacementService(config)
    svc.load(nodes)
    return svc


def test_default_partition_is_all_shared(nodes: list[HostNode]) -> None:
    svc = service(nodes)
    assert svc.problem is None
    assert svc.shared == list(range(16)) and svc.dedicated == []
    empty = svc.report()  # with no VM placed yet, every figure is there
    assert [n["memory_placeable_mib"] for n in empty["nodes"]] == [2048 - 512, 4096 - 512]
    assert [n["shared_capacity"] for n in empty["nodes"]] == [32, 32]
    got = svc.allocate("a", VmSpec(name="a", vcpus=2, memory_mib=256))
    assert got["cpu"] == "shared" and len(got["cells"]) == 1
    with pytest.raises(errors.InsufficientResources, match="dedicated_cpus"):
        svc.allocate("b", VmSpec(name="b", vcpus=1, memory_mib=64, cpu_policy="dedicated"))


def test_dedicated_pins_and_report(nodes: list[HostNode]) -> None:
    svc = service(nodes, dedicated_cpus="2-7,10-15", shared_cpus="0-1,8-9")
    spec = VmSpec(name="d", vcpus=4, memory_mib=1024, cpu_policy="dedicated")
    got = svc.allocate("d", spec)
    assert summary(got) == {"cpu": "dedicated", "nodes": "0", "pinned": "2-5"}
    report = svc.report()
    assert report["dedicated_cpus"] == "2-7,10-15" and report["placed_vms"] == 1
    node0 = report["nodes"][0]
    in_use = [c["id"] for c in node0["cpus"] if c["in_use"]]
    assert in_use == [2, 3, 4, 5]
    assert {c["pool"] for c in node0["cpus"]} == {"dedicated", "shared"}
    assert node0["memory_placeable_mib"] == 2048 - 512 - 1024
    svc.release("d")
    assert svc.report()["placed_vms"] == 0
    # restoring the stored placement takes the same threads again; twice is a conflict
    svc.restore("d", got)
    with pytest.raises(errors.Conflict):
        svc.restore("e", got)
    with pytest.raises(errors.Conflict, match="malformed"):
        svc.restore("f", {"cells": "nope"})


def test_a_partition_naming_absent_cpus_makes_placement_unavailable(
    nodes: list[HostNode],
) -> None:
    svc = service(nodes, dedicated_cpus="40-47")
    assert svc.problem is not None and "not in the host topology" in svc.problem
    with pytest.raises(errors.Unavailable, match="does not fit this host"):
        svc.allocate("x", VmSpec(name="x", vcpus=1, memory_mib=64))
    assert svc.report()["problem"] == svc.problem
    svc.release("x")  # harmless


def test_nothing_loaded_yet() -> None:
    svc = PlacementService(dev_defaults())
    with pytest.raises(errors.Unavailable, match="not read yet"):
        svc.allocate("x", VmSpec(name="x", vcpus=1, memory_mib=64))
