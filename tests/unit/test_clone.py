"""vm.clone on libvirt's test driver: the copy is a new VM with the source's settings,
its own volumes (copied by the storage pool), UUID and MACs; every refusal leaves
nothing behind. (A copy's content is checked against the real dir pool in
tests/system/test_disks.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt
import pytest

from novacron import errors
from novacron.net.nic import NicSpec
from novacron.vm import domain_xml
from novacron.vm.clone import clone
from novacron.vm.quotas import Quota
from novacron.vm.service import VmService
from novacron.vm.spec import DiskSpec, VmSpec
from tests.unit.conftest import unique


def pool(svc: VmService) -> list[str]:
    return sorted(Path(p).name for p in svc.hv.pool_volumes(svc.config.storage_pool))


async def definition(svc: VmService, name: str) -> dict[str, Any]:
    xml = await svc.hv_pool.run(svc.hv.xml, name)
    managed = domain_xml.parse_managed(xml)
    assert managed is not None
    return {
        "disks": sorted((d.target, d.path) for d in domain_xml.parse_disks(xml)),
        "spec": managed.spec,
    }


async def test_a_clone_is_a_new_vm_with_copies_of_the_volumes(vm_service: VmService) -> None:
    svc = vm_service
    tenant, source, name = unique("t"), unique("src"), unique("copy")
    spec = VmSpec(
        name=source,
        vcpus=2,
        memory_mib=96,
        tenant=tenant,
        disks=(DiskSpec(size_gib=2), DiskSpec(size_gib=1, format="raw")),
        nics=(NicSpec("net1", "52:54:00:00:10:01", "e1000"),),
        restart="never",
    )
    await svc.create(spec, start=False)
    before = await svc.get(source)
    doc = await clone(svc, source, name, start=False)
    assert doc["name"] == name and doc["tenant"] == tenant and doc["state"] == "stopped"
    assert doc["uuid"] != before["uuid"]
    assert (doc["vcpus"], doc["memory_mib"], doc["restart"]) == (2, 96, "never")
    images = svc.config.images_dir
    assert [(d["target"], d["path"], d["size_gib"]) for d in doc["disks"]] == [
        ("vda", str(images / f"{name}-vda.qcow2"), 2),
        ("vdb", str(images / f"{name}-vdb.raw"), 1),
    ]
    [nic] = doc["nics"]
    assert (nic["network"], nic["model"]) == ("net1", "e1000")
    assert nic["mac"] != "52:54:00:00:10:01" and nic["mac"].startswith("52:54:00:")
    # the record and the domain agree; the source is as it was
    rec = await svc.records.get(name)
    assert rec is not None and VmSpec.from_dict(rec.spec).name == name
    got = await definition(svc, name)
    assert got["disks"] == [(d["target"], d["path"]) for d in doc["disks"]]
    assert got["spec"] == rec.spec
    assert await svc.get(source) == before
    assert [v for v in pool(svc) if v.startswith(name)] == [f"{name}-vda.qcow2", f"{name}-vdb.raw"]
    usage = (await svc.quotas.report(tenant, await svc.records.all()))["used"]
    assert usage == {"vcpus": 4, "memory_mib": 192, "vms": 2, "disk_gib": 6}
    started = await clone(svc, name, unique("again"), start=True)  # a clone of a clone
    assert started["state"] == "running"


async def test_refusals_leave_nothing_behind(vm_service: VmService) -> None:
    svc = vm_service
    tenant, source, name = unique("t"), unique("src"), unique("copy")
    await svc.create(
        VmSpec(name=source, vcpus=1, memory_mib=64, tenant=tenant, disks=(DiskSpec(size_gib=3),)),
        start=False,
    )
    taken = unique("taken")
    await svc.create(VmSpec(name=taken, vcpus=1, memory_mib=64, tenant=tenant), start=False)
    given = unique("given")
    await svc.create(
        VmSpec(name=given, vcpus=1, memory_mib=64, disks=(DiskSpec(path="/srv/img/a.raw"),)),
        start=False,
    )
    volumes, records = pool(svc), len(await svc.records.all())

    with pytest.raises(errors.NotFound):
        await clone(svc, unique("ghost"), name, start=False)
    for existing in (source, taken):
        with pytest.raises(errors.AlreadyExists, match="already exists"):
            await clone(svc, source, existing, start=False)
    with pytest.raises(errors.InvalidParams, match=r"given by path \(vda\)") as path:
        await clone(svc, given, name, start=False)
    assert path.value.details == {"param": "name", "targets": ["vda"]}
    await svc.quotas.set(tenant, Quota(max_disk_gib=5))
    with pytest.raises(errors.QuotaExceeded) as quota:
        await clone(svc, source, name, start=False)
    assert quota.value.details["resource"] == "disk_gib"
    await svc.quotas.set(tenant, Quota())
    await svc.start(source)
    with pytest.raises(errors.Conflict, match="must be stopped") as running:
        await clone(svc, source, name, start=False)
    assert running.value.details == {"vm": source, "state": "running"}
    await svc.stop(source)
    await svc.cordon.set("maintenance", "unix:root")
    with pytest.raises(errors.Conflict, match="cordoned"):
        await clone(svc, source, name, start=False)
    await svc.cordon.clear()
    assert pool(svc) == volumes and len(await svc.records.all()) == records
    assert await svc.records.get(name) is None
    # a volume of the copy's name already in the pool (kept from a deleted VM): refused,
    # and the copy's other volumes and its definition are taken back
    await svc.new_volume(name, "vda", DiskSpec(size_gib=1))
    with pytest.raises(errors.Conflict, match="already exists"):
        await clone(svc, source, name, start=False)
    assert await svc.records.get(name) is None
    assert await svc.hv_pool.run(svc.hv.lookup, name) is None


async def test_devices_attached_outside_novacron_are_refused_unless_left_out(
    vm_service: VmService,
) -> None:
    svc = vm_service
    tenant, source, name = unique("t"), unique("src"), unique("copy")
    await svc.create(
        VmSpec(
            name=source,
            vcpus=1,
            memory_mib=64,
            tenant=tenant,
            disks=(DiskSpec(size_gib=1),),
            nics=(NicSpec("net1", "52:54:00:00:20:01"),),
        ),
        start=False,
    )
    assert await clone(svc, source, unique("plain"), start=False)  # (nothing outside)
    extra_disk = (
        "<disk type='file' device='disk'><source file='/srv/img/extra.raw'/>"
        "<target dev='vdk' bus='virtio'/></disk>"
    )
    extra_nic = "<interface type='user'><mac address='52:54:00:AB:CD:EF'/></interface>"

    def attach_outside() -> None:  # as an operator's `virsh edit` would
        xml = svc.hv.domain(source).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        svc.hv.conn.defineXML(xml.replace("</devices>", extra_disk + extra_nic + "</devices>"))

    await svc.hv_pool.run(attach_outside)
    volumes, records = pool(svc), len(await svc.records.all())
    with pytest.raises(errors.Conflict, match="attached outside NovaCron") as refused:
        await clone(svc, source, name, start=False)
    outside = ["disk vdk (/srv/img/extra.raw)", "nic 52:54:00:ab:cd:ef"]
    assert refused.value.details == {"vm": source, "devices": outside}
    assert pool(svc) == volumes and len(await svc.records.all()) == records  # nothing made
    copy = await clone(svc, source, name, start=False, partial=True)
    assert copy["left_out"] == outside
    assert [d["target"] for d in copy["disks"]] == ["vda"]
    xml = await svc.hv_pool.run(svc.hv.xml, name)
    assert [d.target for d in domain_xml.parse_disks(xml)] == ["vda"]
    assert len(domain_xml.parse_interfaces(xml)) == 1
