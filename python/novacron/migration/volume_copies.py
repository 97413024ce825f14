"""The volumes a VM's move copies: the disks in its node's pool (``vm.create`` with a
size, ``vm.disk.attach``, ``vm.clone``), made anew on the destination for the copy, named
in the definition the destination answers with, deleted where they are not needed once
the move ended (:mod:`~novacron.migration.disk_copy` for a stopped VM,
:mod:`~novacron.migration.nbd_relay` for a running one)."""

from __future__ import annotations

import logging
from typing import Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.vm import domain_xml, storage_room
from novacron.vm.service import VmService
from novacron.vm.spec import DiskSpec, VmSpec

log = logging.getLogger("novacron.migration")


def pool_disks(spec: VmSpec) -> list[tuple[str, DiskSpec]]:
    """``(target, disk)`` of each disk of ``spec`` in its node's pool, in order."""
    return [(t, d) for t, d in zip(spec.disk_targets(), spec.disks, strict=True) if d.managed]


def sources(vms: VmService, spec: VmSpec) -> list[tuple[str, str]]:
    """``(target, path)`` of each disk of ``spec`` in this node's pool, in order."""
    disks = zip(spec.disk_targets(), spec.disks, vms.disk_paths(spec), strict=True)
    return [(target, path) for target, disk, path in disks if disk.managed]


def named_in(xml: str, targets: list[str], paths: list[str]) -> str:
    """The domain ``xml`` with the disks ``targets`` at ``paths``; ``invalid_params``
    when it lacks one of them."""
    try:
        return domain_xml.with_disk_sources(xml, dict(zip(targets, paths, strict=True)))
    except ValueError as exc:
        raise errors.InvalidParams(f"the domain's disks do not match its spec: {exc}") from None


async def check_room(
    vms: VmService, name: str, copies: list[tuple[str, DiskSpec]], disk_bytes: int
) -> None:
    """Refuses (``insufficient_resources``) ``copies`` holding ``disk_bytes`` on the
    source that this node's pool has no room for, keeping ``[hypervisor]
    storage_reserve_mib`` of it free besides, or whose sizes would take its volumes past
    ``[hypervisor] storage_overcommit`` (no copies: nothing to check)."""
    if copies:
        what, details = f"vm {name!r}'s volumes", {"vm": name, "disk_bytes": disk_bytes}
        promised = storage_room.promised(disk for _, disk in copies)
        await storage_room.check(vms, disk_bytes, what, details, promised)


async def source_bytes(vms: VmService, paths: list[str]) -> int:
    """What the volumes at ``paths`` hold (their files' allocation)."""
    total = 0
    for path in paths:
        total += await vms.hv_pool.run(vms.hv.volume_allocation, path)
    return total


async def make(
    vms: VmService, name: str, copies: list[tuple[str, DiskSpec]], empty: bool
) -> list[str]:
    """A volume in this node's pool for each disk to copy, where this node keeps that
    VM's disk; their paths. ``empty``: a raw file of no bytes (a stopped VM's copy writes
    the source's file into it, and libvirt then sees its format); else a volume of the
    disk's size and format (QEMU's mirror writes the disk the guest sees into it). A
    failure deletes those made."""
    made: list[str] = []
    try:
        for target, disk in copies:
            volume = vms.managed_volume_name(name, target, disk.format)
            size, fmt = (0, "raw") if empty else (disk.size_gib or 0, disk.format)
            pool = vms.config.storage_pool
            try:
                made.append(await vms.hv_pool.run(vms.hv.create_volume, pool, volume, size, fmt))
            except (errors.Conflict, errors.AlreadyExists) as exc:
                raise errors.AlreadyExists(
                    f"cannot make volume {volume} in pool {pool!r} for vm {name!r}'s disk "
                    f"{target} ({exc.message}); a volume left there by another vm of that "
                    "name must be deleted first",
                    {"vm": name, "volume": volume},
                ) from None
    except BaseException:
        with trio.CancelScope(shield=True):
            await delete(vms, made)
        raise
    return made


def agreed(part: Any, targets: list[str], vm: str) -> dict[str, Any]:
    """The part of the destination's ``migration.prepare`` answer about its volumes
    (``copy`` or ``nbd``), which must name exactly the disks ``targets``."""
    if not isinstance(part, dict) or part.get("disks") != targets:
        raise errors.MigrationFailed(
            f"the destination did not make volumes for this vm's disks ({', '.join(targets)})",
            {"vm": vm},
        )
    return part


async def delete(vms: VmService, paths: list[str]) -> bool:
    """Best effort: the volumes at ``paths`` are deleted (copies of a VM that did not
    arrive, or the originals of one that did). Whether every one went (a volume already
    gone counts as gone); a failure is logged and the rest are still tried."""
    every = True
    for path in paths:
        try:
            await vms.hv_pool.run(vms.hv.delete_volume, path)
        except errors.NovaCronError as exc:
            log.warning("migration.volume_not_deleted", extra=kv(path=path, error=exc.message))
            every = False
    return every
