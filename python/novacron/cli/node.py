"""``novacron node info``, ``novacron hello``, ``novacron events``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from novacron.cli import output
from novacron.client import SyncClient


def add_commands(groups: Any) -> None:
    hello = groups.add_parser("hello", help="check the connection and show who you are")
    hello.set_defaults(run=run_hello)

    node = groups.add_parser("node", help="this host")
    sub = node.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("info", help="host, hypervisor, CPUs, memory").set_defaults(run=run_info)

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
                "uptime": f"{info['daemon']['uptime_s']:.0f} s",
            }
        )
    return info


def run_events(client: SyncClient, args: argparse.Namespace) -> None:
    for seen, event in enumerate(client.events(args.topics), start=1):
        if args.json:
            print(json.dumps(event, sort_keys=True), flush=True)
        else:
            detail = " ".join(f"{k}={v}" for k, v in event.items() if k != "topic")
            output.console.print(f"[bold]{event.get('topic')}[/bold] {detail}", highlight=False)
        if args.count is not None and seen >= args.count:
            return
