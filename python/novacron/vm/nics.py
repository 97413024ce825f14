"""Attaching and detaching a VM's NICs (``vm.nic.attach`` / ``vm.nic.detach``).

libvirt changes the persistent definition always and the running guest too when it
runs (hot-plug); then the VM's record and the domain's NovaCron metadata are updated,
so a restarted daemon (or one that adopts the domain) sees the same NICs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.net.nic import NicSpec, check_unique, interface_xml
from novacron.vm.service import VmService, log
from novacron.vm.spec import VmSpec


async def attach(vms: VmService, name: str, nic: NicSpec) -> dict[str, Any]:
    async with vms.changing(name):
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        if any(n.mac == nic.mac for n in spec.nics):
            raise errors.AlreadyExists(
                f"vm {name!r} already has a NIC with MAC {nic.mac}", {"vm": name, "mac": nic.mac}
            )
        grown = replace(spec, nics=(*spec.nics, nic))
        check_unique(grown.nics)
        if vms.nic_check is not None:
            await vms.nic_check(spec.tenant, (nic,))
        xml = interface_xml(nic, nic.network)
        with trio.CancelScope(shield=True):
            await vms.hv_pool.run(vms.hv.attach_device, name, xml)
            try:
                await vms.save_spec(name, grown, rec.placement)
            except BaseException:
                await vms.hv_pool.run(vms.hv.detach_device, name, xml)
                raise
        log.info("vm.nic_attached", extra=kv(vm=name, network=nic.network, mac=nic.mac))
    return await vms.get(name)


async def detach(vms: VmService, name: str, mac: str) -> dict[str, Any]:
    async with vms.changing(name):
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        found = [n for n in spec.nics if n.mac == mac]
        if not found:
            raise errors.NotFound(
                f"vm {name!r} has no NIC with MAC {mac}", {"vm": name, "mac": mac}
            )
        shrunk = replace(spec, nics=tuple(n for n in spec.nics if n.mac != mac))
        with trio.CancelScope(shield=True):
            await vms.hv_pool.run(
                vms.hv.detach_device, name, interface_xml(found[0], found[0].network)
            )
            await vms.save_spec(name, shrunk, rec.placement)
        log.info("vm.nic_detached", extra=kv(vm=name, network=found[0].network, mac=mac))
    return await vms.get(name)
