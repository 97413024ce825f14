"""``novacron vm stats [NAME]``: what VMs use, as rates between two samples.

The daemon answers cumulative counters (``vm.stats``, ``vm.stats.list``); this command
takes two samples ``--interval`` seconds apart and shows the rates between them: CPU as a
percentage of the VM's vCPUs (100 % = every vCPU busy), disk and network bytes a second.
A counter that went down between the samples (the VM's QEMU restarted) has no rate.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from novacron.cli import output
from novacron.cli.argtypes import seconds
from novacron.errors import InvalidParams
from novacron.sync_client import SyncClient

COLUMNS = [
    ("name", "NAME"),
    ("tenant", "TENANT"),
    ("state", "STATE"),
    ("cpu_percent", "CPU %"),
    ("rss", "MEMORY (HOST)"),
    ("disk_read", "DISK READ/s"),
    ("disk_write", "DISK WRITE/s"),
    ("net_rx", "NET RX/s"),
    ("net_tx", "NET TX/s"),
]
DEVICE_COLUMNS = [
    ("device", "DEVICE"),
    ("kind", "KIND"),
    ("read", "READ/RX /s"),
    ("write", "WRITE/TX /s"),
    ("read_total", "READ/RX TOTAL"),
    ("write_total", "WRITE/TX TOTAL"),
]


def add_command(sub: Any) -> None:
    cmd = sub.add_parser("stats", help="CPU, memory, disk and network use of VMs")
    cmd.add_argument("name", nargs="?", help="one VM (default: every VM on the node)")
    cmd.add_argument("--tenant", help="only this tenant's VMs (without NAME)")
    cmd.add_argument(
        "--cluster", action="store_true", help="every node's VMs (without NAME; a cluster only)"
    )
    cmd.add_argument(
        "--interval",
        type=seconds(3600, zero=True),
        default=1.0,
        help="seconds between the two samples rates are taken from (0: one sample, no rates)",
    )
    cmd.set_defaults(run=run_stats)


def _delta(old: int | None, new: int | None) -> int | None:
    if old is None or new is None or new < old:
        return None
    return new - old


def _sum(items: list[dict[str, Any]], key: str) -> int | None:
    values: list[int | None] = [item.get(key) for item in items]
    known = [v for v in values if v is not None]
    if not values or len(known) < len(values):
        return None
    return sum(known)


def _per_second(old: int | None, new: int | None, seconds: float) -> float | None:
    step = _delta(old, new)
    return None if step is None or seconds <= 0 else step / seconds


def rates(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Rates between two samples of one VM; ``None`` where they cannot be told."""
    seconds = float(after["at"]) - float(before["at"])
    cpu0, cpu1 = before.get("cpu"), after.get("cpu")
    cpu_percent = None
    if cpu0 and cpu1 and cpu1.get("vcpus"):
        busy = _per_second(cpu0.get("time_ns"), cpu1.get("time_ns"), seconds)
        if busy is not None:
            cpu_percent = 100.0 * busy / 1e9 / cpu1["vcpus"]
    disks0, disks1 = before.get("disks", []), after.get("disks", [])
    nics0, nics1 = before.get("nics", []), after.get("nics", [])
    return {
        "seconds": seconds,
        "cpu_percent": cpu_percent,
        "disk_read_bps": _per_second(_sum(disks0, "rd_bytes"), _sum(disks1, "rd_bytes"), seconds),
        "disk_write_bps": _per_second(_sum(disks0, "wr_bytes"), _sum(disks1, "wr_bytes"), seconds),
        "net_rx_bps": _per_second(_sum(nics0, "rx_bytes"), _sum(nics1, "rx_bytes"), seconds),
        "net_tx_bps": _per_second(_sum(nics0, "tx_bytes"), _sum(nics1, "tx_bytes"), seconds),
    }


def size(value: float | None, suffix: str = "") -> str:
    """``12.3 MiB`` (binary units)."""
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.0f}" if unit == "B" else f"{value:.1f}"
            return f"{text} {unit}{suffix}"
        value /= 1024
    raise AssertionError("unreachable")


def _row(sample: dict[str, Any], rate: dict[str, Any] | None) -> dict[str, Any]:
    """A table row ("-" where there is no figure)."""
    rss = (sample.get("memory") or {}).get("rss_kib")
    rate = rate or {}
    percent = rate.get("cpu_percent")
    return {
        "name": sample["name"],
        "tenant": sample.get("tenant"),
        "state": sample["state"],
        "cpu_percent": None if percent is None else f"{percent:.1f}",
        "rss": None if rss is None else size(rss * 1024),
        "disk_read": size(rate.get("disk_read_bps")),
        "disk_write": size(rate.get("disk_write_bps")),
        "net_rx": size(rate.get("net_rx_bps")),
        "net_tx": size(rate.get("net_tx_bps")),
    }


def _devices(before: dict[str, Any] | None, after: dict[str, Any]) -> list[dict[str, Any]]:
    """One VM's disks and NICs, each with its own rates."""
    seconds = float(after["at"]) - float(before["at"]) if before else 0.0
    old = before or {}
    rows = []
    for kind, items, rd, wr, key in (
        ("disk", "disks", "rd_bytes", "wr_bytes", "target"),
        ("nic", "nics", "rx_bytes", "tx_bytes", "mac"),
    ):
        earlier = {item[key]: item for item in old.get(items, [])}
        for item in after.get(items, []):
            prev = earlier.get(item[key], {})
            rows.append(
                {
                    "device": item[key],
                    "kind": kind,
                    "read": size(_per_second(prev.get(rd), item.get(rd), seconds)),
                    "write": size(_per_second(prev.get(wr), item.get(wr), seconds)),
                    "read_total": size(item.get(rd)),
                    "write_total": size(item.get(wr)),
                }
            )
    return rows


def _sample(
    client: SyncClient, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The VMs' samples, and (with ``--cluster``) each node's answer or error."""
    if args.name:
        return [client.call("vm.stats", name=args.name)], []
    if args.cluster:
        doc = client.call("cluster.stats", tenant=args.tenant)
        return doc["vms"], doc["nodes"]
    result: list[dict[str, Any]] = client.call("vm.stats.list", tenant=args.tenant)
    return result, []


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return str(doc.get("node", "")), str(doc["name"])


def run_stats(client: SyncClient, args: argparse.Namespace) -> Any:
    if args.name and (args.tenant or args.cluster):
        raise InvalidParams("--tenant and --cluster pick several VMs, not a VM by its name")
    samples, nodes = _sample(client, args)
    before: dict[tuple[str, str], dict[str, Any]] = {}
    if args.interval > 0:
        before = {_key(doc): doc for doc in samples}
        time.sleep(args.interval)
        samples, nodes = _sample(client, args)
    found = []
    for doc in samples:
        earlier = before.get(_key(doc))
        found.append({**doc, "rates": rates(earlier, doc) if earlier else None})
    if not args.json:
        columns = [("node", "NODE"), *COLUMNS] if args.cluster else COLUMNS
        output.table(
            [{**_row(doc, doc["rates"]), "node": doc.get("node")} for doc in found], columns
        )
        if args.name and found:
            output.table(_devices(before.get(_key(found[0])), found[0]), DEVICE_COLUMNS)
        for node in nodes:
            if "error" in node:
                output.console.print(
                    f"node {node['node']}: no answer ({node['error'].get('message')})",
                    highlight=False,
                    markup=False,
                )
    if args.cluster:
        return {"vms": found, "nodes": nodes}
    return found[0] if args.name else found
