"""``novacron vm ...`` and ``novacron vm snapshot ...``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from novacron.cli import console, disks, migrate, net, output, stats
from novacron.errors import InvalidParams
from novacron.sync_client import SyncClient

LIST_COLUMNS = [
    ("name", "NAME"),
    ("tenant", "TENANT"),
    ("state", "STATE"),
    ("desired_state", "DESIRED"),
    ("vcpus", "VCPUS"),
    ("memory_mib", "MEMORY MiB"),
    ("created_at", "CREATED"),
]
GET_ORDER = [
    "name",
    "uuid",
    "tenant",
    "state",
    "reason",
    "desired_state",
    "vcpus",
    "max_vcpus",
    "memory_mib",
    "max_memory_mib",
    "kernel",
    "initrd",
    "cmdline",
    "disks",
    "nics",
    "agent",
    "restart",
    "restarts",
    "console_log",
    "created_at",
    "updated_at",
]
RESTART_CHOICES = ("on-failure", "never")
RESTART_HELP = (
    "on-failure (default): started again when found shut off without being asked"
    " (QEMU died, guest crashed, host restarted); never: left shut off"
)
SNAP_COLUMNS = [
    ("name", "NAME"),
    ("state", "STATE"),
    ("current", "CURRENT"),
    ("created_at", "CREATED"),
    ("description", "DESCRIPTION"),
]


def _disk(text: str) -> dict[str, Any]:
    """``10`` (GiB, new volume) or ``/path/image.qcow2[:raw]`` (existing image)."""
    if text.isdigit():
        return {"size_gib": int(text)}
    path, _, fmt = text.partition(":")
    return {"path": path, "format": fmt or "qcow2"}


def _disk_image(text: str) -> dict[str, Any]:
    """``/srv/images/base.qcow2`` or ``/srv/images/base.qcow2:20`` (GiB): a new volume
    copied from a base image (as large as the image, or SIZE_GIB)."""
    path, _, size = text.rpartition(":")
    if path and size.isdigit():
        return {"image": path, "size_gib": int(size)}
    return {"image": text}


def add_commands(groups: Any) -> None:
    vm = groups.add_parser("vm", help="virtual machines")
    sub = vm.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lst = sub.add_parser("list", help="list VMs")
    lst.add_argument("--tenant")
    lst.set_defaults(run=run_list)

    get = sub.add_parser("get", help="show one VM")
    get.add_argument("name")
    get.set_defaults(run=run_get)

    guest = sub.add_parser(
        "guest", help="what a running VM's guest agent reports: addresses, host name, OS"
    )
    guest.add_argument("name")
    guest.set_defaults(run=run_guest)

    stats.add_command(sub)
    migrate.add_vm_command(sub)
    net.add_vm_commands(sub)
    disks.add_vm_commands(sub)
    console.add_vm_commands(sub)

    create = sub.add_parser("create", help="define a VM")
    create.add_argument("name")
    create.add_argument("--vcpus", type=int, default=1)
    create.add_argument(
        "--max-vcpus", type=int, help="room for vCPUs plugged in while it runs (vm update --vcpus)"
    )
    create.add_argument("--memory", type=int, default=512, dest="memory_mib", help="MiB")
    create.add_argument(
        "--max-memory",
        type=int,
        dest="max_memory_mib",
        help="MiB: room for its memory to grow while it runs (a balloon; vm update --memory)",
    )
    create.add_argument("--kernel")
    create.add_argument("--initrd")
    create.add_argument("--cmdline")
    create.add_argument(
        "--disk", action="append", type=_disk, dest="disks", help="SIZE_GIB or PATH[:FORMAT]"
    )
    create.add_argument(
        "--disk-image",
        action="append",
        type=_disk_image,
        dest="disks",
        metavar="IMAGE[:SIZE_GIB]",
        help="a new volume copied from a base image (admin, or in [vm] image_dirs, disk_dirs)",
    )
    for what, key in (
        ("user-data", "user_data"),
        ("meta-data", "meta_data"),
        ("network-config", "network_config"),
    ):
        create.add_argument(
            f"--cloud-init-{what}",
            type=Path,
            dest=f"cloud_init_{key}",
            metavar="FILE",
            help=f"cloud-init's {what} for the VM, on a NoCloud seed disk (its last)"
            + (" [needed for a seed]" if key == "user_data" else ""),
        )
    create.add_argument("--tenant")
    create.add_argument(
        "--cpu-policy",
        choices=("shared", "dedicated"),
        help="shared: float over a node's shared threads; dedicated: one host thread per vCPU",
    )
    create.add_argument("--memory-policy", choices=("strict", "preferred", "interleave"))
    create.add_argument(
        "--hugepages",
        choices=("2M", "1G"),
        help="back guest memory with hugepages of this size",
    )
    create.add_argument(
        "--nic", action="append", type=net.nic_arg, dest="nics", help="NETWORK[:MAC] (repeatable)"
    )
    create.add_argument("--restart", choices=RESTART_CHOICES, help=RESTART_HELP)
    create.add_argument("--node", help="in a cluster: 'auto' (the roomiest node) or a node's name")
    create.add_argument("--start", action="store_true", help="boot it right away")
    create.set_defaults(run=run_create)

    for action, helptext in [
        ("start", "boot a VM"),
        ("stop", "power a VM off at once"),
        ("pause", "pause a VM"),
        ("resume", "resume a paused VM"),
        ("reboot", "reboot a VM"),
    ]:
        cmd = sub.add_parser(action, help=helptext)
        cmd.add_argument("name")
        cmd.set_defaults(run=run_simple, method=f"vm.{action}")

    clone = sub.add_parser("clone", help="a new VM copied from a stopped one, with its disks")
    clone.add_argument("name", help="the stopped VM to copy")
    clone.add_argument("new_name")
    clone.add_argument("--start", action="store_true", help="start the copy")
    clone.add_argument(
        "--partial",
        action="store_true",
        help="copy a VM with devices attached outside NovaCron, without them",
    )
    clone.set_defaults(run=run_clone)

    update = sub.add_parser("update", help="change a VM's settings (no restart of it needed)")
    update.add_argument("name")
    update.add_argument("--restart", choices=RESTART_CHOICES, help=RESTART_HELP)
    update.add_argument(
        "--vcpus", type=int, help="vCPUs: a running VM's up to its max-vcpus, a stopped VM's any"
    )
    update.add_argument("--max-vcpus", type=int, help="a stopped VM's room for plugged vCPUs")
    update.add_argument(
        "--memory",
        type=int,
        dest="memory_mib",
        help="MiB: a running VM's up to its max-memory (its balloon), a stopped VM's any",
    )
    update.add_argument(
        "--max-memory", type=int, dest="max_memory_mib", help="a stopped VM's room for memory"
    )
    update.set_defaults(run=run_update)

    shutdown = sub.add_parser("shutdown", help="graceful shutdown")
    shutdown.add_argument("name")
    shutdown.add_argument("--timeout", type=float, default=60.0, dest="shutdown_timeout")
    shutdown.add_argument("--force", action="store_true", help="power off after the timeout")
    shutdown.set_defaults(run=run_shutdown)

    delete = sub.add_parser("delete", help="delete a VM and the disks created for it")
    delete.add_argument("name")
    delete.add_argument("--force", action="store_true", help="power it off first if running")
    delete.add_argument("--keep-disks", action="store_true")
    delete.set_defaults(run=run_delete)

    snap = sub.add_parser("snapshot", help="VM snapshots")
    snaps = snap.add_subparsers(dest="snapshot_command", required=True, metavar="COMMAND")
    s_create = snaps.add_parser("create", help="take a snapshot")
    s_create.add_argument("vm")
    s_create.add_argument("snapshot")
    s_create.add_argument("--description", default="")
    s_create.set_defaults(run=run_snapshot, method="vm.snapshot.create")
    s_list = snaps.add_parser("list", help="list snapshots")
    s_list.add_argument("vm")
    s_list.set_defaults(run=run_snapshot_list)
    for action in ("revert", "delete"):
        cmd = snaps.add_parser(action, help=f"{action} a snapshot")
        cmd.add_argument("vm")
        cmd.add_argument("snapshot")
        cmd.set_defaults(run=run_snapshot, method=f"vm.snapshot.{action}")


def placement_text(placement: dict[str, Any] | None) -> str | None:
    """``dedicated, memory strict: node 0 vCPU 0-1 on 2,3 (1024 MiB)``, one part per cell."""
    if not placement:
        return None
    parts = []
    for cell in placement["cells"]:
        first, count = cell["first_vcpu"], cell["vcpus"]
        vcpus = str(first) if count == 1 else f"{first}-{first + count - 1}"
        threads = ",".join(str(c) for c in cell["cpus"])
        parts.append(
            f"node {cell['node']} vCPU {vcpus} on {threads} ({cell['memory_kib'] // 1024} MiB)"
        )
    huge = placement.get("hugepage_kib")
    backing = f", {huge} KiB hugepages" if huge else ""
    return f"{placement['cpu']}, memory {placement['memory']}{backing}: " + "; ".join(parts)


def restarts_text(doc: dict[str, Any]) -> str:
    """``vm.get``'s ``restarts``: ``2 in the last 600 s, the last at ..., given up``."""
    text = f"{doc.get('recent', 0)} in the last {doc.get('window_s', 0):g} s"
    if doc.get("last_at"):
        text += f", the last at {output.when(doc['last_at'])}"
    if doc.get("gave_up"):
        text += ", given up (vm start resets)"
    return text


def _show(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if not args.json:
        shown = dict(doc)
        if "placement" in shown:
            shown["placement"] = placement_text(shown["placement"])
        if isinstance(shown.get("restarts"), dict):
            shown["restarts"] = restarts_text(shown["restarts"])
        output.fields(
            shown, [k for k in GET_ORDER if k in shown] + [k for k in shown if k not in GET_ORDER]
        )
    return doc


def run_list(client: SyncClient, args: argparse.Namespace) -> Any:
    rows = client.call("vm.list", tenant=args.tenant)
    if not args.json:
        output.table(rows, LIST_COLUMNS)
    return rows


def run_get(client: SyncClient, args: argparse.Namespace) -> Any:
    return _show(client.call("vm.get", name=args.name), args)


GUEST_COLUMNS = [("name", "INTERFACE"), ("mac", "MAC"), ("addresses", "ADDRESSES")]


def run_guest(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("vm.guest", name=args.name)
    if not args.json:
        os_info = doc.get("os") or {}
        output.fields(
            {
                "hostname": doc.get("hostname"),
                "os": os_info.get("pretty_name") or os_info.get("name"),
                "kernel": os_info.get("kernel_release"),
            }
        )
        rows = [
            {
                **iface,
                "addresses": " ".join(f"{a['address']}/{a['prefix']}" for a in iface["addresses"])
                or None,
            }
            for iface in doc.get("interfaces", [])
        ]
        output.table(rows, GUEST_COLUMNS)
    return doc


def run_create(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "vm.create",
        name=args.name,
        vcpus=args.vcpus,
        max_vcpus=args.max_vcpus,
        memory_mib=args.memory_mib,
        max_memory_mib=args.max_memory_mib,
        kernel=args.kernel,
        initrd=args.initrd,
        cmdline=args.cmdline,
        disks=args.disks,
        tenant=args.tenant,
        cpu_policy=args.cpu_policy,
        memory_policy=args.memory_policy,
        hugepage_kib={"2M": 2048, "1G": 1048576}.get(args.hugepages or ""),
        nics=args.nics,
        restart=args.restart,
        node=args.node,
        start=args.start or None,
        cloud_init=_cloud_init(args),
    )
    return _show(doc, args)


def _cloud_init(args: argparse.Namespace) -> dict[str, bytes] | None:
    """The seed's files, read here (the daemon may be elsewhere); None without any."""
    files = {}
    for key in ("user_data", "meta_data", "network_config"):
        path = getattr(args, f"cloud_init_{key}")
        if path is None:
            continue
        try:
            files[key] = path.read_bytes()
        except OSError as exc:
            option = "--cloud-init-" + key.replace("_", "-")
            raise InvalidParams(f"{option}: cannot read {path}: {exc.strerror}") from None
    return files or None


def run_clone(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "vm.clone",
        name=args.name,
        new_name=args.new_name,
        start=args.start or None,
        partial=args.partial or None,
    )
    if not args.json:
        for device in doc.get("left_out") or []:
            output.errors.print(f"left out: {device}", highlight=False)
    return _show(doc, args)


def run_update(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "vm.update",
        name=args.name,
        restart=args.restart,
        vcpus=args.vcpus,
        max_vcpus=args.max_vcpus,
        memory_mib=args.memory_mib,
        max_memory_mib=args.max_memory_mib,
    )
    return _show(doc, args)


def run_simple(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(args.method, name=args.name)
    if not args.json:
        output.console.print(f"{doc['name']}: {doc['state']}", highlight=False)
    return doc


def run_shutdown(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "vm.shutdown", name=args.name, timeout_s=args.shutdown_timeout, force=args.force or None
    )
    if not args.json:
        forced = " (forced)" if doc.get("forced") else ""
        output.console.print(f"{doc['name']}: {doc['state']}{forced}", highlight=False)
    return doc


def run_delete(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "vm.delete", name=args.name, force=args.force or None, keep_disks=args.keep_disks or None
    )
    if not args.json:
        output.console.print(f"{doc['name']}: deleted", highlight=False)
    return doc


SNAPSHOT_DONE = {
    "vm.snapshot.create": "created",
    "vm.snapshot.revert": "reverted",
    "vm.snapshot.delete": "deleted",
}


def run_snapshot(client: SyncClient, args: argparse.Namespace) -> Any:
    params: dict[str, Any] = {"vm": args.vm, "name": args.snapshot}
    if args.method == "vm.snapshot.create":
        params["description"] = args.description
    doc = client.call(args.method, **params)
    if not args.json:
        done = SNAPSHOT_DONE[args.method]
        output.console.print(f"{args.vm}: snapshot {args.snapshot} {done}", highlight=False)
    return doc


def run_snapshot_list(client: SyncClient, args: argparse.Namespace) -> Any:
    rows = client.call("vm.snapshot.list", vm=args.vm)
    if not args.json:
        output.table(rows, SNAP_COLUMNS)
    return rows
