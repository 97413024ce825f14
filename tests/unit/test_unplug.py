"""The unplug loop on libvirt's test driver, which cannot unplug: a detach that finds
nothing to wait for finishes under the VM's lock without asking the guest; one that finds
the device still plugged asks, and the driver's refusal is the caller's answer. Which
domain has a device plugged: only a running (or paused) one — a stopped domain's XML is
its definition. The wait, the timeout, and a stop while a detach waits are a real
guest's: tests/system/test_disks.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from novacron import errors
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec
from novacron.vm.unplug import Pending, plugged, until_released
from tests.unit.conftest import unique

DISK = "<disk type='file' device='disk'><source file='/x.raw'/><target dev='vdq'/></disk>"


@dataclass(frozen=True)
class Found:
    alias: str | None


async def test_a_finished_attempt_asks_nothing_and_runs_under_the_lock(
    vm_service: VmService,
) -> None:
    svc = vm_service
    name = unique("up")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), True)
    held: list[bool] = []

    async def attempt() -> Pending | None:
        held.append(svc.busy(name))
        return None

    await until_released(svc, name, attempt, 1.0, "disk 'vdq'", {"vm": name})
    assert held == [True] and not svc.busy(name)


@pytest.mark.parametrize("alias", [None, "virtio-disk9"])
async def test_the_drivers_refusal_is_the_answer(vm_service: VmService, alias: str | None) -> None:
    svc = vm_service
    name = unique("up")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), True)
    calls = 0

    async def attempt() -> Pending | None:
        nonlocal calls
        calls += 1
        return Pending(DISK, lambda _: Found(alias), alias)

    with pytest.raises(errors.Conflict, match="not supported"):
        await until_released(svc, name, attempt, 1.0, "disk 'vdq'", {"vm": name})
    assert calls == 1 and not svc.busy(name)  # (let go on the way out)


async def test_only_a_running_domain_has_a_device_plugged(vm_service: VmService) -> None:
    svc = vm_service
    name = unique("up")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), True)
    seen: list[str] = []

    def find(live: str) -> Found | None:
        seen.append(live)
        return Found("a")

    assert await plugged(svc, name, find) == Found("a")
    assert len(seen) == 1 and f"<name>{name}</name>" in seen[0]
    await svc.stop(name)
    assert await plugged(svc, name, find) is None
    assert await plugged(svc, unique("none"), find) is None  # no such domain
    assert len(seen) == 1
