"""Attaching, detaching and limiting a VM's NICs (``vm.nic.attach`` / ``detach`` /
``limit``).

libvirt changes the persistent definition always and the running guest too when it
runs (hot-plug); then the VM's record and the domain's NovaCron metadata are updated,
so a restarted daemon (or one that adopts the domain) sees the same NICs. A running
guest's NIC is unplugged as a disk is (:mod:`novacron.vm.unplug`): only once the guest
has let go does it leave the definition and the record; a paused VM's is refused.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.net.nic import NicLimits, NicSpec, check_unique, interface_xml
from novacron.vm.domain_xml import InterfaceDevice, parse_interfaces
from novacron.vm.service import VmService, log
from novacron.vm.spec import VmSpec
from novacron.vm.unplug import TIMEOUT_S, Pending, until_released


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
    if nic.limits is not None and vms.nic_shaper is not None:
        await vms.nic_shaper(name)
    return await vms.get(name)


def _nic(spec: VmSpec, mac: str) -> NicSpec:
    """The VM's NIC with MAC ``mac`` (``not_found`` if it has none)."""
    for nic in spec.nics:
        if nic.mac == mac:
            return nic
    raise errors.NotFound(
        f"vm {spec.name!r} has no NIC with MAC {mac}", {"vm": spec.name, "mac": mac}
    )


async def limit(vms: VmService, name: str, mac: str, changes: dict[str, int]) -> dict[str, Any]:
    """Sets the limits ``changes`` names on NIC ``mac`` (0 lifts one; the others stay as
    they are): in the VM's spec, and on its tap at once when it runs
    (:mod:`novacron.net.shaper`)."""
    async with vms.changing(name):
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        found = _nic(spec, mac)
        was = found.limits
        now = NicLimits.of({**asdict(was or NicLimits()), **changes})
        if now == was:
            return await vms.get(name)
        nics = tuple(replace(n, limits=now) if n.mac == mac else n for n in spec.nics)
        with trio.CancelScope(shield=True):
            await vms.save_spec(name, replace(spec, nics=nics), rec.placement)
            if vms.nic_shaper is not None:
                await vms.nic_shaper(name)
        shown = now.to_dict() if now else "none"
        log.info("vm.nic_limited", extra=kv(vm=name, mac=mac, limits=shown))
    return await vms.get(name)


async def detach(
    vms: VmService, name: str, mac: str, timeout_s: float = TIMEOUT_S
) -> dict[str, Any]:
    """Takes NIC ``mac`` from a stopped VM's definition, or unplugs it from a running one
    (:mod:`novacron.vm.unplug`: the guest has ``timeout_s`` to release it; until it has,
    nothing changes) and then takes it from the definition."""
    taken: list[NicSpec] = []

    def find(live: str) -> InterfaceDevice | None:
        return next((i for i in parse_interfaces(live) if i.mac == mac), None)

    async def attempt() -> Pending | None:  # (under the VM's lock)
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        found = _nic(spec, mac)
        runtime = await vms.hv_pool.run(vms.hv.state, name)
        if runtime.state not in ("stopped", "crashed", "running"):
            raise errors.Conflict(
                f"vm {name!r} must be running or stopped to detach a NIC (it is "
                f"{runtime.state}: a paused guest cannot release one)",
                {"vm": name, "state": runtime.state},
            )
        shrunk = replace(spec, nics=tuple(n for n in spec.nics if n.mac != mac))
        xml = interface_xml(found, found.network)
        running = runtime.state == "running"
        # (the state read above, under the lock: the live XML is the running domain's)
        if running and (live := find(await vms.hv_pool.run(vms.hv.xml, name))) is not None:
            return Pending(xml, find, live.alias)
        with trio.CancelScope(shield=True):
            if running:  # (unplugged: the definition still has it)
                await vms.hv_pool.run(vms.hv.forget_device, name, xml)
            else:
                await vms.hv_pool.run(vms.hv.detach_device, name, xml)
            try:
                await vms.save_spec(name, shrunk, rec.placement)
            except BaseException:  # the definition (and a running guest) get it back
                await vms.hv_pool.run(vms.hv.attach_device, name, xml)
                raise
        log.info("vm.nic_detached", extra=kv(vm=name, network=found.network, mac=mac))
        taken.append(found)
        return None

    await until_released(vms, name, attempt, timeout_s, f"NIC {mac}", {"vm": name, "mac": mac})
    if taken[0].limits is not None and vms.nic_shaper is not None:
        await vms.nic_shaper(name)  # (its IFB, if it had one, goes with its tap)
    return await vms.get(name)
