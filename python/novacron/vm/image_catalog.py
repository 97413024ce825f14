"""The base images a tenant's VMs may be given copies of (``image.list``): the files
directly inside the directories this node offers for base images (``[vm] image_dirs``
and ``disk_dirs``, ``{tenant}`` filled in), each with what a copy of it would be.

Only what a caller could name is listed: regular files whose real path (symbolic links
resolved) lies inside the directory that lists them and outside the daemon's state
directory, as :mod:`~novacron.vm.host_files` decides for a create. Each file's header is
read (its first 4 KiB, never blocking on a FIFO) so the listing says the format and size
a copy gets, or why a copy would be refused. Subdirectories are not entered; a listing
stops at :data:`MOST` files.

Blocking (it reads directories and files): run :func:`listing` on a worker thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from novacron.vm import host_files
from novacron.vm.base_images import HEAD, OPEN_FLAGS, ImageRefused, inspect, why

MOST = 1000  # files listed at the most


def _entry(path: Path, real: Path) -> dict[str, Any] | None:
    """What a copy of the file at ``real`` (named ``path``) would be; None when it is not
    a regular file."""
    try:
        fd = os.open(real, OPEN_FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        doc: dict[str, Any] = {
            "path": str(path),
            "name": path.name,
            "file_bytes": info.st_size,
            "allocated_bytes": info.st_blocks * 512,
            "format": None,
            "virtual_size": None,
            "size_gib": None,
            "refused": None,
        }
        try:
            head = inspect(os.pread(fd, HEAD, 0), info.st_size)
        except (ImageRefused, OSError) as exc:
            doc["refused"] = why(exc)
        else:
            doc.update(format=head.format, virtual_size=head.virtual_size, size_gib=head.size_gib)
        return doc
    finally:
        os.close(fd)


def listing(offered: host_files.Offered, tenant: str) -> dict[str, Any]:
    """The base images offered to ``tenant``'s VMs, by path."""
    dirs = host_files.offered_dirs("image", offered, tenant)
    images: dict[str, dict[str, Any]] = {}
    truncated = False
    for entry, root in dirs:
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue  # a tenant's directory not made yet, or unreadable: nothing offered
        for name in names:
            if len(images) >= MOST:
                truncated = True
                break
            path = Path(entry) / name
            real = Path(os.path.realpath(root / name))
            if str(path) in images or not host_files.is_offered(real, root, offered):
                continue
            found = _entry(path, real)
            if found is not None:
                images[str(path)] = found
    return {
        "tenant": tenant,
        "dirs": [entry for entry, _ in dirs],
        "images": [images[p] for p in sorted(images)],
        "truncated": truncated,
    }
