"""The unplug helper on libvirt's test driver, which cannot unplug: a device the running
domain no longer has is not asked for (the call returns, nothing is sent), one it has is
asked for and the driver's refusal is the caller's answer. The wait and the timeout are
a real guest's: tests/system/test_disks.py (one that lets go, one that never does)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from novacron import errors
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec
from novacron.vm.unplug import unplug
from tests.unit.conftest import unique

DISK = "<disk type='file' device='disk'><source file='/x.raw'/><target dev='vdq'/></disk>"


@dataclass(frozen=True)
class Found:
    alias: str | None


async def test_a_device_already_gone_is_not_asked_for(vm_service: VmService) -> None:
    svc = vm_service
    name = unique("up")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), True)
    seen: list[str] = []

    def gone(live: str) -> Found | None:
        seen.append(live)
        return None

    await unplug(svc, name, DISK, gone, 1.0, "disk 'vdq'", {"vm": name})
    assert len(seen) == 1 and f"<name>{name}</name>" in seen[0]  # the running domain's XML


@pytest.mark.parametrize("alias", [None, "virtio-disk9"])
async def test_the_drivers_refusal_is_the_answer(vm_service: VmService, alias: str | None) -> None:
    svc = vm_service
    name = unique("up")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), True)
    with pytest.raises(errors.Conflict, match="not supported"):
        await unplug(svc, name, DISK, lambda _: Found(alias), 1.0, "disk 'vdq'", {"vm": name})
