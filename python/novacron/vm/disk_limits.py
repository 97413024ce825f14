"""Throttling a VM's disk (``vm.disk.limit``): how many bytes and operations a second
the guest may read and write, as QEMU enforces it (libvirt's ``<iotune>``), so one
tenant's busy VM cannot take a host's storage from the others.

Limits are part of each disk's spec (``vm.create``'s and ``vm.disk.attach``'s ``limits``),
so they are in the domain a VM is defined or redefined with, in a clone, and in the
domain XML a migration carries. Changed here, a running (or paused) VM's throttle changes
at once through QEMU and in the definition; a stopped VM's definition is rewritten with
the disk's new ``<iotune>``. libvirt is changed first and the record after it; a
failure in between is undone.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import trio

from novacron.logs import kv
from novacron.vm import domain_xml
from novacron.vm.disks import disk_index
from novacron.vm.service import VmService, log
from novacron.vm.spec import DiskLimits, VmSpec


async def _apply(vms: VmService, name: str, device: domain_xml.DiskDevice, running: bool) -> None:
    """Puts ``device``'s limits on the VM's disk ``device.target``."""
    if running:
        limits = device.limits or DiskLimits()
        params = {domain_xml.IOTUNE[k]: v for k, v in asdict(limits).items()}
        await vms.hv_pool.run(vms.hv.set_block_limits, name, device.target, params)
    else:
        xml = await vms.hv_pool.run(vms.hv.xml, name)
        await vms.hv_pool.run(vms.hv.define, domain_xml.with_disk_limits(xml, device))


async def limit(vms: VmService, name: str, target: str, changes: dict[str, int]) -> dict[str, Any]:
    """Sets the limits ``changes`` names on disk ``target`` (0 lifts one; the others
    stay as they are)."""
    async with vms.changing(name):
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        index = await disk_index(vms, spec, target)
        disks = spec.named_disks()
        was = disks[index].limits
        now = DiskLimits.of({**asdict(was or DiskLimits()), **changes})
        if now == was:
            return await vms.get(name)
        disks[index] = replace(disks[index], limits=now)
        path = vms.disk_paths(spec)[index]
        device = vms.disk_device(path, disks[index], target)
        runtime = await vms.hv_pool.run(vms.hv.state, name)
        running = runtime.state not in ("stopped", "crashed")
        with trio.CancelScope(shield=True):
            await _apply(vms, name, device, running)
            try:
                await vms.save_spec(name, spec.with_disks(disks), rec.placement)
            except BaseException:
                await _apply(vms, name, replace(device, limits=was), running)
                raise
        shown = now.to_dict() if now else "none"
        log.info("vm.disk_limited", extra=kv(vm=name, target=target, limits=shown))
    return await vms.get(name)
