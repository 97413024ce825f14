"""Copying a VM (``vm.clone``): a new VM of the same tenant with the source's settings
and a copy of each of its disks.

The source must be shut off (``stopped`` or ``crashed``): a running guest's disks change
under the copy, and its memory is not copied. The copy is a new VM as ``vm.create``
makes one, checked the same way (the node's cordon, the tenant's quota with the copy's
volumes, a NUMA placement, the networks of its NICs, a free name cluster-wide): its
own UUID, a new MAC for every NIC (two guests with one MAC on a network break each
other), and a copy of every volume the daemon made for the source, in the daemon's
pool, at the same device names. The source's snapshots are not copied.

A disk given by path is the operator's image, perhaps shared, which the daemon never
writes a copy of: a source with one is refused (the operator copies such an image and
creates the VM with it). Kernels and initrds named by path are read-only and shared.
Disks and NICs attached outside NovaCron (``virsh attach-device``) are not in the VM's
spec, so the copy would lack them: such a source is refused too, unless ``partial``
asks for the copy without them (the answer then names them).

The source stays locked while its volumes are copied (no start, no change, no
migration in between); the call answers when the copy is recorded, which takes as long
as the storage pool takes to copy the volumes (``qemu-img convert`` on a directory pool:
the allocated data only).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.net.nic import new_mac
from novacron.vm import domain_xml
from novacron.vm.service import VmService, log
from novacron.vm.spec import VmSpec


def outside_devices(xml: str, spec: VmSpec) -> list[str]:
    """The disks and NICs of domain ``xml`` that ``spec`` does not have (attached outside
    NovaCron), as ``disk vdc (/path)`` and ``nic 52:54:00:..``."""
    targets = set(spec.disk_targets())
    macs = {(n.mac or "").lower() for n in spec.nics}
    found = [
        f"disk {d.target} ({d.path or d.volume or d.kind})"
        for d in domain_xml.parse_disks(xml)
        if d.target not in targets
    ]
    found += [
        f"nic {i.mac or '(no MAC)'}" for i in domain_xml.parse_interfaces(xml) if i.mac not in macs
    ]
    return found


async def clone(
    vms: VmService, source: str, name: str, start: bool, partial: bool = False
) -> dict[str, Any]:
    vms.cordon.refuse("new VMs")
    if name == source:
        raise errors.AlreadyExists(f"vm {name!r} already exists", {"vm": name})
    tenant = (await vms.record(source)).tenant
    # as vm.create: the tenant's lock first (the quota sees one change at a time)
    async with vms.tenant_lock(tenant), vms.changing(source), vms.locked(name):
        rec = await vms.record(source)
        spec = VmSpec.from_dict(rec.spec)
        runtime = await vms.hv_pool.run(vms.hv.state, source)
        if runtime.state not in ("stopped", "crashed"):
            raise errors.Conflict(
                f"vm {source!r} must be stopped to be cloned (it is {runtime.state}): "
                "a running guest's disks change under the copy",
                {"vm": source, "state": runtime.state},
            )
        targets = spec.disk_targets()
        given = [t for d, t in zip(spec.disks, targets, strict=True) if not d.managed]
        if given:
            raise errors.InvalidParams(
                f"vm {source!r} has disks given by path ({', '.join(given)}): a clone would "
                "share them; only volumes the daemon made are copied",
                {"param": "name", "targets": given},
            )
        outside = outside_devices(await vms.hv_pool.run(vms.hv.xml, source), spec)
        if outside and not partial:
            raise errors.Conflict(
                f"vm {source!r} has devices attached outside NovaCron ({', '.join(outside)}):"
                " the copy would lack them; detach them, or clone with partial to leave them out",
                {"vm": source, "devices": outside},
            )
        copy = replace(spec, name=name, nics=tuple(replace(n, mac=new_mac()) for n in spec.nics))
        await vms.quotas.check(copy, await vms.records.all())
        if copy.nics and vms.nic_check is not None:
            await vms.nic_check(tenant, copy.nics)
        copies = dict(zip(targets, vms.disk_paths(spec), strict=True))
        with trio.CancelScope(shield=True):
            await vms.define_new(copy, copies)
        log.info(
            "vm.cloned",
            extra=kv(vm=name, source=source, tenant=tenant, disks=len(copies), left_out=outside),
        )
    if start:
        await vms.start(name)
    doc = await vms.get(name)
    return {**doc, "left_out": outside} if outside else doc
