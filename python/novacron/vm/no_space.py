"""Guests paused because their disk's file system filled up, resumed once it has room.

A thin volume takes host space as its guest writes; when the file system under it is
full, QEMU pauses the guest (``ioerror``, the disk's error ``no_space``) rather than fail
its writes, and nothing is lost. Once an operator frees space the guest can go on: the
state keeper (:mod:`~novacron.vm.keeper`) resumes a VM that should run as soon as every
disk it stopped on has ``[vm] no_space_resume_mib`` free again on its file system (what
QEMU's user may write: :func:`os.statvfs`'s ``f_bavail``), looking every
``CHECK_S`` seconds. A disk that failed for another reason, or whose room cannot be
judged (a block device, a network disk), leaves the VM to its operator."""

from __future__ import annotations

from dataclasses import dataclass

from novacron.vm.domain_xml import parse_disks
from novacron.vm.storage_room import MIB, free_bytes

__all__ = ["CHECK_S", "MIB", "Verdict", "free_bytes", "judge"]

CHECK_S = 5.0  # how often a VM paused for want of space is looked at


@dataclass(frozen=True)
class Verdict:
    """What to do with a VM paused on disk errors: ``resume`` (every failed disk has room
    again), ``wait`` (not yet) or ``leave`` (not a full file system NovaCron can watch:
    the operator decides). ``free``: the failed disks' room (target -> bytes)."""

    action: str
    free: dict[str, int]
    why: str = ""


def judge(xml: str, failed: dict[str, str], wanted: int) -> Verdict:
    """``failed``: the domain's disks with errors (target -> ``no_space`` or
    ``unspecified``, as :meth:`Hypervisor.disk_errors` names them); ``xml``: its
    definition; ``wanted``: the bytes each of their file systems must have free.
    Blocking (``statvfs``): run in a thread."""
    if not failed:
        return Verdict("leave", {}, "libvirt names no failed disk")
    other = sorted(t for t, kind in failed.items() if kind != "no_space")
    if other:
        return Verdict("leave", {}, f"disk(s) {', '.join(other)} failed for another reason")
    files = {d.target: d.path for d in parse_disks(xml) if d.kind == "file" and d.path}
    free: dict[str, int] = {}
    for target in sorted(failed):
        path = files.get(target)
        if path is None:
            return Verdict("leave", {}, f"disk {target} is not a file on this host")
        try:
            free[target] = free_bytes(path)
        except OSError as exc:
            return Verdict("leave", {}, f"disk {target}: {exc.strerror or exc}")
    if all(room >= wanted for room in free.values()):
        return Verdict("resume", free)
    return Verdict("wait", free)
