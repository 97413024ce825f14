"""A cloud-init seed for a new VM (``vm.create``'s ``cloud_init``): the guest's user
data, meta data and network configuration on a NoCloud seed disk.

The seed is an ISO 9660 image labelled ``cidata`` (:mod:`~novacron.vm.seed_iso`) that
becomes a new 1 GiB raw volume of the VM's, its last disk, copied into the daemon's pool
the way a base image is (:mod:`~novacron.vm.base_images`): so the seed migrates, clones
and is deleted with the VM like any volume the daemon made, and can be detached once
the guest has read it (``vm disk detach``). cloud-init in a guest booted from a cloud
image finds it by its label on any disk.

``meta_data`` defaults to an ``instance-id`` of its own (a fresh one per VM, so a
guest configures itself once) and ``local-hostname`` the VM's name. The files are the
caller's text, passed on unread: cloud-init in the guest judges them.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from novacron.errors import InvalidParams
from novacron.vm import seed_iso
from novacron.vm.base_images import ImageHead, ImageSource
from novacron.vm.spec import DiskSpec

SEED_IMAGE = "cloud-init seed"  # the seed's key among a create's images (no file path)
SEED_GIB = 1
# the most each file may hold (bytes)
MOST = {"user_data": 512 * 1024, "meta_data": 64 * 1024, "network_config": 64 * 1024}
FILE_OF = {"user_data": "user-data", "meta_data": "meta-data", "network_config": "network-config"}


def parse(what: str, raw: dict[str, Any], name: str) -> dict[str, bytes]:
    """The seed's files from ``vm.create``'s ``cloud_init`` map (``what``: its name in
    errors) for VM ``name``; {} when it was not given."""
    if not raw:
        return {}
    unknown = set(raw) - set(MOST)
    if unknown:
        raise InvalidParams(f"{what}: unknown key(s) {sorted(map(str, unknown))}", {"param": what})
    files: dict[str, bytes] = {}
    for key, most in MOST.items():
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, bytes) or len(value) > most:
            raise InvalidParams(
                f"{what}.{key} must be text of at most {most} bytes", {"param": f"{what}.{key}"}
            )
        files[FILE_OF[key]] = value
    if "user-data" not in files:
        raise InvalidParams(f"{what}.user_data is needed", {"param": f"{what}.user_data"})
    files.setdefault("meta-data", f"instance-id: {uuid.uuid4()}\nlocal-hostname: {name}\n".encode())
    return files


def seed(files: dict[str, bytes], where: Path) -> ImageSource:
    """The seed image of ``files``, in an unnamed file under ``where`` (gone once closed),
    open as the source of a new volume's copy. Blocking."""
    image = seed_iso.build(files)
    with tempfile.TemporaryFile(dir=where) as f:  # (O_TMPFILE where the file system has it)
        f.write(image)
        f.flush()
        fd = os.dup(f.fileno())
    return ImageSource(fd, SEED_IMAGE, SEED_IMAGE, ImageHead("raw", len(image)), len(image))


def seed_disk() -> DiskSpec:
    """The seed's disk in the VM's spec: a new raw volume copied from the seed."""
    return DiskSpec(size_gib=SEED_GIB, format="raw", image=SEED_IMAGE)
