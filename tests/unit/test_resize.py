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
    with pytest.raises(errors.Conflict, match="must be stopped"):
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
    assert "(1, 64) -> (2, 128)" in found[0]["detail"]
    assert await shape(vm_service, name) == same_size(2, 128)
    again = [f for f in await reconcile(vm_service) if f["vm"] == name]
    assert not [f for f in again if f["finding"] == "resized"]
    await vm_service.delete(name, force=True, keep_disks=False)
