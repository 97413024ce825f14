"""Disk limits on libvirt's test driver: a stopped VM's definition gets the disk's new
``<iotune>`` and the record the new limits; a running VM's (the test driver cannot
throttle as QEMU does: tests/system/test_disks.py) is refused and nothing changes; limits
given at create and attach are in the domain from the start."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from novacron import errors
from novacron.vm.disk_limits import limit
from novacron.vm.disks import attach
from novacron.vm.service import VmService
from novacron.vm.spec import DiskLimits, DiskSpec, VmSpec
from tests.unit.conftest import unique


async def state(svc: VmService, name: str) -> dict[str, tuple[object, ...]]:
    """Per disk: the record's limits, the vm.get answer's, and libvirt's <iotune>."""
    xml = await svc.hv_pool.run(svc.hv.xml, name)
    rec = await svc.records.get(name)
    assert rec is not None
    spec = VmSpec.from_dict(rec.spec)
    shown = {d["target"]: d["limits"] for d in (await svc.get(name))["disks"]}
    tunes = {
        d.find("target").get("dev"): {c.tag: int(c.text or 0) for c in d.findall("iotune/*")}  # type: ignore[union-attr]
        for d in ET.fromstring(xml).findall("devices/disk")
    }
    return {
        t: (d.limits, shown[t], tunes[t])
        for t, d in zip(spec.disk_targets(), spec.disks, strict=True)
    }


async def test_a_stopped_vms_disk_is_limited_changed_and_lifted(vm_service: VmService) -> None:
    svc = vm_service
    name = unique("lim")
    first = DiskSpec(size_gib=1, limits=DiskLimits(read_iops=500))
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64, disks=(first,)), False)
    assert await state(svc, name) == {
        "vda": (DiskLimits(read_iops=500), {"read_iops": 500}, {"read_iops_sec": 500})
    }
    await attach(svc, name, DiskSpec(size_gib=1, limits=DiskLimits(write_bytes_per_s=1 << 20)))
    await limit(svc, name, "vda", {"write_iops": 40})  # read_iops stays
    got = await state(svc, name)
    assert got["vda"] == (
        DiskLimits(read_iops=500, write_iops=40),
        {"read_iops": 500, "write_iops": 40},
        {"read_iops_sec": 500, "write_iops_sec": 40},
    )
    assert got["vdb"][0] == DiskLimits(write_bytes_per_s=1 << 20)
    await limit(svc, name, "vda", {"read_iops": 0, "write_iops": 0})  # lifted: none left
    got = await state(svc, name)
    assert got["vda"] == (None, None, {})
    assert got["vdb"][2] == {"write_bytes_sec": 1 << 20}  # the other disk's stay
    # the same limits again change nothing
    assert (await limit(svc, name, "vdb", {"write_bytes_per_s": 1 << 20}))["disks"][1][
        "limits"
    ] == {"write_bytes_per_s": 1 << 20}
    with pytest.raises(errors.NotFound, match="no disk 'vdc'"):
        await limit(svc, name, "vdc", {"read_iops": 1})


async def test_a_refused_change_on_a_running_vm_changes_nothing(vm_service: VmService) -> None:
    svc = vm_service
    name = unique("lim")
    disk = DiskSpec(size_gib=1, limits=DiskLimits(read_bytes_per_s=4096))
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64, disks=(disk,)), True)
    before = await state(svc, name)
    # (the test driver wants a burst limit above every limit, which QEMU does not)
    with pytest.raises(errors.InvalidParams, match="read_bytes_sec"):
        await limit(svc, name, "vda", {"read_bytes_per_s": 8192})
    assert await state(svc, name) == before
