"""The storage reserve on libvirt's test driver: what would leave the pool with less
than ``[hypervisor] storage_reserve_mib`` free is refused before anything changes."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from novacron import errors
from novacron.vm import disks, storage_room
from novacron.vm.service import VmService
from novacron.vm.spec import DiskSpec, VmSpec
from tests.unit.conftest import unique

MIB = 1 << 20


async def free_bytes(vms: VmService) -> int:
    free: int = await trio.to_thread.run_sync(vms.hv.pool_free_bytes, vms.config.storage_pool)
    return free


def reserve_past(vms: VmService, free: int) -> None:
    """The reserve made larger than what the pool has free."""
    vms.config = replace(vms.config, storage_reserve_mib=free // MIB + 1)


async def test_the_reserve_is_kept_free_of_new_volumes(vm_service: VmService) -> None:
    vms = vm_service
    assert storage_room.reserve_bytes(vms) == 1024 * MIB  # the default
    free = await free_bytes(vms)
    name = unique("room")
    reserve_past(vms, free)
    with pytest.raises(errors.InsufficientResources, match="storage_reserve_mib") as caught:
        await vms.create(VmSpec(name, 1, 64, disks=(DiskSpec(size_gib=1),)), start=False)
    assert caught.value.details == {
        "vm": name,
        "pool": vms.config.storage_pool,
        "free_bytes": free,
        "needed_bytes": 0,  # (an empty thin volume writes nothing yet)
        "reserve_bytes": (free // MIB + 1) * MIB,
    }
    assert await vms.records.get(name) is None  # nothing made
    assert (await trio.to_thread.run_sync(vms.hv.pool_space, vms.config.storage_pool))[
        "volumes"
    ] == 0
    # a VM without new volumes takes nothing from the pool
    await vms.create(VmSpec(name, 1, 64), start=False)
    assert (await vms.get(name))["disks"] == []


async def test_a_disk_is_neither_added_nor_grown_into_the_reserve(vm_service: VmService) -> None:
    vms = vm_service
    name = unique("room")
    await vms.create(VmSpec(name, 1, 64, disks=(DiskSpec(size_gib=1),)), start=False)
    reserve_past(vms, await free_bytes(vms))
    with pytest.raises(errors.InsufficientResources, match="a new disk of vm"):
        await disks.attach(vms, name, DiskSpec(size_gib=1))
    with pytest.raises(errors.InsufficientResources, match="would promise more"):
        await disks.resize(vms, name, "vda", 2)
    got = await vms.get(name)
    assert [d["size_gib"] for d in got["disks"]] == [1]  # unchanged
    vms.config = replace(vms.config, storage_reserve_mib=0)  # no reserve: it goes
    await disks.attach(vms, name, DiskSpec(size_gib=1))
    assert [d["size_gib"] for d in (await vms.get(name))["disks"]] == [1, 1]
    # (libvirt's test driver cannot grow a volume: the system tests grow real ones)


async def test_what_is_written_at_once_counts_with_the_reserve(vm_service: VmService) -> None:
    vms = vm_service
    free = await free_bytes(vms)
    reserve = storage_room.reserve_bytes(vms)
    await storage_room.check(vms, free - reserve, "a copy", {})
    with pytest.raises(errors.InsufficientResources, match="a copy needs") as caught:
        await storage_room.check(vms, free - reserve + 1, "a copy", {"vm": "v"})
    assert caught.value.details["needed_bytes"] == free - reserve + 1
    assert caught.value.details["vm"] == "v"
    vms.config = replace(vms.config, storage_reserve_mib=0)
    await storage_room.check(vms, free, "a copy", {})  # the pool filled to its last byte


def test_a_dir_pool_has_free_what_any_user_may_write(tmp_path: Path) -> None:
    """Not the blocks only root may write (ext4's reserve), which libvirt counts: QEMU
    runs as its own user."""
    st = os.statvfs(tmp_path)
    everyone = st.f_bavail * st.f_frsize
    pool = f"<pool type='dir'><name>p</name><target><path>{tmp_path}</path></target></pool>"
    assert storage_room.writable(pool, everyone + (5 << 30)) == everyone
    assert storage_room.writable(pool, 12345) == 12345  # (libvirt's, when it is less)
    gone = pool.replace(str(tmp_path), str(tmp_path / "not-here"))
    assert storage_room.writable(gone, 7 << 30) == 7 << 30
    other = f"<pool type='logical'><name>vg</name><target><path>{tmp_path}</path></target></pool>"
    assert storage_room.writable(other, 7 << 40) == 7 << 40


async def test_short_is_whether_the_pool_has_less_than_the_reserve(
    vm_service: VmService,
) -> None:
    vms = vm_service
    assert await storage_room.short(vms) is False
    reserve_past(vms, await free_bytes(vms))
    assert await storage_room.short(vms) is True
    vms.config = replace(vms.config, storage_pool="no-such-pool")
    assert await storage_room.short(vms) is None  # (not known: the last answer stands)


async def test_the_watch_says_when_the_pool_falls_short_and_has_room_again(
    vm_service: VmService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="novacron.vm")
    vms = vm_service
    watch = vms.storage
    changes: list[bool | None] = []
    watch.on_change = lambda: changes.append(watch.short)
    assert (watch.short, changes) == (None, [])  # not looked yet
    await watch.look()
    await watch.look()
    assert (watch.short, changes) == (False, [False])  # (told once)
    config = vms.config
    reserve_past(vms, await free_bytes(vms))
    await watch.look()
    assert (watch.short, changes) == (True, [False, True])
    vms.config = replace(config, storage_pool="no-such-pool")
    await watch.look()  # (cannot be told: as it was)
    assert (watch.short, changes) == (True, [False, True])
    vms.config = config
    await watch.look()
    assert (watch.short, changes) == (False, [False, True, False])
    assert [r.message for r in caplog.records if r.message.startswith("storage.")] == [
        "storage.short",
        "storage.room",
    ]


async def test_volumes_promise_at_most_the_overcommit_times_the_pool(
    vm_service: VmService,
) -> None:
    """``[hypervisor] storage_overcommit``: the sum of the volumes' sizes stays within
    that many times the pool's size (libvirt's test driver: a made-up 100 GiB)."""
    vms = vm_service
    space = await trio.to_thread.run_sync(vms.hv.pool_space, vms.config.storage_pool)
    assert space["capacity_bytes"] == 100 << 30
    vms.config = replace(vms.config, storage_overcommit=0.05)  # 5 GiB
    name = unique("promised")
    await vms.create(VmSpec(name, 1, 64, disks=(DiskSpec(size_gib=4),)), start=False)
    with pytest.raises(errors.InsufficientResources, match="storage_overcommit") as caught:
        await disks.attach(vms, name, DiskSpec(size_gib=2))
    assert caught.value.details == {
        "vm": name,
        "pool": vms.config.storage_pool,
        "committed_bytes": 4 << 30,
        "capacity_bytes": 100 << 30,
        "promised_bytes": 2 << 30,
        "overcommit": 0.05,
    }
    with pytest.raises(errors.InsufficientResources, match="storage_overcommit"):
        await disks.resize(vms, name, "vda", 6)
    with pytest.raises(errors.InsufficientResources, match="storage_overcommit"):
        await vms.create(VmSpec(unique("more"), 1, 64, disks=(DiskSpec(size_gib=2),)), start=False)
    await disks.attach(vms, name, DiskSpec(size_gib=1))  # 5 GiB: as far as it goes
    assert [d["size_gib"] for d in (await vms.get(name))["disks"]] == [4, 1]
    vms.config = replace(vms.config, storage_overcommit=0.0)  # no bound
    await disks.attach(vms, name, DiskSpec(size_gib=50))
