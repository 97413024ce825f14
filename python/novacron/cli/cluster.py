"""``novacron cluster nodes|vms``: the cluster as etcd holds it (any node answers)."""

from __future__ import annotations

import argparse
from typing import Any

from novacron.cli import output
from novacron.sync_client import SyncClient

NODE_COLUMNS = [
    ("node", "NODE"),
    ("state", "STATE"),
    ("address", "ADDRESS"),
    ("version", "VERSION"),
    ("vms", "VMS"),
    ("free", "FREE MEMORY MiB"),
    ("labels_text", "LABELS"),
]
VM_COLUMNS = [("tenant", "TENANT"), ("name", "NAME"), ("node", "NODE"), ("moving", "MIGRATING")]


def add_commands(groups: Any) -> None:
    cluster = groups.add_parser("cluster", help="the cluster (nodes and VM owners in etcd)")
    sub = cluster.add_subparsers(dest="command", required=True, metavar="COMMAND")
    nodes = sub.add_parser("nodes", help="registered nodes, up and down")
    nodes.set_defaults(run=run_nodes)
    vms = sub.add_parser("vms", help="every VM name and the node that owns it")
    vms.add_argument("--tenant")
    vms.add_argument("--node")
    vms.set_defaults(run=run_vms)


def _row(node: dict[str, Any]) -> dict[str, Any]:
    capacity = node.get("capacity") or {}
    free = sum(n.get("memory_placeable_mib") or 0 for n in capacity.get("nodes", []))
    labels = ",".join(f"{k}={v}" for k, v in sorted((node.get("labels") or {}).items()))
    state = node.get("state")
    if state == "up" and node.get("cordon"):
        state = "up, cordoned"
    if state and state.startswith("up") and (node.get("storage") or {}).get("short"):
        state += ", storage short"
    return {
        **node,
        "state": state,
        "free": free if capacity else None,
        "labels_text": labels or None,
    }


def run_nodes(client: SyncClient, args: argparse.Namespace) -> Any:
    rows = client.call("cluster.nodes")
    if not args.json:
        output.table([_row(r) for r in rows], NODE_COLUMNS)
    return rows


def run_vms(client: SyncClient, args: argparse.Namespace) -> Any:
    rows = client.call("cluster.vms", tenant=args.tenant, node=args.node)
    if not args.json:
        shown = []
        for row in rows:
            lock = row.get("migration") or {}
            moving = f"{lock.get('op')} to {lock.get('destination')}" if lock else None
            shown.append({**row, "moving": moving})
        output.table(shown, VM_COLUMNS)
    return rows
