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

from collections.abc import Iterable
from pathlib import Path

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


def all_declared(disks: list[str], dirs: Iterable[str]) -> bool:
    """Whether the VM has file disks and every one is on declared shared storage."""
    return bool(disks) and not undeclared(disks, dirs)
