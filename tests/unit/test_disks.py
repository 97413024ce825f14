"""Attaching and detaching disks on libvirt's test driver: the spec (record and domain
metadata), libvirt's domain and the daemon's pool change together, device names are
never reused while in use, and a refusal changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from novacron import errors
from novacron.vm import domain_xml
from novacron.vm.disks import attach, detach, refuse_v2_with_snapshots, resize
from novacron.vm.quotas import Quota
from novacron.vm.reconcile import reconcile
from novacron.vm.service import VmService
from novacron.vm.spec import DiskSpec, VmSpec
from tests.unit.conftest import unique


async def made(svc: VmService, *disks: DiskSpec, tenant: str = "default") -> str:
    name = unique("dk")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64, tenant=tenant, disks=disks), False)
    return name


async def view(svc: VmService, name: str) -> dict[str, Any]:
    """The VM's disks as the record, the domain's metadata and libvirt's XML have them."""
    xml = await svc.hv_pool.run(svc.hv.xml, name)
    managed = domain_xml.parse_managed(xml)
    rec = await svc.records.get(name)
    assert managed is not None and rec is not None
    record = VmSpec.from_dict(rec.spec)
    assert VmSpec.from_dict(managed.spec).disks == record.disks
    # (libvirt keeps a domain's disks sorted by bus and name; the spec, in attach order)
    return {
        "spec": sorted(zip(record.disk_targets(), svc.disk_paths(record), strict=True)),
        "libvirt": sorted((d.target, d.path) for d in domain_xml.parse_disks(xml)),
    }


def pool(svc: VmService, name: str) -> list[str]:
    """The VM's volumes in the daemon's pool, as libvirt lists them."""
    paths = svc.hv.pool_volumes(svc.config.storage_pool)
    return sorted(Path(p).name for p in paths if Path(p).name.startswith(f"{name}-"))


async def test_a_new_volume_is_attached_to_a_stopped_vm(vm_service: VmService) -> None:
    svc = vm_service
    name = await made(svc, DiskSpec(size_gib=1))
    doc = await attach(svc, name, DiskSpec(size_gib=2, format="raw"))
    assert [d["target"] for d in doc["disks"]] == ["vda", "vdb"]
    got = await view(svc, name)
    assert got["spec"] == got["libvirt"]
    assert pool(svc, name) == [f"{name}-vda.qcow2", f"{name}-vdb.raw"]
    # a spec whose disks sit where their position puts them writes no target (an
    # earlier release reads it)
    rec = await svc.records.get(name)
    assert rec is not None and all("target" not in d for d in rec.spec["disks"])


async def test_a_running_vm_is_hot_plugged_or_left_as_it_was(vm_service: VmService) -> None:
    """The test driver cannot hot-plug or unplug (QEMU can: tests/system/test_disks.py):
    the refusal leaves no device, no record change and no volume behind."""
    svc = vm_service
    name = await made(svc, DiskSpec(size_gib=1))
    await svc.start(name)
    before = await view(svc, name)
    with pytest.raises(errors.Conflict, match="not supported"):
        await attach(svc, name, DiskSpec(size_gib=2))
    assert await view(svc, name) == before
    assert pool(svc, name) == [f"{name}-vda.qcow2"]
    with pytest.raises(errors.Conflict, match="not supported"):
        await detach(svc, name, "vda", keep_volume=False)
    assert await view(svc, name) == before
    assert pool(svc, name) == [f"{name}-vda.qcow2"]
    await svc.pause(name)
    with pytest.raises(errors.Conflict, match="paused guest cannot release"):
        await detach(svc, name, "vda", keep_volume=False)
    assert await view(svc, name) == before


async def test_detach_frees_a_name_and_the_next_attach_takes_it(
    vm_service: VmService, tmp_path: Path
) -> None:
    svc = vm_service
    image = tmp_path / "image.raw"
    image.write_bytes(b"\0" * 4096)
    name = await made(svc, DiskSpec(size_gib=1), DiskSpec(size_gib=1), DiskSpec(path=str(image)))
    doc = await detach(svc, name, "vdb", keep_volume=False)
    assert doc["volumes_deleted"] == [str(svc.config.images_dir / f"{name}-vdb.qcow2")]
    assert pool(svc, name) == [f"{name}-vda.qcow2"]
    got = await view(svc, name)
    assert (
        got["spec"]
        == got["libvirt"]
        == [
            ("vda", str(svc.config.images_dir / f"{name}-vda.qcow2")),
            ("vdc", str(image)),  # keeps its name: the guest's fstab may say vdc
        ]
    )
    await attach(svc, name, DiskSpec(size_gib=1))
    got = await view(svc, name)
    rec = await svc.records.get(name)
    assert rec is not None
    assert VmSpec.from_dict(rec.spec).disk_targets() == ["vda", "vdc", "vdb"]
    assert rec.spec["disks"][1]["target"] == "vdc" and rec.spec["disks"][2]["target"] == "vdb"
    assert got["spec"] == got["libvirt"]
    # the image named by path is the administrator's: detached, never deleted
    assert (await detach(svc, name, "vdc", keep_volume=False))["volumes_deleted"] == []
    assert image.exists()
    # kept on request
    assert (await detach(svc, name, "vdb", keep_volume=True))["volumes_deleted"] == []
    assert f"{name}-vdb.qcow2" in pool(svc, name)
    with pytest.raises(errors.NotFound, match="its disks: vda"):
        await detach(svc, name, "vdb", keep_volume=False)
    # a restarted daemon rebuilding the domain from the record puts each disk where it was
    await svc.hv_pool.run(svc.hv.undefine, name)
    await reconcile(svc)
    got = await view(svc, name)
    assert got["spec"] == got["libvirt"]


async def test_attach_counts_against_the_disk_quota(vm_service: VmService) -> None:
    svc = vm_service
    tenant = unique("t")
    name = await made(svc, DiskSpec(size_gib=3), tenant=tenant)
    await svc.quotas.set(tenant, Quota(max_disk_gib=4))
    before = await view(svc, name)
    with pytest.raises(errors.QuotaExceeded) as info:
        await attach(svc, name, DiskSpec(size_gib=2))
    assert info.value.details["resource"] == "disk_gib" and info.value.details["used"] == 3
    assert await view(svc, name) == before and pool(svc, name) == [f"{name}-vda.qcow2"]
    await attach(svc, name, DiskSpec(size_gib=1))
    await attach(svc, name, DiskSpec(path="/srv/images/not-counted.qcow2"))
    assert (await svc.quotas.report(tenant, await svc.records.all()))["used"]["disk_gib"] == 4


async def test_a_failed_attach_leaves_no_volume_and_no_device(vm_service: VmService) -> None:
    svc = vm_service
    name = await made(svc)
    # the volume's name is taken in the pool (a volume kept from a detach, say)
    await svc.new_volume(name, "vda", DiskSpec(size_gib=1))
    with pytest.raises(errors.Conflict, match="already exists"):
        await attach(svc, name, DiskSpec(size_gib=1))
    assert (await view(svc, name))["libvirt"] == []
    assert pool(svc, name) == [f"{name}-vda.qcow2"]  # the one that was there, only


async def test_at_most_sixteen_disks(vm_service: VmService) -> None:
    svc = vm_service
    name = await made(svc, *(DiskSpec(path=f"/img/{i}.raw", format="raw") for i in range(16)))
    with pytest.raises(errors.InvalidParams, match="16 disks"):
        await attach(svc, name, DiskSpec(path="/img/x.raw"))


async def test_resize_refusals_change_nothing(vm_service: VmService, tmp_path: Path) -> None:
    """What vm.disk.resize refuses before touching libvirt; the test driver cannot grow a
    volume at all (QEMU and the dir pool can: tests/system/test_disks.py), and that
    failure changes no record either."""
    svc = vm_service
    tenant = unique("t")
    image = str(tmp_path / "given.raw")
    name = await made(svc, DiskSpec(size_gib=2), DiskSpec(path=image), tenant=tenant)

    async def sizes() -> list[int | None]:
        rec = await svc.records.get(name)
        assert rec is not None
        return [d.size_gib for d in VmSpec.from_dict(rec.spec).disks]

    with pytest.raises(errors.NotFound, match=r"its disks: vda, vdb\)"):
        await resize(svc, name, "vdc", 3)
    # a disk plugged in outside NovaCron: vm.get lists it, the refusal says where it is from
    xml = await svc.hv_pool.run(svc.hv.xml, name)
    outside = domain_xml.DiskDevice(str(tmp_path / "outside.raw"), "raw", "vdz")
    await svc.hv_pool.run(svc.hv.define, domain_xml.with_disk(xml, outside))
    assert "vdz" in [d["target"] for d in (await svc.get(name))["disks"]]
    for refused in (resize(svc, name, "vdz", 3), detach(svc, name, "vdz", keep_volume=False)):
        with pytest.raises(errors.NotFound, match="vdz was attached outside NovaCron") as out:
            await refused
        assert out.value.details == {"vm": name, "target": "vdz"}
    with pytest.raises(errors.InvalidParams, match="given by path") as given:
        await resize(svc, name, "vdb", 3)
    assert given.value.details == {"param": "target", "path": image}
    with pytest.raises(errors.InvalidParams, match="only grows") as shrink:
        await resize(svc, name, "vda", 1)
    assert shrink.value.details == {"param": "size_gib", "size_gib": 2}
    same = await resize(svc, name, "vda", 2)  # already that size: nothing to do
    assert [(d["target"], d["size_gib"]) for d in same["disks"]] == [
        ("vda", 2),
        ("vdb", None),
        ("vdz", None),
    ]
    await svc.quotas.set(tenant, Quota(max_disk_gib=4))
    with pytest.raises(errors.QuotaExceeded) as quota:
        await resize(svc, name, "vda", 5)
    assert quota.value.details["resource"] == "disk_gib" and quota.value.details["used"] == 2
    with pytest.raises(errors.Conflict, match="not supported"):
        await resize(svc, name, "vda", 4)  # within the quota; the test driver cannot
    assert await sizes() == [2, None]
    await svc.start(name)
    with pytest.raises(errors.Conflict, match="not supported"):
        await resize(svc, name, "vda", 3)
    assert await sizes() == [2, None]
    assert (await svc.quotas.report(tenant, await svc.records.all()))["used"]["disk_gib"] == 2


async def test_a_version_2_image_holding_a_snapshot_is_refused_growth(tmp_path: Path) -> None:
    """Volumes made by an older daemon (libvirt makes qcow2 version 2 by default): QEMU
    would refuse to grow one that holds a snapshot; the daemon says why and what to do."""
    path = tmp_path / "old.qcow2"
    for args in (
        ["create", "-f", "qcow2", "-o", "compat=0.10", str(path), "1M"],
        ["snapshot", "-c", "s0", str(path)],
    ):
        await trio.run_process(["qemu-img", *args], capture_stdout=True)
    with pytest.raises(errors.Conflict, match="version 2 image holding 1 snapshot") as old:
        await refuse_v2_with_snapshots("vm1", "vda", str(path))
    assert "qemu-img amend -o compat=1.1" in old.value.message
    assert old.value.details == {
        "vm": "vm1",
        "target": "vda",
        "path": str(path),
        "qcow2_version": 2,
        "snapshots": 1,
    }
    await trio.run_process(["qemu-img", "amend", "-o", "compat=1.1", str(path)])
    await refuse_v2_with_snapshots("vm1", "vda", str(path))  # version 3: grows
    await refuse_v2_with_snapshots("vm1", "vda", str(tmp_path / "gone.qcow2"))  # left to QEMU
