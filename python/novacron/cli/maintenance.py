"""``novacron node cordon|uncordon|drain``: a host's maintenance (admin)."""

from __future__ import annotations

import argparse
from typing import Any

from novacron.cli import output
from novacron.cli.migrate import OPTION_KEYS, add_option_arguments
from novacron.errors import from_wire
from novacron.sync_client import SyncClient


def add_node_commands(sub: Any) -> None:
    cordon = sub.add_parser(
        "cordon", help="take no new VMs and no incoming migrations (admin; maintenance)"
    )
    cordon.add_argument("--reason", default="", help="why (shown in node info, cluster nodes)")
    cordon.set_defaults(run=run_cordon)
    sub.add_parser("uncordon", help="take new VMs again").set_defaults(run=run_uncordon)
    drain = sub.add_parser(
        "drain", help="cordon this node and move every VM away, one at a time (admin)"
    )
    drain.add_argument(
        "--to", dest="destination", help="NODE or HOST[:PORT] (default: in a cluster, per VM)"
    )
    drain.add_argument(
        "--keep-stopped", action="store_true", help="move only running and paused VMs"
    )
    drain.add_argument("--reason", default="drain")
    add_option_arguments(drain)
    drain.add_argument("--detach", action="store_true", help="print the operation id and return")
    drain.set_defaults(run=run_drain)


def _cordon_fields(doc: dict[str, Any]) -> dict[str, Any]:
    cordon = doc.get("cordon")
    if cordon is None:
        return {"node": doc["node"], "cordoned": "no"}
    return {
        "node": doc["node"],
        "cordoned": "yes",
        "since": output.when(cordon["since"]),
        "reason": cordon["reason"] or "-",
        "by": cordon["by"] or "-",
    }


def run_cordon(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("node.cordon", reason=args.reason)
    if not args.json:
        output.fields(_cordon_fields(doc))
    return doc


def run_uncordon(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("node.uncordon")
    if not args.json:
        output.fields(_cordon_fields(doc))
    return doc


def run_drain(client: SyncClient, args: argparse.Namespace) -> Any:
    params = {k: getattr(args, k) for k in OPTION_KEYS if getattr(args, k) is not None}
    params.update(keep_stopped=args.keep_stopped, reason=args.reason)
    if args.destination is not None:
        params["destination"] = args.destination
    if args.detach:
        started = client.call("node.drain", **params)
        if not args.json:
            output.console.print(started["op"], highlight=False)
        return started
    events = client.events(["op.progress", "op.finished"])
    started = client.call("node.drain", **params)
    op_id = started["op"]
    if not args.json:
        output.console.print(
            f"{op_id}: draining {started['node']} ({len(started['vms'])} VMs)", highlight=False
        )
    finished = _follow(events, op_id, quiet=args.json)
    doc = client.call("op.get", op=op_id)
    if not args.json:
        _print_result(doc.get("result") or {})
    if finished.get("state") != "succeeded":
        raise from_wire(finished.get("error") or {"code": "migration_failed", "message": "?"})
    return doc


def _follow(events: Any, op_id: str, quiet: bool) -> dict[str, Any]:
    """Waits for the drain's end, printing the VM it moves as it goes unless ``quiet``."""
    shown = None
    for event in events:
        if event.get("op") != op_id:
            continue
        if event["topic"] == "op.finished":
            return dict(event)
        current = event.get("current")
        if not quiet and current is not None and current != shown:
            shown = current
            done, total = event.get("done", 0), event.get("total", 0)
            output.console.print(
                f"[{done + 1}/{total}] moving {current}", highlight=False, markup=False
            )
    return {"state": "unknown"}


def _print_result(result: dict[str, Any]) -> None:
    rows = [
        {"vm": m["vm"], "outcome": "moved", "detail": m["destination"], "op": m["op"]}
        for m in result.get("moved", [])
    ]
    rows += [
        {"vm": f["vm"], "outcome": "failed", "detail": f["error"]["message"], "op": f["op"] or "-"}
        for f in result.get("failed", [])
    ]
    rows += [
        {"vm": k["vm"], "outcome": "kept", "detail": k["reason"], "op": "-"}
        for k in result.get("kept", [])
    ]
    rows += [
        {"vm": name, "outcome": "left", "detail": "not tried", "op": "-"}
        for name in result.get("left", [])
    ]
    output.table(rows, [("vm", "VM"), ("outcome", "OUTCOME"), ("detail", "DETAIL"), ("op", "OP")])
