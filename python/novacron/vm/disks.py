"""Adding a disk to a VM, taking one away and growing one (``vm.disk.attach`` /
``vm.disk.detach`` / ``vm.disk.resize``).

A disk is attached to a running VM as well as to a stopped one (hot-plug: the guest sees
a new virtio disk); it gets the first device name (``vdb``, ``vdc``, ...) that neither the
VM's spec nor libvirt's domain uses. A new volume counts against the tenant's disk quota,
checked under the tenant's lock as a create is.

A disk is detached from a stopped VM, or unplugged from a running one: the guest is asked
to release it (ACPI eject; its kernel writes back what it holds for the disk, then lets go)
and the daemon waits, up to ``timeout_s`` and without holding the VM's lock, until the
running domain no longer has it. Only then is it taken out of the definition and the
record, and its volume deleted: a guest that does not let go (no hot-plug support, the
disk mounted and busy, a paused guest — refused up front) keeps the disk, and the call
fails with ``timeout`` (the request stays with the guest: calling again once it has let
go finishes the detach; a stop does too, as the next boot starts from the definition,
which still has the disk — and a stop while the detach waits finishes that detach). The
volume the daemon made for it is deleted unless kept.

As with NICs, libvirt is changed first and the record (and the domain's metadata) after
it; a failure in between is undone. A running (or paused) VM's disks are hot-plugged; a
stopped VM's definition is rewritten from libvirt's own XML with the one disk added or
removed (every driver can define; not every one can hot-plug).

A volume the daemon made grows (never shrinks: that cuts off what the guest wrote at
its end) while the VM runs, through QEMU (``blockResize``: the guest sees the new
capacity at once; its partitions and file systems are the guest's to grow), or while it
is stopped, through the storage pool. The growth counts against the disk quota. An image
given by path is not resized: it is the operator's file, perhaps shared.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.vm import domain_xml, qcow2, storage_room
from novacron.vm.base_images import ImageSource
from novacron.vm.service import VmService, log
from novacron.vm.spec import MAX_DISKS, DiskSpec, VmSpec, disk_target
from novacron.vm.unplug import TIMEOUT_S, Pending, until_released


async def _set_disk(
    vms: VmService, name: str, device: domain_xml.DiskDevice, present: bool, xml: str | None
) -> None:
    """Puts ``device`` into the domain (``present``) or takes it out: hot-plugged when the
    VM runs (``xml`` None), else defined anew from its definition ``xml``."""
    if xml is None:
        plug = vms.hv.attach_device if present else vms.hv.detach_device
        await vms.hv_pool.run(plug, name, domain_xml.disk_xml(device))
    elif present:
        await vms.hv_pool.run(vms.hv.define, domain_xml.with_disk(xml, device))
    else:
        await vms.hv_pool.run(vms.hv.define, domain_xml.without_disk(xml, device.target))


async def _undo(
    vms: VmService, name: str, device: domain_xml.DiskDevice, present: bool, xml: str | None
) -> None:
    """Takes back :func:`_set_disk` with the same arguments."""
    if xml is None:
        await _set_disk(vms, name, device, not present, None)
    else:
        await vms.hv_pool.run(vms.hv.define, xml)  # the definition as it was


async def attach(
    vms: VmService, name: str, disk: DiskSpec, image: ImageSource | None = None
) -> dict[str, Any]:
    """Gives VM ``name`` the disk ``disk`` (a new volume: empty, or a copy of the open base
    ``image`` when ``disk`` is given by ``image``)."""
    tenant = (await vms.record(name)).tenant
    # the tenant's lock first, as vm.create takes them: the quota sees one change at a time
    async with vms.tenant_lock(tenant), vms.changing(name):
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        if len(spec.disks) >= MAX_DISKS:
            raise errors.InvalidParams(
                f"vm {name!r} has {MAX_DISKS} disks, the most a VM may have", {"param": "vm"}
            )
        runtime = await vms.hv_pool.run(vms.hv.state, name)
        xml = await vms.hv_pool.run(vms.hv.xml, name)
        # free in the spec and in libvirt's domain (a CD-ROM, a disk plugged in outside us)
        used = set(spec.disk_targets()) | {d.target for d in domain_xml.parse_disks(xml)}
        target = next(disk_target(i) for i in range(len(used) + 1) if disk_target(i) not in used)
        added = replace(disk, target=target)
        grown = spec.with_disks([*spec.named_disks(), added])
        if added.size_gib is not None:
            more = {"disk_gib": added.size_gib}
            await vms.quotas.check_more(spec.tenant, await vms.records.all(), more)
        if added.path is None:
            needed = 0 if image is None else image.allocated
            what, promised = f"a new disk of vm {name!r}", storage_room.promised([added])
            await storage_room.check(vms, needed, what, {"vm": name}, promised)
        definition = xml if runtime.state in ("stopped", "crashed") else None
        with trio.CancelScope(shield=True):
            path = added.path or await vms.new_volume(name, target, added, image=image)
            device = vms.disk_device(path, added, target)
            try:
                await _set_disk(vms, name, device, True, definition)
                try:
                    await vms.save_spec(name, grown, rec.placement)
                except BaseException:
                    await _undo(vms, name, device, True, definition)
                    raise
            except BaseException:
                if added.managed:
                    await vms.hv_pool.run(vms.hv.delete_volume, path)
                raise
        log.info("vm.disk_attached", extra=kv(vm=name, target=target, path=path))
    return await vms.get(name)


async def disk_index(vms: VmService, spec: VmSpec, target: str) -> int:
    """Where disk ``target`` is in ``spec``'s disks (``not_found`` if it has none so named;
    one plugged in outside NovaCron, which ``vm.get`` lists too, is said to be so)."""
    targets = spec.disk_targets()
    if target not in targets:
        why = f"its disks: {', '.join(targets) or 'none'}"
        xml = await vms.hv_pool.run(vms.hv.xml, spec.name)
        if target in {d.target for d in domain_xml.parse_disks(xml)}:
            why += f"; {target} was attached outside NovaCron: change it where it was made"
        raise errors.NotFound(
            f"vm {spec.name!r} has no disk {target!r} that NovaCron attached ({why})",
            {"vm": spec.name, "target": target},
        )
    return targets.index(target)


async def detach(
    vms: VmService, name: str, target: str, keep_volume: bool, timeout_s: float = TIMEOUT_S
) -> dict[str, Any]:
    """Takes disk ``target`` from a stopped VM's definition, or unplugs it from a running
    one (:mod:`novacron.vm.unplug`: the guest has ``timeout_s`` to release it; until it
    has, nothing changes) and then takes it from the definition; deletes the volume the
    daemon made for it unless ``keep_volume``."""
    removed: list[str] = []

    def find(live: str) -> domain_xml.DiskSource | None:
        return next((d for d in domain_xml.parse_disks(live) if d.target == target), None)

    async def attempt() -> Pending | None:  # (under the VM's lock)
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        index = await disk_index(vms, spec, target)
        runtime = await vms.hv_pool.run(vms.hv.state, name)
        if runtime.state not in ("stopped", "running"):
            raise errors.Conflict(
                f"vm {name!r} must be running or stopped to detach a disk (it is "
                f"{runtime.state}: a paused guest cannot release one)",
                {"vm": name, "state": runtime.state},
            )
        gone = spec.disks[index]
        path = vms.disk_paths(spec)[index]
        kept = [d for d in spec.named_disks() if d.target != target]
        device = vms.disk_device(path, gone, target)
        running = runtime.state == "running"
        # (the state read above, under the lock: the live XML is the running domain's)
        if running and (live := find(await vms.hv_pool.run(vms.hv.xml, name))) is not None:
            return Pending(domain_xml.disk_xml(device), find, live.alias)
        with trio.CancelScope(shield=True):
            if running:  # (unplugged: the definition still has it)
                await vms.hv_pool.run(vms.hv.forget_device, name, domain_xml.disk_xml(device))
                undo = partial(_set_disk, vms, name, device, True, None)  # the guest gets it back
            else:
                definition = await vms.hv_pool.run(vms.hv.xml, name)
                await _set_disk(vms, name, device, False, definition)
                undo = partial(_undo, vms, name, device, False, definition)
            try:
                await vms.save_spec(name, spec.with_disks(kept), rec.placement)
            except BaseException:
                await undo()
                raise
            deleted = gone.managed and not keep_volume
            if deleted and await vms.hv_pool.run(vms.hv.delete_volume, path):
                removed.append(path)
        log.info("vm.disk_detached", extra=kv(vm=name, target=target, deleted=bool(removed)))
        return None

    details = {"vm": name, "target": target}
    await until_released(vms, name, attempt, timeout_s, f"disk {target!r}", details)
    doc = await vms.get(name)
    doc["volumes_deleted"] = removed
    return doc


async def resize(vms: VmService, name: str, target: str, size_gib: int) -> dict[str, Any]:
    """Grows the volume the daemon made for disk ``target`` to ``size_gib``."""
    tenant = (await vms.record(name)).tenant
    async with vms.tenant_lock(tenant), vms.changing(name):
        rec = await vms.record(name)
        spec = VmSpec.from_dict(rec.spec)
        index = await disk_index(vms, spec, target)
        disk = spec.disks[index]
        path = vms.disk_paths(spec)[index]
        if disk.size_gib is None:
            raise errors.InvalidParams(
                f"disk {target!r} of vm {name!r} is the image {path!r}, given by path: "
                "only volumes the daemon made (size_gib) are resized",
                {"param": "target", "path": path},
            )
        old = disk.size_gib
        if size_gib < old:
            raise errors.InvalidParams(
                f"disk {target!r} of vm {name!r} has {old} GiB: a disk only grows "
                "(shrinking would cut off what the guest wrote at its end)",
                {"param": "size_gib", "size_gib": old},
            )
        if size_gib == old:
            return await vms.get(name)
        if disk.format == "qcow2":
            await refuse_v2_with_snapshots(name, target, path)
        await vms.quotas.check_more(tenant, await vms.records.all(), {"disk_gib": size_gib - old})
        what, more = f"growing disk {target!r} of vm {name!r}", (size_gib - old) << 30
        await storage_room.check(vms, 0, what, {"vm": name}, more)
        runtime = await vms.hv_pool.run(vms.hv.state, name)
        disks = spec.named_disks()
        disks[index] = replace(disks[index], size_gib=size_gib)
        size = size_gib << 30
        with trio.CancelScope(shield=True):
            if runtime.state in ("stopped", "crashed"):
                await vms.hv_pool.run(vms.hv.grow_volume, path, size)
            else:  # the guest sees it at once
                await vms.hv_pool.run(vms.hv.grow_block, name, target, size)
            # (a disk cannot be shrunk back: should this fail, the volume is larger than
            # recorded, and the same call again records it)
            await vms.save_spec(name, spec.with_disks(disks), rec.placement)
        log.info("vm.disk_resized", extra=kv(vm=name, target=target, size_gib=f"{old}->{size_gib}"))
    return await vms.get(name)


async def refuse_v2_with_snapshots(name: str, target: str, path: str) -> None:
    """``conflict`` when the volume at ``path`` is a qcow2 image of version 2 holding
    internal snapshots, which QEMU cannot grow (volumes this daemon makes are version 3;
    older ones may not be). An image that cannot be read is left to QEMU."""
    try:
        held = await trio.to_thread.run_sync(qcow2.v2_snapshots_of, path)
    except OSError:
        return
    if held:
        raise errors.Conflict(
            f"disk {target!r} of vm {name!r} is a qcow2 version 2 image holding {held} "
            "snapshot(s), which QEMU cannot grow: delete the vm's snapshots first, or "
            f"upgrade the image while the vm is stopped (qemu-img amend -o compat=1.1 {path})",
            {"vm": name, "target": target, "path": path, "qcow2_version": 2, "snapshots": held},
        )
