"""The volumes a move makes and deletes (libvirt's test driver: its pool holds them in
memory): which disks are copied, where the copies go, what a failure leaves."""

from __future__ import annotations

import pytest
import trio

from novacron import errors
from novacron.migration import volume_copies
from novacron.vm import domain_xml, storage_room
from novacron.vm.service import VmService
from novacron.vm.spec import DiskSpec, VmSpec
from tests.migration_harness import source_xml
from tests.unit.conftest import unique

DISKS = (
    DiskSpec(size_gib=1),
    DiskSpec(path="/dev/null", format="raw"),
    DiskSpec(size_gib=2, format="raw"),
)


def test_only_the_disks_in_the_pool_are_copied(vm_service: VmService) -> None:
    spec = VmSpec("v", 1, 64, disks=DISKS)
    assert [t for t, _ in volume_copies.pool_disks(spec)] == ["vda", "vdc"]
    images = vm_service.config.images_dir
    assert volume_copies.sources(vm_service, spec) == [
        ("vda", str(images / "v-vda.qcow2")),
        ("vdc", str(images / "v-vdc.raw")),
    ]


def test_the_copies_are_named_in_the_definition_and_a_missing_disk_is_refused() -> None:
    xml = source_xml("v", disks=DISKS)
    moved = volume_copies.named_in(xml, ["vda", "vdc"], ["/here/a", "/here/c"])
    assert [d.path for d in domain_xml.parse_disks(moved)] == ["/here/a", "/dev/null", "/here/c"]
    with pytest.raises(errors.InvalidParams, match=r"do not match its spec: .* vdz"):
        volume_copies.named_in(xml, ["vdz"], ["/here/z"])


async def test_volumes_are_made_where_this_node_keeps_the_disk_and_deleted(
    vm_service: VmService,
) -> None:
    name = unique("copy")
    copies = volume_copies.pool_disks(VmSpec(name, 1, 64, disks=DISKS))
    pool = vm_service.config.storage_pool

    async def in_pool() -> set[str]:
        paths = await trio.to_thread.run_sync(vm_service.hv.pool_volumes, pool)
        return {p for p in paths if name in p}

    made = await volume_copies.make(vm_service, name, copies, empty=False)
    images = vm_service.config.images_dir
    assert made == [str(images / f"{name}-vda.qcow2"), str(images / f"{name}-vdc.raw")]
    assert await in_pool() == set(made)
    # a second set under the same names fails, and takes back what it made
    with pytest.raises(errors.AlreadyExists, match=r"must be deleted first") as caught:
        await volume_copies.make(vm_service, name, list(reversed(copies)), empty=True)
    assert caught.value.details == {"vm": name, "volume": f"{name}-vdc.raw"}
    assert await in_pool() == set(made)
    await volume_copies.delete(vm_service, [*made, "/nowhere/gone.raw"])  # (missing: no error)
    assert await in_pool() == set()


async def test_copies_the_pool_has_no_room_for_are_refused(vm_service: VmService) -> None:
    pool = vm_service.config.storage_pool
    free = await trio.to_thread.run_sync(vm_service.hv.pool_free_bytes, pool)
    reserve = storage_room.reserve_bytes(vm_service)
    assert reserve == 1 << 30  # [hypervisor] storage_reserve_mib's default
    assert free > reserve  # (libvirt's test driver: a fake 100 GiB or so)
    copies = volume_copies.pool_disks(VmSpec("v", 1, 64, disks=DISKS))
    await volume_copies.check_room(vm_service, "v", copies, free - reserve)
    with pytest.raises(errors.InsufficientResources, match="GiB free") as caught:
        await volume_copies.check_room(vm_service, "v", copies, free - reserve + 1)
    assert caught.value.details == {
        "vm": "v",
        "disk_bytes": free - reserve + 1,
        "pool": pool,
        "free_bytes": free,
        "needed_bytes": free - reserve + 1,
        "reserve_bytes": reserve,
    }
    await volume_copies.check_room(vm_service, "v", [], free * 2)  # (nothing to copy)


async def test_what_the_source_volumes_hold_is_their_allocation(vm_service: VmService) -> None:
    name = unique("copy")
    made = await volume_copies.make(
        vm_service, name, volume_copies.pool_disks(VmSpec(name, 1, 64, disks=DISKS)), empty=False
    )
    try:
        held = [
            await trio.to_thread.run_sync(vm_service.hv.volume_allocation, path) for path in made
        ]
        assert await volume_copies.source_bytes(vm_service, made) == sum(held)
        assert await volume_copies.source_bytes(vm_service, []) == 0
    finally:
        await volume_copies.delete(vm_service, made)
