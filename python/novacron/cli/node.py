"""``novacron node info|topology|backup`` (``cordon|uncordon|drain``: :mod:`.maintenance`),
``novacron hello``, ``novacron events``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from novacron.cli import maintenance, output
from novacron.sync_client import SyncClient


def add_commands(groups: Any) -> None:
    hello = groups.add_parser("hello", help="check the connection and show who you are")
    hello.set_defaults(run=run_hello)

    node = groups.add_parser("node", help="this host")
    sub = node.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("info", help="host, hypervisor, CPUs, memory").set_defaults(run=run_info)
    sub.add_parser("topology", help="NUMA nodes, cores and threads, what VMs hold").set_defaults(
        run=run_topology
    )
    sub.add_parser(
        "backup", help="a consistent copy of this node's state store (admin; docs/operations.md)"
    ).set_defaults(run=run_backup)
    maintenance.add_node_commands(sub)

    events = groups.add_parser("events", help="print events as they happen (Ctrl-C to stop)")
    events.add_argument("--topic", action="append", dest="topics", help="only this topic")
    events.add_argument("--count", type=int, help="stop after this many events")
    events.set_defaults(run=run_events)


def run_hello(client: SyncClient, args: argparse.Namespace) -> Any:
    result = client.call("session.hello", client="novacron-cli")
    if not args.json:
        ident = result["identity"]
        output.fields(
            {
                "node": result["node"],
                "server": f"{result['server']} {result['version']}",
                "protocol": result["protocol"],
                "you": f"{ident['user']} (uid {ident['uid']}) roles: "
                + (", ".join(ident["roles"]) or "none"),
            }
        )
    return result


def run_backup(client: SyncClient, args: argparse.Namespace) -> Any:
    made = client.call("node.backup")
    if not args.json:
        output.fields(
            {
                "path": made["path"],
                "bytes": made["bytes"],
                "vms": made["vms"],
                "audit_entries": made["audit_entries"],
                "integrity": made["integrity"],
                "kept": len(made["kept"]),
                "removed": ", ".join(made["removed"]) or "none",
            }
        )
    return made


def run_info(client: SyncClient, args: argparse.Namespace) -> Any:
    info = client.call("node.info")
    if not args.json:
        hv, cpu = info["hypervisor"], info["cpu"]
        output.fields(
            {
                "node": info["node"],
                "hostname": info["hostname"],
                "hypervisor": f"{hv['type']} {hv['version']} ({hv['uri']}, "
                f"libvirt {hv['libvirt_version']}, domains: {hv['domain_type']})",
                "cpus": f"{cpu['count']} x {cpu['model']} ({cpu['sockets']} sockets, "
                f"{cpu['cores_per_socket']} cores, {cpu['threads_per_core']} threads)",
                "memory": f"{info['memory_mib']} MiB",
                "numa_nodes": info["numa_nodes"],
                "managed_vms": info["daemon"]["managed_vms"],
                "storage": _storage(info.get("storage")),
                "cordoned": _cordoned(info.get("cordon")),
                "uptime": f"{info['daemon']['uptime_s']:.0f} s",
            }
        )
    return info


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.1f} GiB"


def _storage(storage: dict[str, Any] | None) -> str:
    """The pool's free space, and what its (thin) volumes were promised against its size."""
    if storage is None:
        return "-"
    line = f"{_gib(storage['available_bytes'])} free of {_gib(storage['capacity_bytes'])} "
    line += f"({storage['path']})"
    if "reserve_bytes" in storage:  # (a daemon before the reserve has none)
        line += f", {_gib(storage['reserve_bytes'])} kept free"
    line += f"; {storage['volumes']} volumes of {_gib(storage['committed_bytes'])}"
    if storage.get("overcommit"):
        line += f" (at most {storage['overcommit']:g}x its size)"
    return line


def _cordoned(cordon: dict[str, Any] | None) -> str:
    if cordon is None:
        return "no"
    return f"yes, by {cordon['by'] or '-'}" + (f": {cordon['reason']}" if cordon["reason"] else "")


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _cpus(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids) or "-"


def run_topology(client: SyncClient, args: argparse.Namespace) -> Any:
    topo = client.call("node.info")["topology"]
    if args.json:
        return topo
    if topo.get("problem"):
        output.errors.print(f"[bold red]placement unusable:[/bold red] {topo['problem']}")
    output.fields(
        {
            "dedicated cpus": topo["dedicated_cpus"] or "-",
            "shared cpus": topo["shared_cpus"] or "-",
            "placed vms": topo["placed_vms"],
        }
    )
    for node in topo["nodes"]:
        huge = ", ".join(
            f"{int(size) // 1024} MiB pages: {_or_dash(p['placeable'])} placeable,"
            f" {_or_dash(p['free'])} free / {p['total']}"
            for size, p in node["hugepages"].items()
        )
        distances = " ".join(f"{k}:{v}" for k, v in node["distances"].items())
        output.console.print(
            f"\n[bold]NUMA node {node['id']}[/bold]  memory {node['memory_mib']} MiB"
            f" (placeable {node['memory_placeable_mib']}, kernel free"
            f" {_or_dash(node['memory_free_mib'])})"
            f"  shared vCPUs {node['shared_vcpus']}/{node['shared_capacity']}"
            + (f"\n  hugepages: {huge}" if huge else "")
            + (f"\n  distances: {distances}" if distances else ""),
            highlight=False,
        )
        cores: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for cpu in node["cpus"]:
            cores.setdefault((cpu["socket"], cpu["core"]), []).append(cpu)
        rows = [
            {
                "socket": socket,
                "core": core,
                "threads": _cpus([c["id"] for c in threads]),
                "pool": "/".join(sorted({c["pool"] for c in threads})),
                "in_use": _cpus([c["id"] for c in threads if c["in_use"]]),
            }
            for (socket, core), threads in sorted(cores.items())
        ]
        output.table(
            rows,
            [
                ("socket", "socket"),
                ("core", "core"),
                ("threads", "threads"),
                ("pool", "pool"),
                ("in_use", "dedicated in use"),
            ],
        )
    return topo


def run_events(client: SyncClient, args: argparse.Namespace) -> None:
    for seen, event in enumerate(client.events(args.topics), start=1):
        if args.json:
            print(json.dumps(event, sort_keys=True), flush=True)
        else:
            detail = " ".join(f"{k}={v}" for k, v in event.items() if k != "topic")
            from rich.text import Text  # noqa: PLC0415 - see output's docstring

            line = Text.assemble((str(event.get("topic")), "bold"), " ", detail)
            output.console.print(line, highlight=False)
        if args.count is not None and seen >= args.count:
            return
