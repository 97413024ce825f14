"""Reverting a VM to a snapshot on libvirt's test driver: the record, placement,
metadata and the snapshot's own definition follow the snapshot's size; refusals (quota,
devices changed since) change nothing."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import Any

import pytest

from novacron import errors
from novacron.net.nic import NicSpec
from novacron.vm import disks, domain_xml
from novacron.vm.quotas import Quota
from novacron.vm.reconcile import reconcile
from novacron.vm.resize import resize
from novacron.vm.revert import device_changes, revert, spec_then
from novacron.vm.service import VmService
from novacron.vm.spec import DiskSpec, VmSpec
from tests.unit.conftest import unique
from tests.unit.test_resize import made, same_size, shape, vcpu_counts


async def snapshot_placement(svc: VmService, name: str, snapshot: str) -> Any:
    """The placement the snapshot's definition carries (its metadata; its pins are
    made from it)."""
    described, _ = await svc.hv_pool.run(svc.hv.snapshot_description, name, snapshot)
    dom = ET.fromstring(described).find("domain")
    assert dom is not None
    managed = domain_xml.parse_managed(ET.tostring(dom, encoding="unicode"))
    assert managed is not None
    return managed.placement


async def test_a_revert_gives_the_vm_the_snapshots_size_everywhere(vm_service: VmService) -> None:
    name = await made(vm_service)
    await vm_service.snapshot_create(name, "small", "")
    await resize(vm_service, name, 2, 128)
    await vm_service.update(name, "always")
    await revert(vm_service, name, "small")
    assert await shape(vm_service, name) == same_size(1, 64)
    rec = await vm_service.records.get(name)
    assert rec is not None and rec.spec["restart"] == "always"  # the daemon's, kept
    assert await snapshot_placement(vm_service, name, "small") == rec.placement
    # nothing left for a restarted daemon's reconciliation to "finish"
    vm_service.placement.release(name)  # (a restarted daemon holds none before it reconciles)
    found = [f for f in await reconcile(vm_service) if f["vm"] == name]
    assert found == [], found
    assert await shape(vm_service, name) == same_size(1, 64)
    # and forward again, to a snapshot of the larger size
    await resize(vm_service, name, 2, 128)
    await vm_service.snapshot_create(name, "large", "")
    await resize(vm_service, name, 1, 96)
    await revert(vm_service, name, "large")
    assert await shape(vm_service, name) == same_size(2, 128)
    listed = await vm_service.snapshot_list(name)
    assert {s["name"]: s["current"] for s in listed} == {"small": False, "large": True}
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_a_running_vm_reverted_keeps_its_room_and_the_snapshots_vcpus(
    vm_service: VmService,
) -> None:
    name = await made(vm_service, max_vcpus=3)
    await vm_service.start(name)
    await vm_service.snapshot_create(name, "one", "")
    await resize(vm_service, name, 2, None)
    await revert(vm_service, name, "one")
    doc = await vm_service.get(name)
    assert (doc["state"], doc["desired_state"], doc["vcpus"], doc["max_vcpus"]) == (
        "running",
        "running",
        1,
        3,
    )
    assert await vcpu_counts(vm_service, name) == {
        "live": 1,
        "defined": 1,
        "most": 3,
        "record": (1, 3),
        "metadata": (1, 3),
        "placed": 3,  # the room is still reserved
    }
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_a_reverted_vm_never_runs_on_cpus_given_to_another_since(
    vm_service: VmService,
) -> None:
    """The snapshot's definition pins the VM where it was placed then: after a resize
    gave one of those threads to another dedicated VM, the revert places it anew and
    libvirt's definition pins it there."""
    config = replace(vm_service.config, dedicated_cpus="2-7,10-15", shared_cpus="0-1,8-9")
    svc = VmService(config, vm_service.hv, vm_service.store)
    svc.placement.load(svc.hv.numa_nodes())
    a = await made(svc, cpu_policy="dedicated")
    await resize(svc, a, 2, 64)
    await svc.snapshot_create(a, "two", "")
    then = await pins(svc, a)
    await resize(svc, a, 1, 64)
    b = await made(svc, cpu_policy="dedicated")
    taken = await pins(svc, b)
    assert taken <= then  # (the other VM got a thread the snapshot's pins name)
    await revert(svc, a, "two")
    now = await pins(svc, a)
    assert len(now) == 2 and not now & taken
    rec = await svc.records.get(a)
    assert rec is not None and rec.placement is not None
    assert now == {c for cell in rec.placement["cells"] for c in cell["cpus"]}
    for name in (a, b):
        await svc.delete(name, force=True, keep_disks=False)


async def pins(svc: VmService, name: str) -> set[int]:
    """The host threads libvirt's definition pins the VM's vCPUs to (single threads,
    as a dedicated placement pins them)."""
    root = ET.fromstring(await svc.hv_pool.run(svc.hv.xml, name))
    return {int(p.attrib["cpuset"]) for p in root.findall("cputune/vcpupin")}


async def test_a_revert_the_quota_host_or_devices_refuse_changes_nothing(
    vm_service: VmService,
) -> None:
    tenant = unique("rv")
    name = await made(vm_service, tenant=tenant)
    await resize(vm_service, name, 2, 64)
    await vm_service.snapshot_create(name, "large", "")
    rec = await vm_service.records.get(name)
    assert rec is not None
    await _snapshot_with_spec(vm_service, name, "huge", {**rec.spec, "vcpus": 4096})
    await resize(vm_service, name, 1, 64)
    before = await shape(vm_service, name)
    described = await vm_service.hv_pool.run(vm_service.hv.snapshot_description, name, "large")
    placed = vm_service.placement.report()
    await vm_service.quotas.set(tenant, Quota(max_vcpus=1))
    with pytest.raises(errors.QuotaExceeded):
        await revert(vm_service, name, "large")
    await vm_service.quotas.set(tenant, Quota())
    with pytest.raises(errors.InsufficientResources):  # more than the host has
        await revert(vm_service, name, "huge")
    assert await shape(vm_service, name) == before
    assert vm_service.placement.report() == placed
    again = await vm_service.hv_pool.run(vm_service.hv.snapshot_description, name, "large")
    assert again == described
    # a disk added since: refused, naming it
    await disks.attach(vm_service, name, DiskSpec(size_gib=1))
    with pytest.raises(errors.Conflict, match=r"disk vda added since") as caught:
        await revert(vm_service, name, "large")
    assert caught.value.details["devices"] == ["disk vda added since"]
    assert (await shape(vm_service, name))["record"] == (1, 64)
    await vm_service.delete(name, force=True, keep_disks=False)


async def _snapshot_with_spec(
    svc: VmService, name: str, snapshot: str, spec: dict[str, Any]
) -> None:
    """A snapshot whose definition says the VM had ``spec`` (as one taken before a
    resize this host could no longer place)."""
    import json

    await svc.snapshot_create(name, snapshot, "")
    described, current = await svc.hv_pool.run(svc.hv.snapshot_description, name, snapshot)
    doc = ET.fromstring(described)
    spec_el = doc.find(
        f"domain/metadata/{{{domain_xml.METADATA_NS}}}vm/{{{domain_xml.METADATA_NS}}}spec"
    )
    assert spec_el is not None
    spec_el.text = json.dumps(spec, sort_keys=True)
    await svc.hv_pool.run(
        svc.hv.snapshot_describe_again, name, ET.tostring(doc, encoding="unicode"), current
    )


def test_device_changes_name_what_was_added_and_removed() -> None:
    a = NicSpec(network="n", mac="52:54:00:00:00:01")
    b = NicSpec(network="n", mac="52:54:00:00:00:02")
    then = VmSpec(name="v", vcpus=1, memory_mib=64, disks=(DiskSpec(size_gib=1),), nics=(a,))
    now = VmSpec(
        name="v",
        vcpus=1,
        memory_mib=64,
        disks=(DiskSpec(size_gib=2), DiskSpec(size_gib=1)),
        nics=(b,),
    )
    assert device_changes(then, then) == []
    assert device_changes(now, then) == [
        "disk vdb added since",
        "nic 52:54:00:00:00:02 added since",
        "nic 52:54:00:00:00:01 removed since",
    ]


def test_a_description_without_novacrons_metadata_has_no_spec() -> None:
    now = VmSpec(name="v", vcpus=1, memory_mib=64)
    assert spec_then("<domainsnapshot><name>s</name></domainsnapshot>", now) is None
    bare = "<domainsnapshot><name>s</name><domain><name>v</name></domain></domainsnapshot>"
    assert spec_then(bare, now) is None
