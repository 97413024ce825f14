"""Which files of the host a caller may give a VM: disk images, kernels, initrds.

QEMU reads a VM's kernel and initrd and reads and writes its disks with the rights libvirt
gives it, so whoever names a host path for a VM could read another tenant's disk, the
daemon's own database or the host's block devices from inside a guest. ``admin`` (root's
equal already) may name any path. Everyone else names files inside the directories this
node's configuration offers: ``[vm] disk_dirs`` for existing disk images, ``[vm]
boot_dirs`` for kernels and initrds (QEMU only reads those), ``[vm] image_dirs`` (and
``disk_dirs``) for base images a new volume is copied from (the daemon only reads
those: :mod:`~novacron.vm.base_images`). ``{tenant}`` in a directory
stands for the VM's tenant (``/srv/images/{tenant}``). Paths are compared after
resolving symbolic links, and nothing inside the daemon's state directory is ever
offered, whatever the configuration says.

Blocking (it resolves paths on the file system): run it on a worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from novacron.auth.identity import Identity
from novacron.config import Config
from novacron.errors import PermissionDenied
from novacron.vm.spec import VmSpec

TENANT = "{tenant}"


# what each kind of file is, and the keys that offer its directories
KINDS = {
    "disk": ("disk images", ("disk_dirs",)),
    "boot": ("kernels and initrds", ("boot_dirs",)),
    # a file a caller may use in place may also be copied
    "image": ("base images", ("image_dirs", "disk_dirs")),
}


@dataclass(frozen=True)
class Offered:
    """The node's offer: directories for disk images and for boot files."""

    disk_dirs: tuple[str, ...]
    boot_dirs: tuple[str, ...]
    state_dir: Path  # never offered
    image_dirs: tuple[str, ...] = ()


def offered_by(config: Config) -> Offered:
    """The offer this node's configuration makes."""
    return Offered(config.disk_dirs, config.boot_dirs, config.state_dir, config.image_dirs)


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _under(path: Path, root: Path) -> bool:
    """Strictly inside ``root`` (the directory itself is no file to hand out)."""
    return path != root and path.is_relative_to(root)


def offered_dirs(kind: str, offered: Offered, tenant: str) -> list[tuple[str, Path]]:
    """Each directory offered for ``kind`` to ``tenant``'s VMs: as configured (``{tenant}``
    filled in) and resolved."""
    _, keys = KINDS[kind]
    entries = [e.replace(TENANT, tenant) for key in keys for e in getattr(offered, key)]
    return [(entry, _resolved(entry)) for entry in entries]


def is_offered(real: Path, root: Path, offered: Offered) -> bool:
    """Whether the resolved path ``real`` is a file the directory ``root`` offers (inside
    it, and never inside the daemon's state directory)."""
    return _under(real, root) and not real.is_relative_to(_resolved(offered.state_dir))


def named_files(spec: VmSpec) -> list[tuple[str, str, str]]:
    """(parameter, path, kind) of every host file ``spec`` names; kind ``disk``, ``image``
    or ``boot``."""
    found = [(f"disks[{i}].path", d.path, "disk") for i, d in enumerate(spec.disks) if d.path]
    found += [(f"disks[{i}].image", d.image, "image") for i, d in enumerate(spec.disks) if d.image]
    for param in ("kernel", "initrd"):
        path = getattr(spec, param)
        if path is not None:
            found.append((param, path, "boot"))
    return found


def check(identity: Identity, spec: VmSpec, offered: Offered) -> None:
    """``permission_denied`` unless ``identity`` may give ``spec``'s VM every file it names."""
    for param, path, kind in named_files(spec):
        check_file(identity, param, path, kind, spec.tenant, offered)


def check_file(
    identity: Identity, param: str, path: str, kind: str, tenant: str, offered: Offered
) -> None:
    """``permission_denied`` unless ``identity`` may give a VM of ``tenant`` the file
    ``path`` as a ``disk`` image, a base ``image`` to copy or a ``boot`` file
    (``param``: its name in the call)."""
    if "admin" in identity.roles:
        return
    what, keys = KINDS[kind]
    real = _resolved(path)
    if any(is_offered(real, root, offered) for _, root in offered_dirs(kind, offered, tenant)):
        return
    where = "; ".join(f"{key}: {', '.join(getattr(offered, key)) or 'none'}" for key in keys)
    raise PermissionDenied(
        f"{param} {path!r} is not in a directory this node offers for {what}"
        f" ([vm] {where}); other host files need the admin role",
        {"param": param, "path": path},
    )
