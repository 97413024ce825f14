"""Changing a stopped VM's vCPUs and memory (``vm.update`` with ``vcpus``/``memory_mib``).

Checked as a create is (the tenant's quota without the VM's current share, a NUMA
placement for the new size, hugepage multiples); then the record is written first and
the domain defined after it from its own XML (``domain_xml.resized``: devices, disk paths
and everything else stay as libvirt has them). A crash in between leaves the record
ahead of the domain; reconciliation finishes it (finding ``resized``). A refusal or
failure changes nothing: the old placement is taken back, the record restored.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.vm import domain_xml
from novacron.vm.service import VmService, log
from novacron.vm.spec import VmSpec, check_hugepages


async def resize(vms: VmService, name: str, vcpus: int | None, memory_mib: int | None) -> None:
    tenant = (await vms.record(name)).tenant
    # the tenant's lock first, as vm.create takes them (a VM's tenant never changes)
    async with vms.tenant_lock(tenant), vms.changing(name):
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        grown = replace(
            spec,
            vcpus=spec.vcpus if vcpus is None else vcpus,
            memory_mib=spec.memory_mib if memory_mib is None else memory_mib,
        )
        if grown == spec:
            return
        runtime = await vms.hv_pool.run(vms.hv.state, name)
        if runtime.state != "stopped":
            raise errors.Conflict(
                f"vm {name!r} must be stopped to change its vCPUs or memory"
                f" (it is {runtime.state})",
                {"vm": name, "state": runtime.state},
            )
        check_hugepages(grown)
        others = [r for r in await vms.records.all() if r.name != name]
        await vms.quotas.check(grown, others)
        with trio.CancelScope(shield=True):
            placement = _place(vms, name, grown, rec.placement)
            try:
                xml = domain_xml.resized(await vms.hv_pool.run(vms.hv.xml, name), grown, placement)
                await vms.records.set_spec(name, grown.to_dict(), placement)
                try:
                    await vms.hv_pool.run(vms.hv.define, xml)
                except BaseException:
                    await vms.records.set_spec(name, rec.spec, rec.placement)
                    raise
            except BaseException:
                if rec.placement is not None:  # the old placement back
                    vms.placement.release(name)
                    vms.placement.restore(name, rec.placement)
                raise
    log.info(
        "vm.resized",
        extra=kv(
            vm=name,
            vcpus=f"{spec.vcpus}->{grown.vcpus}",
            memory_mib=f"{spec.memory_mib}->{grown.memory_mib}",
        ),
    )


def _place(
    vms: VmService, name: str, spec: VmSpec, old: dict[str, Any] | None
) -> dict[str, Any] | None:
    """A placement for ``spec`` in place of the VM's ``old`` one (taken back if the new
    one is refused). A VM recorded without a placement (made before placement existed)
    stays without one."""
    if old is None:
        return None
    vms.placement.release(name)
    try:
        return vms.placement.allocate(name, spec)
    except BaseException:
        vms.placement.restore(name, old)
        raise
