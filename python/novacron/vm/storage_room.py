"""Room in the daemon's storage pool for new volumes and larger ones.

Volumes are thin: one takes host space only as its guest writes, so a pool can fill long
after its volumes were made, and a guest writing into a full pool is paused by QEMU
(``ioerror``). What the daemon can do is stop adding to a pool that is nearly full:
``[hypervisor] storage_reserve_mib`` of its file system stays free of anything the daemon
makes (a new volume, a copy of a volume or base image, a migration's copies, a disk
grown), kept for the guests already writing there. A call that would go below it is
refused with ``insufficient_resources`` before anything changes. ``[hypervisor]
storage_overcommit`` (off by default) also bounds what the volumes were promised: the
sum of their sizes stays within that many times the pool's size."""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from novacron import errors
from novacron.logs import kv

if TYPE_CHECKING:
    from novacron.vm.service import VmService
    from novacron.vm.spec import DiskSpec

log = logging.getLogger("novacron.vm")

GIB = 1 << 30
MIB = 1 << 20
WATCH_S = 10.0  # how often the daemon looks whether its pool is short of its reserve


def free_bytes(path: str) -> int:
    """What any user (QEMU's) may still write on the file system holding ``path``
    (``statvfs``'s ``f_bavail``: not the blocks only root may use)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def local_free(pool_xml: str) -> int | None:
    """:func:`free_bytes` of a ``dir`` pool whose directory is on this host; None for
    any other pool (libvirt's figure is all there is)."""
    root = ET.fromstring(pool_xml)  # noqa: S314 - from libvirtd
    path = root.findtext("target/path")
    if root.get("type") != "dir" or not path:
        return None
    try:
        return free_bytes(path)
    except OSError:  # (not on this host)
        return None


def writable(pool_xml: str, available: int) -> int:
    """Of a pool's ``available`` bytes (libvirt's figure), those its guests can write.

    libvirt counts a directory pool's file system's free blocks, the ones only root may
    use among them (ext4 keeps 5 % so by default); QEMU runs as its own user and stops
    at them. For a ``dir`` pool whose directory is here, its file system's free blocks
    for any user (:func:`local_free`) are what is left; otherwise libvirt's."""
    here = local_free(pool_xml)
    return available if here is None else min(available, here)


def promised(disks: Iterable[DiskSpec]) -> int:
    """What new volumes for ``disks`` add to the pool's volumes' sizes, in bytes."""
    return sum((disk.size_gib or 0) << 30 for disk in disks)


def reserve_bytes(vms: VmService) -> int:
    return int(vms.config.storage_reserve_mib) * MIB


async def check(
    vms: VmService, needed: int, what: str, details: dict[str, Any], promised: int = 0
) -> None:
    """Refuses (``insufficient_resources``) what would leave the pool with less than
    the reserve free, or its volumes' sizes past ``[hypervisor] storage_overcommit``
    times its size. ``needed``: the bytes it writes at once (0 for an empty thin volume
    or a grown one); ``promised``: what it adds to the volumes' sizes (a new volume's
    size, a disk's growth). ``what`` names it in the message; ``details`` go into the
    error's with ``pool`` and the figures that refused it. Nothing is asked of libvirt
    when there is nothing to check."""
    ratio = float(vms.config.storage_overcommit)
    if not ratio or not promised:
        await _keep_reserve(vms, needed, what, details, None)
        return
    pool = vms.config.storage_pool
    space = await vms.hv_pool.run(vms.hv.pool_space, pool)  # (its free space too)
    await _keep_reserve(vms, needed, what, details, int(space["available_bytes"]))
    committed, capacity = int(space["committed_bytes"]), int(space["capacity_bytes"])
    if committed + promised <= capacity * ratio:
        return
    raise errors.InsufficientResources(
        f"storage pool {pool!r}'s volumes add up to {committed / GIB:.2f} GiB of its "
        f"{capacity / GIB:.2f} GiB; {what} would add {promised / GIB:.2f} GiB, past "
        f"{ratio:g} times its size ([hypervisor] storage_overcommit)",
        {
            **details,
            "pool": pool,
            "committed_bytes": committed,
            "capacity_bytes": capacity,
            "promised_bytes": promised,
            "overcommit": ratio,
        },
    )


async def _keep_reserve(
    vms: VmService, needed: int, what: str, details: dict[str, Any], free: int | None
) -> None:
    """The reserve part of :func:`check`; ``free``: the pool's, if already read."""
    reserve = reserve_bytes(vms)
    if reserve == 0 and needed == 0:
        return
    pool = vms.config.storage_pool
    if free is None:
        free = await vms.hv_pool.run(vms.hv.pool_free_bytes, pool)
    if needed + reserve <= free:
        return
    if needed:
        wanted = f"{what} needs {needed / GIB:.2f} GiB of it"
    else:
        wanted = f"{what} would promise more of it"
    raise errors.InsufficientResources(
        f"storage pool {pool!r} has {free / GIB:.2f} GiB free; {wanted}, and "
        f"{reserve / GIB:.2f} GiB stays free for the guests writing there "
        "([hypervisor] storage_reserve_mib): free space in the pool first",
        {
            **details,
            "pool": pool,
            "free_bytes": free,
            "needed_bytes": needed,
            "reserve_bytes": reserve,
        },
    )


async def free_now(vms: VmService) -> int | None:
    """The pool's free bytes for its guests; None when they cannot be told (the pool
    undefined outside NovaCron, libvirt unreachable or failing)."""
    try:
        free: int = await vms.hv_pool.run(vms.hv.pool_free_bytes, vms.config.storage_pool)
    except errors.NovaCronError:  # (whatever libvirt says: asked again later)
        return None
    return free


async def short(vms: VmService) -> bool | None:
    """Whether the pool has less than the reserve free (no new volume goes there); None
    when it cannot be told (:func:`free_now`)."""
    free = await free_now(vms)
    return None if free is None else free < reserve_bytes(vms)


class StorageWatch:
    """Looks every ``WATCH_S`` seconds whether the pool is short of its reserve: the
    log says when that changes (``storage.short``, ``storage.room``), ``on_change`` is
    called (a cluster node publishes it: placement passes a short node by for VMs that
    make volumes). ``short`` is None until known; an answer libvirt cannot give leaves
    it as it was."""

    def __init__(self, vms: VmService) -> None:
        self.vms = vms
        self.short: bool | None = None
        self.on_change: Callable[[], None] | None = None

    async def look(self) -> None:
        free = await free_now(self.vms)
        if free is None:
            return
        reserve = reserve_bytes(self.vms)
        now = free < reserve
        if now == self.short:
            return
        was, self.short = self.short, now
        fields = kv(
            pool=self.vms.config.storage_pool, free_mib=free // MIB, reserve_mib=reserve // MIB
        )
        if now:
            log.warning("storage.short", extra=fields)
        elif was:
            log.info("storage.room", extra=fields)
        if self.on_change is not None:
            self.on_change()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.look()
            await trio.sleep(WATCH_S)
