"""Existing disk images a VM uses in place (``disks: [{"path": ...}]``), looked at when
they are named (``vm.create``, ``vm.disk.attach``), after the directory check of
:mod:`~novacron.vm.host_files` (so a caller learns nothing of files it may not name).
Each would otherwise fail only at the VM's start, with QEMU's message as an ``internal``
error, or reach files the caller may not name:

- the file exists and is a regular file or a block device (``invalid_params``);
- a disk named ``qcow2`` (the format a path disk has unless it names one) is a qcow2
  image: a raw image named without its format is refused, not booted as garbage;
- every file the image's chain needs exists (its backing files, an external data file);
- for a caller without ``admin``, every one of those files is offered too
  (``permission_denied``): QEMU opens an overlay's backing file with the rights it has,
  so an image whose header names another tenant's disk, or any host file, would read it
  (a guest writes the whole of a disk it has as raw, header included, so a tenant can
  make such an image in its own directory). A protocol (``nbd:``), a relative data file
  name (QEMU opens it from its own working directory) and a header this daemon cannot
  read are refused to those callers;
- one file is one disk of a VM (two disks writing one file: QEMU refuses the second's
  lock), links and other names of the same file included (``invalid_params``);
- one file has one format on this node: a file another VM here uses in another format is
  ``conflict`` (a guest given it raw could rewrite the header the other VM's QEMU reads).

Blocking (reads files): run it on a worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from novacron import errors
from novacron.auth.identity import Identity
from novacron.vm import host_files, qcow2


@dataclass(frozen=True)
class Named:
    """A disk image named in a call: the parameter that names it (``disks[1].path``), the
    path and the format it is given."""

    param: str
    path: str
    format: str


@dataclass(frozen=True)
class InUse:
    """A file a VM of this node has as a disk: the VM and its tenant, the path, the
    format."""

    vm: str
    tenant: str
    path: str
    format: str


def _identity(path: str) -> tuple[int, int] | None:
    """The file's device and inode (the same file by any name); None if it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _look(disk: Named) -> tuple[int, int]:
    """Checks that ``disk``'s file is there and is what its format says (opened once,
    never waiting on a FIFO); its identity."""
    details: dict[str, Any] = {"param": disk.param, "path": disk.path}
    try:
        f = qcow2.open_image(disk.path)
    except FileNotFoundError:
        raise errors.InvalidParams(f"{disk.param} {disk.path!r}: no such file", details) from None
    except OSError as exc:
        raise errors.InvalidParams(
            f"{disk.param} {disk.path!r} cannot be read: {exc.strerror}", details
        ) from None
    except qcow2.UnreadableImage:
        raise errors.InvalidParams(
            f"{disk.param} {disk.path!r} is not a regular file or a block device", details
        ) from None
    with f:
        st = os.fstat(f.fileno())
        if disk.format == "qcow2" and f.read(len(qcow2.MAGIC)) != qcow2.MAGIC:
            raise errors.InvalidParams(
                f"{disk.param} {disk.path!r} is not a qcow2 image (qcow2 is the format of a "
                'disk named by path unless it says otherwise: give "format": "raw" for a '
                "raw image)",
                {**details, "format": disk.format},
            )
    return st.st_dev, st.st_ino


def _missing(disk: Named, missing: qcow2.Needed) -> errors.InvalidParams:
    what = "backing file" if missing.role == "backing" else "external data file"
    return errors.InvalidParams(
        f"{disk.param} {disk.path!r} needs its {what} {missing.path!r}, which does not exist",
        {"param": disk.param, "path": disk.path, missing.role: missing.path},
    )


def _check_chain(identity: Identity, disk: Named, tenant: str, offered: host_files.Offered) -> None:
    """``permission_denied`` unless every file ``disk``'s qcow2 chain opens is offered to
    ``identity`` for VMs of ``tenant``; then ``invalid_params`` for one that does not
    exist (each file checked before the chain opens it, and only once it may be named:
    no word on files the caller may not name)."""
    details: dict[str, Any] = {"param": disk.param, "path": disk.path}
    needed = qcow2.chain(disk.path)
    while True:
        try:
            file = next(needed, None)
        except (OSError, qcow2.UnreadableImage) as exc:
            raise errors.PermissionDenied(
                f"{disk.param} {disk.path!r}: its qcow2 chain cannot be checked ({exc}); "
                "such an image needs the admin role",
                details,
            ) from None
        if file is None:
            return
        role = "backing file" if file.role == "backing" else "external data file"
        local = not qcow2.is_protocol(file.path) and (
            file.role == "backing" or os.path.isabs(file.path)
        )
        if not local:
            raise errors.PermissionDenied(
                f"{disk.param} {disk.path!r} names the {role} {file.path!r}, which is not a "
                "file this daemon can check; such an image needs the admin role",
                {**details, file.role: file.path},
            )
        host_files.check_file(
            identity, f"{disk.param} (its {role})", file.path, "disk", tenant, offered
        )
        if not os.path.exists(file.path):
            raise _missing(disk, file)


def check(
    identity: Identity,
    tenant: str,
    named: list[Named],
    offered: host_files.Offered,
    own: list[InUse],
    others: list[InUse],
) -> None:
    """Checks the disk images ``named`` for a VM of ``tenant`` (see the module): ``own``
    are the VM's other disks (none for a new VM), ``others`` the disks of the node's other
    VMs."""
    taken = {_identity(d.path): d for d in own}
    taken.pop(None, None)
    given: dict[tuple[int, int], Named] = {}
    for disk in named:
        ident = _look(disk)
        if disk.format == "qcow2":  # (the chain walked once: with the offer, or without)
            if "admin" not in identity.roles:
                _check_chain(identity, disk, tenant, offered)
            elif (missing := qcow2.first_missing(disk.path)) is not None:
                raise _missing(disk, missing)
        details = {"param": disk.param, "path": disk.path}
        if ident in given:
            raise errors.InvalidParams(
                f"{disk.param} {disk.path!r} is the same file as {given[ident].param}: a "
                "file is one disk of a VM",
                details,
            )
        if ident in taken:
            raise errors.InvalidParams(
                f"{disk.param} {disk.path!r} is the same file as the VM's disk at "
                f"{taken[ident].path!r}: a file is one disk of a VM",
                details,
            )
        given[ident] = disk
    for other in others:
        same = _identity(other.path)
        found = given.get(same) if same is not None else None
        if found is not None and found.format != other.format:
            # (another tenant's VM is not named to whoever may not see it)
            vm = f"vm {other.vm!r}" if identity.sees(other.tenant) else "another VM"
            raise errors.Conflict(
                f"{found.param} {found.path!r} is a disk of {vm} on this node as "
                f"{other.format}, not {found.format}: a file has one format on a node",
                {"param": found.param, "path": found.path, "format": other.format},
            )
