"""``novacron net ...`` (host networks) and ``novacron vm nic ...`` (VM NICs)."""

from __future__ import annotations

import argparse
from typing import Any

from novacron.cli import output
from novacron.sync_client import SyncClient

LIST_COLUMNS = [
    ("name", "NAME"),
    ("tenant", "TENANT"),
    ("kind", "KIND"),
    ("detail", "SETTINGS"),
    ("mtu_effective", "MTU"),
    ("state", "STATE"),
    ("users", "NICS"),
]


def add_commands(groups: Any) -> None:
    net = groups.add_parser("net", help="host networks (bridges, VLANs, VXLAN overlays)")
    sub = net.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = sub.add_parser("create", help="create a network on this host")
    create.add_argument("name", help="network (and bridge) name, at most 13 characters")
    create.add_argument("--kind", choices=("bridge", "vlan", "vxlan"), default="bridge")
    create.add_argument("--tenant")
    create.add_argument("--mtu", type=int)
    create.add_argument("--uplink", help="bridge: host interface to add as a port (admin)")
    create.add_argument("--parent", help="vlan: bridge network or host interface (admin)")
    create.add_argument("--vlan-id", type=int)
    create.add_argument("--vni", type=int, help="vxlan: network identifier")
    # (dest not "local": that attribute marks commands that need no daemon)
    create.add_argument("--local", dest="local_address", help="vxlan: this host's address")
    create.add_argument(
        "--remote", action="append", dest="remotes", help="vxlan: a peer host (repeatable)"
    )
    create.add_argument("--group", help="vxlan: multicast group instead of --remote")
    create.add_argument("--device", help="vxlan: underlay interface (admin)")
    create.add_argument("--port", type=int, help="vxlan: UDP port (default 4789)")
    create.set_defaults(run=run_create)

    lst = sub.add_parser("list", help="list networks")
    lst.add_argument("--tenant")
    lst.set_defaults(run=run_list)

    get = sub.add_parser("get", help="show one network")
    get.add_argument("name")
    get.set_defaults(run=run_get)

    delete = sub.add_parser("delete", help="delete a network (refused while NICs use it)")
    delete.add_argument("name")
    delete.set_defaults(run=run_delete)


def add_vm_commands(vm_sub: Any) -> None:
    nic = vm_sub.add_parser("nic", help="VM NICs")
    nics = nic.add_subparsers(dest="nic_command", required=True, metavar="COMMAND")
    attach = nics.add_parser("attach", help="add a NIC (hot-plugged if the VM runs)")
    attach.add_argument("vm")
    attach.add_argument("network")
    attach.add_argument("--mac", help="default: generated (52:54:00:xx:xx:xx)")
    attach.add_argument("--model", choices=("virtio", "e1000", "rtl8139"))
    attach.set_defaults(run=run_attach)
    detach = nics.add_parser(
        "detach", help="remove a NIC by its MAC address (unplugged if the VM runs)"
    )
    detach.add_argument("vm")
    detach.add_argument("mac")
    detach.add_argument(
        "--timeout-s", type=float, help="how long a running guest has to let go (default 30)"
    )
    detach.set_defaults(run=run_detach)
    limit = nics.add_parser(
        "limit",
        help="limit a NIC's bandwidth, bytes a second (at once if the VM runs; 0 lifts one)",
    )
    limit.add_argument("vm")
    limit.add_argument("mac")
    limit.add_argument("--inbound", type=int, metavar="BYTES", help="to the guest, bytes a second")
    limit.add_argument(
        "--outbound", type=int, metavar="BYTES", help="from the guest, bytes a second"
    )
    limit.set_defaults(run=run_limit)


def nic_arg(text: str) -> dict[str, Any]:
    """``NETWORK`` or ``NETWORK:MAC`` (for ``vm create --nic``)."""
    network, _, mac = text.partition(":")
    return {"network": network, "mac": mac} if mac else {"network": network}


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """A list row: the kind's settings in one cell, device state in another."""
    kind = doc["kind"]
    if kind == "vxlan":
        peers = doc.get("group") or ",".join(doc.get("remotes", []))
        detail = f"vni {doc['vni']} local {doc['local']} -> {peers}"
    elif kind == "vlan":
        detail = f"vlan {doc['vlan_id']} on {doc['parent']}"
    else:
        detail = f"uplink {doc['uplink']}" if doc.get("uplink") else "-"
    missing = [d["name"] for d in doc["devices"] if not d["present"]]
    down = [d["name"] for d in doc["devices"] if d["present"] and not d["up"]]
    state = (
        "missing " + ",".join(missing) if missing else "down " + ",".join(down) if down else "up"
    )
    if doc.get("problems"):
        state += " (!)"
    return {**doc, "detail": detail, "state": state, "users": len(doc.get("nics", []))}


def _show(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if not args.json:
        output.fields(summary(doc))
    return doc


def run_create(client: SyncClient, args: argparse.Namespace) -> Any:
    keys = ("name", "kind", "tenant", "mtu", "uplink", "parent", "vlan_id", "vni")
    params = {key: getattr(args, key) for key in keys}
    params.update(
        local=args.local_address,
        remotes=args.remotes,
        group=args.group,
        device=args.device,
        port=args.port,
    )
    return _show(client.call("net.create", **params), args)


def run_list(client: SyncClient, args: argparse.Namespace) -> Any:
    rows = client.call("net.list", tenant=args.tenant)
    if not args.json:
        output.table([summary(r) for r in rows], LIST_COLUMNS)
    return rows


def run_get(client: SyncClient, args: argparse.Namespace) -> Any:
    return _show(client.call("net.get", name=args.name), args)


def run_delete(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("net.delete", name=args.name)
    if not args.json:
        output.console.print(f"{args.name}: deleted", highlight=False)
    return doc


def limits_text(limits: dict[str, int] | None) -> str | None:
    """A NIC's limits as ``in 1000000 B/s, out 500000 B/s`` (None: none)."""
    if not limits:
        return None
    parts = [("in", limits.get("inbound_bytes_per_s")), ("out", limits.get("outbound_bytes_per_s"))]
    return ", ".join(f"{way} {rate} B/s" for way, rate in parts if rate)


def _nics(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if not args.json:
        rows = [{**n, "limits": limits_text(n.get("limits"))} for n in doc["nics"]]
        columns = [("network", "NETWORK"), ("mac", "MAC"), ("model", "MODEL"), ("limits", "LIMITS")]
        output.table(rows, columns)
    return doc


def run_attach(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "vm.nic.attach", vm=args.vm, network=args.network, mac=args.mac, model=args.model
    )
    return _nics(doc, args)


def run_limit(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "vm.nic.limit",
        vm=args.vm,
        mac=args.mac,
        inbound_bytes_per_s=args.inbound,
        outbound_bytes_per_s=args.outbound,
    )
    return _nics(doc, args)


def run_detach(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("vm.nic.detach", vm=args.vm, mac=args.mac, timeout_s=args.timeout_s)
    return _nics(doc, args)
