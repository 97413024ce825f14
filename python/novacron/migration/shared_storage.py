"""Disks on storage the operator declared shared between nodes (``[migration] shared_storage``).

libvirt migrates a VM with file disks only when it can tell that their storage is shared
(NFS, CephFS, GFS2, OCFS2, ... by the filesystem's type); otherwise it refuses with
``VIR_ERR_MIGRATE_UNSAFE`` ("Migration without shared storage is unsafe"). Storage it
cannot recognise (a cluster filesystem it does not know, a bind mount of one) can be
declared by the operator: when every file disk of the VM lies inside a declared
directory, the migration is asked with ``VIR_MIGRATE_UNSAFE``, which skips that check.
The declaration is the operator's word: NovaCron cannot see whether the other node's
file at the same path is the same file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import libvirt

from novacron.vm.domain_xml import DiskSource, parse_disks
from novacron.vm.driver import Hypervisor

# disk types libvirt lets migrate without looking at where they are (block devices,
# network disks, ...): the flag skips no check of theirs. A file disk is judged by its
# path; any other type (an NVMe disk, which libvirt always refuses; a pool volume
# :func:`resolve_volumes` could not look up; a type this list does not know) is never
# declared.
PASSED_BY_LIBVIRT = frozenset({"block", "network", "dir", "vhostuser", "vhostvdpa"})

# what a storage volume is, as the disk type libvirt judges it by (its "actual type")
VOLUME_KINDS = {
    libvirt.VIR_STORAGE_VOL_FILE: "file",
    libvirt.VIR_STORAGE_VOL_BLOCK: "block",
    libvirt.VIR_STORAGE_VOL_DIR: "dir",
    libvirt.VIR_STORAGE_VOL_NETWORK: "network",
    libvirt.VIR_STORAGE_VOL_NETDIR: "network",
}


def resolve_volumes(hv: Hypervisor, disks: Sequence[DiskSource]) -> list[DiskSource]:
    """``disks`` with each storage-pool volume replaced by what it is (a file at its
    path, a block device, ...), looked up in libvirt's storage pools as libvirt does
    when it judges the volume; a volume that cannot be looked up is left as it is (and
    so never declared). Blocking (libvirt calls)."""
    return [_resolved(hv, disk) for disk in disks]


def _resolved(hv: Hypervisor, disk: DiskSource) -> DiskSource:
    if disk.kind != "volume" or not (disk.pool and disk.volume):
        return disk
    try:
        vol = hv.conn.storagePoolLookupByName(disk.pool).storageVolLookupByName(disk.volume)
        kind = VOLUME_KINDS.get(vol.info()[0])
        path = vol.path()
    except libvirt.libvirtError:
        return disk
    return disk if kind is None else replace(disk, kind=kind, path=path)


# what a refusal of libvirt's says next (libvirt's message names no setting)
UNSAFE_HINT = (
    "; NovaCron migrates disks only on shared storage: if every node using these disks "
    "does share it, declare it in [migration] shared_storage"
)


def undeclared(disks: Iterable[str], dirs: Iterable[str]) -> list[str]:
    """The disk files not inside any of ``dirs``, symlinks and ``..`` resolved on both
    sides (a link out of a declared directory is not in it). Blocking (it reads links)."""
    roots = [Path(d).resolve() for d in dirs]
    return [
        disk
        for disk in disks
        if not any(Path(disk).resolve().is_relative_to(root) for root in roots)
    ]


def checked_files(disks: Sequence[DiskSource]) -> list[str] | None:
    """The file disks libvirt's shared-storage check looks at (it leaves out read-only
    disks, empty drives and backing images, and so does this), or None when the VM has a
    disk whose check the flag must not skip (see :data:`PASSED_BY_LIBVIRT`)."""
    files = []
    for disk in disks:
        if disk.readonly or disk.empty:
            continue
        if disk.kind == "file" and disk.path:
            files.append(disk.path)
        elif disk.kind not in PASSED_BY_LIBVIRT:
            return None
    return files


def all_declared(disks: Sequence[DiskSource], dirs: Iterable[str]) -> list[str]:
    """The file disks checked when every one lies on declared shared storage (the
    migration may skip libvirt's check); empty when it may not (no such disk, one
    undeclared, or a disk libvirt's check must see). Blocking (it reads links)."""
    files = checked_files(disks)
    if not files or undeclared(files, dirs):
        return []
    return files


def declared_disks(hv: Hypervisor, xml: str, dirs: Sequence[str]) -> list[str]:
    """:func:`all_declared` for the domain described by ``xml`` (its volumes looked up
    first); nothing to look at when no storage is declared. Blocking (libvirt calls,
    links read)."""
    if not dirs:
        return []
    return all_declared(resolve_volumes(hv, parse_disks(xml)), dirs)
