"""``novacron vm disk attach|detach|resize|limit``: a VM's disks after it was created."""

from __future__ import annotations

import argparse
from typing import Any

from novacron.cli import output
from novacron.sync_client import SyncClient

COLUMNS = [
    ("target", "DEVICE"),
    ("path", "PATH"),
    ("format", "FORMAT"),
    ("managed", "NEW VOLUME"),
    ("size_gib", "GIB"),
    ("limits", "LIMITS"),
]
LIMIT_FLAGS = [
    ("--read-bytes", "read_bytes_per_s", "bytes read"),
    ("--write-bytes", "write_bytes_per_s", "bytes written"),
    ("--read-iops", "read_iops", "reads"),
    ("--write-iops", "write_iops", "writes"),
]


def add_vm_commands(vm_sub: Any) -> None:
    disk = vm_sub.add_parser("disk", help="VM disks")
    disks = disk.add_subparsers(dest="disk_command", required=True, metavar="COMMAND")
    attach = disks.add_parser("attach", help="add a disk (hot-plugged if the VM runs)")
    attach.add_argument("vm")
    attach.add_argument(
        "--size", type=int, dest="size_gib", help="a new volume of GIB (or a copy grown to GIB)"
    )
    what = attach.add_mutually_exclusive_group()
    what.add_argument("--path", help="an existing image (admin, or inside [vm] disk_dirs)")
    what.add_argument(
        "--image",
        help="a new volume copied from this base image (admin, or in [vm] image_dirs, disk_dirs)",
    )
    attach.add_argument("--format", choices=("qcow2", "raw"))
    attach.set_defaults(run=run_attach)
    detach = disks.add_parser(
        "detach", help="remove a disk by its device name (unplugged if the VM runs)"
    )
    detach.add_argument("vm")
    detach.add_argument("target", help="the guest's device name (vdb)")
    detach.add_argument(
        "--keep-volume", action="store_true", help="keep the volume the daemon made for it"
    )
    detach.add_argument(
        "--timeout-s", type=float, help="how long a running guest has to let go (default 30)"
    )
    detach.set_defaults(run=run_detach)
    resize = disks.add_parser(
        "resize", help="grow a volume the daemon made (the guest sees it at once if it runs)"
    )
    resize.add_argument("vm")
    resize.add_argument("target", help="the guest's device name (vda)")
    resize.add_argument("--size", type=int, dest="size_gib", required=True, help="new size, GIB")
    resize.set_defaults(run=run_resize)
    limit = disks.add_parser(
        "limit", help="throttle a disk's reads and writes (at once if the VM runs; 0 lifts one)"
    )
    limit.add_argument("vm")
    limit.add_argument("target", help="the guest's device name (vda)")
    for flag, key, unit in LIMIT_FLAGS:
        limit.add_argument(flag, type=int, dest=key, metavar="N", help=f"{unit} a second")
    limit.set_defaults(run=run_limit)


def limits_text(limits: dict[str, int] | None) -> str | None:
    """A disk's limits as ``read_iops=100 write_bytes_per_s=1048576`` (None: none)."""
    if not limits:
        return None
    return " ".join(f"{k}={v}" for k, v in sorted(limits.items()))


def _disks(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if not args.json:
        rows = [{**d, "limits": limits_text(d.get("limits"))} for d in doc.get("disks", [])]
        output.table(rows, COLUMNS)
        for path in doc.get("volumes_deleted", []):
            output.console.print(f"deleted {path}", highlight=False)
    return doc


IMAGE_COLUMNS = [
    ("path", "IMAGE"),
    ("format", "FORMAT"),
    ("size_gib", "GIB"),
    ("file_bytes", "FILE BYTES"),
    ("refused", "REFUSED"),
]


def add_image_commands(groups: Any) -> None:
    image = groups.add_parser("image", help="base images new volumes are copied from")
    images = image.add_subparsers(dest="command", required=True, metavar="COMMAND")
    lst = images.add_parser(
        "list", help="the base images this node offers a tenant (vm create --disk-image)"
    )
    lst.add_argument("--tenant")
    lst.set_defaults(run=run_image_list)


def run_image_list(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("image.list", tenant=args.tenant)
    if not args.json:
        output.table(doc["images"], IMAGE_COLUMNS)
        dirs = ", ".join(doc["dirs"]) or "none ([vm] image_dirs, disk_dirs)"
        output.console.print(f"tenant {doc['tenant']}: {dirs}", highlight=False)
        if doc["truncated"]:
            output.console.print("(more files than listed)", highlight=False)
    return doc


def run_attach(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "vm.disk.attach",
        vm=args.vm,
        size_gib=args.size_gib,
        path=args.path,
        image=args.image,
        format=args.format,
    )
    return _disks(doc, args)


def run_detach(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "vm.disk.detach",
        vm=args.vm,
        target=args.target,
        keep_volume=args.keep_volume or None,
        timeout_s=args.timeout_s,
    )
    return _disks(doc, args)


def run_resize(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("vm.disk.resize", vm=args.vm, target=args.target, size_gib=args.size_gib)
    return _disks(doc, args)


def run_limit(client: SyncClient, args: argparse.Namespace) -> Any:
    limits = {key: getattr(args, key) for _, key, _ in LIMIT_FLAGS}
    doc = client.call("vm.disk.limit", vm=args.vm, target=args.target, **limits)
    return _disks(doc, args)
