"""Changing a VM's vCPUs and memory (``vm.update`` with ``vcpus``, ``max_vcpus``,
``memory_mib``, ``max_memory_mib``).

A stopped VM takes any size. It is checked as a create is (the tenant's quota without the
VM's current share, a NUMA placement for the new size, hugepage multiples); then the
record is written first and the domain defined after it from its own XML
(``domain_xml.resized``: devices, disk paths and everything else stay as libvirt has
them). A crash in between leaves the record ahead of the domain; reconciliation finishes
it (finding ``resized``). A refusal or failure changes nothing: the old placement is
taken back, the record restored.

A running VM made with room (``max_vcpus``, ``max_memory_mib``) has vCPUs plugged in, and
its balloon moved (the guest gives memory back or takes it), while it runs, up to those
maxima. Its placement and its tenant's quota already count the maxima, so nothing is
checked again. The record is written first, then libvirt changes the balloon and the
vCPUs (each in the definition and the guest; the record, and the balloon, put back if
libvirt refuses). A crash in between leaves the record ahead of libvirt; reconciliation
makes it follow libvirt's definition (finding ``size_changed``). vCPUs are taken out, and
the maxima changed, only while it is stopped: QEMU needs the guest to eject a vCPU and,
under TCG on QEMU 7.2, never reports it gone, so libvirt would lose track of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.vm import domain_xml
from novacron.vm.service import VmService, log
from novacron.vm.spec import VmSpec, check_hugepages, checked_room


async def resize(
    vms: VmService,
    name: str,
    vcpus: int | None,
    memory_mib: int | None,
    max_vcpus: int | None = None,
    max_memory_mib: int | None = None,
) -> None:
    tenant = (await vms.record(name)).tenant
    # the tenant's lock first, as vm.create takes them (a VM's tenant never changes)
    async with vms.tenant_lock(tenant), vms.changing(name):
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        grown = checked_room(
            replace(
                spec,
                vcpus=spec.vcpus if vcpus is None else vcpus,
                memory_mib=spec.memory_mib if memory_mib is None else memory_mib,
                max_vcpus=spec.max_vcpus if max_vcpus is None else max_vcpus,
                max_memory_mib=spec.max_memory_mib if max_memory_mib is None else max_memory_mib,
            )
        )
        if grown == spec:
            return
        runtime = await vms.hv_pool.run(vms.hv.state, name)
        if runtime.state == "stopped":
            await _resize_stopped(vms, name, rec.spec, grown, rec.placement)
        else:
            _check_live(name, runtime.state, spec, grown, max_vcpus, max_memory_mib)
            with trio.CancelScope(shield=True):
                await vms.save_spec(name, grown, rec.placement)
                try:
                    await _apply_live(vms, name, spec, grown)
                except BaseException:
                    # the record follows what libvirt defines the VM with after the failure
                    has, mib = await vms.hv_pool.run(vms.hv.defined_size, name)
                    await vms.save_spec(
                        name, replace(spec, vcpus=has, memory_mib=mib), rec.placement
                    )
                    raise
    log.info(
        "vm.resized",
        extra=kv(
            vm=name,
            live=runtime.state != "stopped",
            vcpus=f"{spec.vcpus}->{grown.vcpus}",
            max_vcpus=f"{spec.vcpu_slots}->{grown.vcpu_slots}",
            memory_mib=f"{spec.memory_mib}->{grown.memory_mib}",
            max_memory_mib=f"{spec.memory_ceiling_mib}->{grown.memory_ceiling_mib}",
        ),
    )


async def _apply_live(vms: VmService, name: str, was: VmSpec, now: VmSpec) -> None:
    """A running VM's balloon, then its vCPUs, from ``was``'s to ``now``'s (the balloon
    put back if the vCPUs are refused)."""
    if now.memory_mib != was.memory_mib:
        await vms.hv_pool.run(vms.hv.set_memory, name, now.memory_mib)
    if now.vcpus != was.vcpus:
        try:
            await vms.hv_pool.run(vms.hv.plug_vcpus, name, now.vcpus)
        except BaseException:
            if now.memory_mib != was.memory_mib:
                await vms.hv_pool.run(vms.hv.set_memory, name, was.memory_mib)
            raise


def _check_live(
    name: str,
    state: str,
    spec: VmSpec,
    grown: VmSpec,
    max_vcpus: int | None,
    max_memory_mib: int | None,
) -> None:
    """``conflict`` unless ``grown`` differs from ``spec`` only by vCPUs and memory a
    running VM has room for (``max_vcpus``, ``max_memory_mib``: the ones asked for)."""
    details = {"vm": name, "state": state}
    if max_vcpus is not None and max_vcpus != spec.vcpu_slots:
        raise errors.Conflict(f"vm {name!r} must be stopped to change its max_vcpus", details)
    if max_memory_mib is not None and max_memory_mib != spec.memory_ceiling_mib:
        raise errors.Conflict(f"vm {name!r} must be stopped to change its max_memory_mib", details)
    if grown.vcpus > spec.vcpus and spec.max_vcpus is None:
        raise errors.Conflict(
            f"vm {name!r} has no room for more vCPUs (it was made without max_vcpus): it"
            " must be stopped to change them",
            details,
        )
    if grown.vcpus < spec.vcpus:
        # QEMU needs the guest to eject a vCPU, and QEMU 7.2 under TCG never reports
        # one gone: libvirt would lose track of the guest's vCPUs
        raise errors.Conflict(
            f"vm {name!r} must be stopped to take vCPUs out (they are only plugged in while"
            " it runs)",
            details,
        )
    if grown.memory_mib != spec.memory_mib and spec.max_memory_mib is None:
        raise errors.Conflict(
            f"vm {name!r} has no balloon (it was made without max_memory_mib): it must be"
            " stopped to change its memory",
            details,
        )
    if state != "running":
        raise errors.Conflict(
            f"vm {name!r} must be running to change its vCPUs or memory, or stopped"
            f" (it is {state})",
            details,
        )


async def _resize_stopped(
    vms: VmService,
    name: str,
    was: dict[str, Any],
    grown: VmSpec,
    old: dict[str, Any] | None,
) -> None:
    await check_room(vms, name, grown)
    with trio.CancelScope(shield=True), placed_anew(vms, name, grown, old) as placement:
        xml = domain_xml.resized(await vms.hv_pool.run(vms.hv.xml, name), grown, placement)
        await vms.records.set_spec(name, grown.to_dict(), placement)
        try:
            await vms.hv_pool.run(vms.hv.define, xml)
        except BaseException:
            await vms.records.set_spec(name, was, old)
            raise


async def check_room(vms: VmService, name: str, spec: VmSpec) -> None:
    """VM ``name`` at ``spec``'s size, checked as a create is: whole hugepages, and the
    tenant's quota with the VM counted once, at that size."""
    check_hugepages(spec)
    others = [r for r in await vms.records.all() if r.name != name]
    await vms.quotas.check(spec, others)


@contextmanager
def placed_anew(
    vms: VmService, name: str, spec: VmSpec, old: dict[str, Any] | None
) -> Iterator[dict[str, Any] | None]:
    """A placement for ``spec`` in place of the VM's ``old`` one: ``old`` is taken back
    if the new one is refused, or if the block fails. A VM recorded without a placement
    (made before placement existed) stays without one."""
    if old is None:
        yield None
        return
    vms.placement.release(name)
    try:
        placement = vms.placement.allocate(name, spec)
    except BaseException:
        vms.placement.restore(name, old)
        raise
    try:
        yield placement
    except BaseException:
        vms.placement.release(name)
        vms.placement.restore(name, old)
        raise
