"""Resizing a stopped VM on libvirt's test driver: record, domain XML, metadata and
placement change together, or nothing changes; reconciliation finishes a resize a crash
cut in half."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from novacron import errors
from novacron.vm import domain_xml
from novacron.vm.quotas import Quota
from novacron.vm.reconcile import reconcile
from novacron.vm.resize import resize
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec
from tests.unit.conftest import unique


async def made(svc: VmService, tenant: str = "default", **extra: Any) -> str:
    name = unique("rs")
    spec = VmSpec(name=name, vcpus=1, memory_mib=64, tenant=tenant, **extra)
    await svc.create(spec, start=False)
    return name


async def shape(svc: VmService, name: str) -> dict[str, Any]:
    """Every copy of the VM's size: record, libvirt's XML, metadata, placement."""
    xml = await svc.hv_pool.run(svc.hv.xml, name)
    root = ET.fromstring(xml)
    managed = domain_xml.parse_managed(xml)
    assert managed is not None
    rec = await svc.records.get(name)
    assert rec is not None and rec.placement is not None
    return {
        "record": (rec.spec["vcpus"], rec.spec["memory_mib"]),
        "libvirt": (int(root.findtext("vcpu") or 0), int(root.findtext("memory") or 0) // 1024),
        "metadata": (managed.spec["vcpus"], managed.spec["memory_mib"]),
        "placed": sum(cell["vcpus"] for cell in rec.placement["cells"]),
        "placed_mib": sum(cell["memory_kib"] for cell in rec.placement["cells"]) // 1024,
    }


def same_size(vcpus: int, mib: int) -> dict[str, Any]:
    return {
        "record": (vcpus, mib),
        "libvirt": (vcpus, mib),
        "metadata": (vcpus, mib),
        "placed": vcpus,
        "placed_mib": mib,
    }


async def test_a_stopped_vm_gets_its_new_size_everywhere(vm_service: VmService) -> None:
    name = await made(vm_service)
    await resize(vm_service, name, 2, 128)
    assert await shape(vm_service, name) == same_size(2, 128)
    await resize(vm_service, name, None, 96)  # one of the two
    assert await shape(vm_service, name) == same_size(2, 96)
    doc = await vm_service.start(name)
    assert (doc["vcpus"], doc["memory_mib"], doc["state"]) == (2, 96, "running")
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_refusals_change_nothing(vm_service: VmService) -> None:
    tenant = unique("t")
    name = await made(vm_service, tenant=tenant)
    before = await shape(vm_service, name)
    placed = vm_service.placement.report()
    await vm_service.quotas.set(tenant, Quota(max_vcpus=3))
    with pytest.raises(errors.QuotaExceeded):
        await resize(vm_service, name, 4, None)
    with pytest.raises(errors.InsufficientResources):
        await resize(vm_service, name, None, 1024 * 1024)  # more than the host has
    await vm_service.start(name)
    with pytest.raises(errors.Conflict, match="no room for more vCPUs"):
        await resize(vm_service, name, 2, None)
    await vm_service.stop(name)
    assert await shape(vm_service, name) == before
    assert vm_service.placement.report() == placed
    await resize(vm_service, name, 3, None)  # the quota counts the VM once, at its new size
    assert (await shape(vm_service, name))["record"] == (3, 64)
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_hugepage_memory_stays_whole_pages(vm_service: VmService) -> None:
    name = await made(vm_service)
    rec = await vm_service.records.get(name)
    assert rec is not None
    spec = VmSpec.from_dict({**rec.spec, "hugepage_kib": 2048})
    await vm_service.records.set_spec(name, spec.to_dict(), rec.placement)
    with pytest.raises(errors.InvalidParams, match="whole number"):
        await resize(vm_service, name, None, 65)
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_reconcile_finishes_a_resize_cut_in_half(vm_service: VmService) -> None:
    """The record was written, the daemon died before libvirt got the domain."""
    name = await made(vm_service)
    rec = await vm_service.records.get(name)
    assert rec is not None
    grown = {**rec.spec, "vcpus": 2, "memory_mib": 128}
    vm_service.placement.release(name)
    placement = vm_service.placement.allocate(name, VmSpec.from_dict(grown))
    await vm_service.records.set_spec(name, grown, placement)
    vm_service.placement.release(name)  # (a restarted daemon holds none before it reconciles)
    found = [f for f in await reconcile(vm_service) if f["vm"] == name]
    assert [f["finding"] for f in found] == ["resized"], found
    assert "1 vCPU(s), 64 MiB -> 2 vCPU(s), 128 MiB" in found[0]["detail"]
    assert await shape(vm_service, name) == same_size(2, 128)
    again = [f for f in await reconcile(vm_service) if f["vm"] == name]
    assert not [f for f in again if f["finding"] == "resized"]
    await vm_service.delete(name, force=True, keep_disks=False)


async def vcpu_counts(svc: VmService, name: str) -> dict[str, Any]:
    """The VM's vCPUs as libvirt has them (in the guest, in the definition, the maximum),
    the record and metadata, and the placement's reservation."""
    import libvirt

    dom = svc.hv.domain(name)
    live = dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) if dom.isActive() else None
    managed = domain_xml.parse_managed(await svc.hv_pool.run(svc.hv.xml, name))
    rec = await svc.records.get(name)
    assert managed is not None and rec is not None and rec.placement is not None
    return {
        "live": live,
        "defined": dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG),
        "most": dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM),
        "record": (rec.spec["vcpus"], rec.spec.get("max_vcpus")),
        "metadata": (managed.spec["vcpus"], managed.spec.get("max_vcpus")),
        "placed": sum(cell["vcpus"] for cell in rec.placement["cells"]),
    }


async def test_a_running_vm_has_vcpus_plugged_in_up_to_its_max(vm_service: VmService) -> None:
    name = await made(vm_service, max_vcpus=3)
    assert await vcpu_counts(vm_service, name) == {
        "live": None,
        "defined": 1,
        "most": 3,
        "record": (1, 3),
        "metadata": (1, 3),
        "placed": 3,  # the maximum is reserved
    }
    await vm_service.start(name)
    await resize(vm_service, name, 2, None)
    expected = {"live": 2, "defined": 2, "most": 3, "record": (2, 3), "metadata": (2, 3)}
    assert await vcpu_counts(vm_service, name) == {**expected, "placed": 3}
    assert (await vm_service.get(name))["vcpus"] == 2

    before = await vcpu_counts(vm_service, name)
    with pytest.raises(errors.Conflict, match="must be stopped to take vCPUs out"):
        await resize(vm_service, name, 1, None)
    with pytest.raises(errors.InvalidParams, match=r"max_vcpus \(3\) is below vcpus \(4\)"):
        await resize(vm_service, name, 4, None)
    with pytest.raises(errors.Conflict, match="memory"):
        await resize(vm_service, name, 3, 128)
    with pytest.raises(errors.Conflict, match="max_vcpus"):
        await resize(vm_service, name, None, None, 4)
    with pytest.raises(errors.InvalidParams, match="below"):
        await resize(vm_service, name, None, None, 1)
    await vm_service.pause(name)
    with pytest.raises(errors.Conflict, match="must be running"):
        await resize(vm_service, name, 3, None)
    assert await vcpu_counts(vm_service, name) == before
    await vm_service.resume(name)
    await resize(vm_service, name, 2, None, 3)  # the same: nothing to do
    assert await vcpu_counts(vm_service, name) == before

    await vm_service.stop(name)
    await vm_service.start(name)  # the definition has what was plugged
    assert (await vcpu_counts(vm_service, name))["live"] == 2

    # libvirt refuses (a definition changed behind NovaCron's back): nothing changes
    import libvirt

    dom = vm_service.hv.domain(name)
    dom.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
    before = await vcpu_counts(vm_service, name)
    with pytest.raises(errors.InvalidParams):  # (libvirt: more than the maximum)
        await resize(vm_service, name, 3, None)
    assert await vcpu_counts(vm_service, name) == before
    await vm_service.stop(name)
    await resize(vm_service, name, 1, None)  # taken out while stopped
    assert (await vcpu_counts(vm_service, name))["record"] == (1, 3)
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_a_stopped_vm_gets_room_for_vcpus_counted_by_its_quota(
    vm_service: VmService,
) -> None:
    tenant = unique("t")
    name = await made(vm_service, tenant=tenant)
    await vm_service.quotas.set(tenant, Quota(max_vcpus=4))
    with pytest.raises(errors.QuotaExceeded):
        await resize(vm_service, name, None, None, 5)
    await resize(vm_service, name, None, None, 4)
    counts = await vcpu_counts(vm_service, name)
    assert (counts["defined"], counts["most"], counts["record"], counts["placed"]) == (
        1,
        4,
        (1, 4),
        4,
    )
    with pytest.raises(errors.QuotaExceeded):  # the room is counted, not the vCPUs in use
        await vm_service.create(
            VmSpec(name=unique("rs"), vcpus=1, memory_mib=64, tenant=tenant), start=False
        )
    await resize(vm_service, name, 4, None)  # all of the room: the maximum stays
    counts = await vcpu_counts(vm_service, name)
    assert (counts["defined"], counts["most"], counts["record"]) == (4, 4, (4, 4))
    await resize(vm_service, name, 2, None, 2)  # no room left
    counts = await vcpu_counts(vm_service, name)
    assert (counts["defined"], counts["most"], counts["record"], counts["placed"]) == (
        2,
        2,
        (2, 2),
        2,
    )
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_reconcile_makes_a_change_cut_short_follow_libvirt(vm_service: VmService) -> None:
    """The record is written first: a crash before libvirt (or between the record and
    the metadata) leaves the record ahead; libvirt's definition is what the VM has."""
    from dataclasses import replace

    name = await made(vm_service, max_vcpus=3)
    await vm_service.start(name)
    rec = await vm_service.records.get(name)
    assert rec is not None
    ahead = replace(VmSpec.from_dict(rec.spec), vcpus=3)
    await vm_service.save_spec(name, ahead, rec.placement)  # record and metadata written
    vm_service.placement.release(name)  # (a restarted daemon holds none before it reconciles)
    found = [f for f in await reconcile(vm_service) if f["vm"] == name]
    assert [f["finding"] for f in found] == ["size_changed"], found
    assert "record 3 vCPU(s), 64 MiB -> libvirt 1 vCPU(s), 64 MiB" in found[0]["detail"]
    counts = await vcpu_counts(vm_service, name)
    assert (counts["live"], counts["defined"], counts["record"], counts["metadata"]) == (
        1,
        1,
        (1, 3),
        (1, 3),
    )
    again = [f for f in await reconcile(vm_service) if f["vm"] == name]
    assert not [f for f in again if f["finding"] == "size_changed"]

    await vm_service.records.set_spec(name, ahead.to_dict(), rec.placement)  # record only
    vm_service.placement.release(name)
    found = [f for f in await reconcile(vm_service) if f["vm"] == name]
    assert [f["finding"] for f in found] == ["size_changed"], found
    counts = await vcpu_counts(vm_service, name)
    assert (counts["record"], counts["metadata"]) == ((1, 3), (1, 3))
    await vm_service.delete(name, force=True, keep_disks=False)


async def memory_counts(svc: VmService, name: str) -> dict[str, Any]:
    """The VM's memory as libvirt has it (the balloon's target in the guest and in the
    definition, the maximum), the record and metadata, and the placement's reservation."""
    dom = svc.hv.domain(name)
    managed = domain_xml.parse_managed(await svc.hv_pool.run(svc.hv.xml, name))
    rec = await svc.records.get(name)
    assert managed is not None and rec is not None and rec.placement is not None
    return {
        "live": dom.info()[2] // 1024 if dom.isActive() else None,
        "defined": (await svc.hv_pool.run(svc.hv.defined_size, name))[1],
        "most": dom.info()[1] // 1024,
        "record": (rec.spec["memory_mib"], rec.spec.get("max_memory_mib")),
        "metadata": (managed.spec["memory_mib"], managed.spec.get("max_memory_mib")),
        "placed": sum(cell["memory_kib"] for cell in rec.placement["cells"]) // 1024,
    }


async def test_a_running_vms_balloon_moves_within_its_max_memory(vm_service: VmService) -> None:
    name = await made(vm_service, max_memory_mib=256, max_vcpus=2)
    assert await memory_counts(vm_service, name) == {
        "live": None,
        "defined": 64,
        "most": 256,
        "record": (64, 256),
        "metadata": (64, 256),
        "placed": 256,  # the maximum is reserved
    }
    await vm_service.start(name)
    await resize(vm_service, name, 2, 200)  # vCPUs and memory in one call
    counts = await memory_counts(vm_service, name)
    assert counts == {
        "live": 200,
        "defined": 200,
        "most": 256,
        "record": (200, 256),
        "metadata": (200, 256),
        "placed": 256,
    }
    assert (await vcpu_counts(vm_service, name))["live"] == 2
    await resize(vm_service, name, None, 32)
    assert (await memory_counts(vm_service, name))["live"] == 32
    before = await memory_counts(vm_service, name)
    with pytest.raises(errors.InvalidParams, match=r"max_memory_mib \(256\) is below"):
        await resize(vm_service, name, None, 300)
    with pytest.raises(errors.Conflict, match="max_memory_mib"):
        await resize(vm_service, name, None, None, None, 512)
    assert await memory_counts(vm_service, name) == before
    await vm_service.stop(name)
    await vm_service.start(name)  # the definition has the balloon's target
    assert (await memory_counts(vm_service, name))["live"] == 32
    # a crash after libvirt moved the balloon, before the record: the record follows
    await vm_service.hv_pool.run(vm_service.hv.set_memory, name, 128)
    vm_service.placement.release(name)
    found = [f for f in await reconcile(vm_service) if f["vm"] == name]
    assert [f["finding"] for f in found] == ["size_changed"], found
    assert (await memory_counts(vm_service, name))["record"] == (128, 256)
    await vm_service.delete(name, force=True, keep_disks=False)

    plain = await made(vm_service)
    await vm_service.start(plain)
    for mib in (128, 32):  # no balloon: neither way
        with pytest.raises(errors.Conflict, match="no balloon"):
            await resize(vm_service, plain, None, mib)
    await vm_service.delete(plain, force=True, keep_disks=False)
