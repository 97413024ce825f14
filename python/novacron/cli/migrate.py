"""``novacron vm migrate`` (with a live progress bar) and ``novacron op ...``."""

from __future__ import annotations

import argparse
from typing import Any

from novacron.cli import output
from novacron.errors import from_wire
from novacron.sync_client import SyncClient

OP_COLUMNS = [
    ("id", "OP"),
    ("kind", "KIND"),
    ("vm", "VM"),
    ("peer", "PEER"),
    ("state", "STATE"),
    ("phase", "PHASE"),
    ("created_at", "STARTED"),
]
SUMMARY = [
    "destination",
    "offline",
    "total_s",
    "downtime_ms",
    "rounds",
    "pages",
    "zero_pages",
    "bytes_logical",
    "bytes_wire",
    "reduction",
    "stall_actions",
]


def add_vm_command(sub: Any) -> None:
    mig = sub.add_parser(
        "migrate", help="live-migrate a running VM to another node (a stopped one moves offline)"
    )
    mig.add_argument("name")
    mig.add_argument("--to", required=True, dest="destination", help="NODE or NODE:PORT")
    add_option_arguments(mig)
    mig.add_argument("--detach", action="store_true", help="print the operation id and return")
    mig.set_defaults(run=run_migrate)


def add_option_arguments(parser: Any) -> None:
    """The migration options (``OPTION_KEYS``), for ``vm migrate`` and ``node drain``."""
    parser.add_argument("--max-downtime-ms", type=int)
    parser.add_argument("--bandwidth-mbps", type=int, help="cap QEMU's stream (Mbit/s)")
    parser.add_argument("--compression", choices=("lz4", "zstd", "none"))
    parser.add_argument("--zstd-level", type=int)
    parser.add_argument(
        "--disk-compression",
        choices=("lz4", "zstd", "none"),
        help="how pool disks copied live cross the link (default lz4)",
    )
    parser.add_argument("--no-dedup", action="store_false", dest="dedup", default=None)
    parser.add_argument("--auto-converge", action="store_true", default=None)
    parser.add_argument("--stall-action", choices=("auto_converge", "raise_downtime", "cancel"))
    parser.add_argument("--stall-rounds", type=int, help="rounds without progress that are a stall")
    parser.add_argument("--timeout-s", type=float, dest="timeout_s")


def add_op_commands(groups: Any) -> None:
    op = groups.add_parser("op", help="long-running operations (migrations)")
    sub = op.add_subparsers(dest="command", required=True, metavar="COMMAND")
    lst = sub.add_parser("list", help="running and recent operations")
    lst.add_argument("--limit", type=int, default=50)
    lst.set_defaults(run=run_list)
    get = sub.add_parser("get", help="one operation")
    get.add_argument("op")
    get.set_defaults(run=run_get)
    cancel = sub.add_parser("cancel", help="cancel a running operation")
    cancel.add_argument("op")
    cancel.set_defaults(run=run_cancel)


OPTION_KEYS = (
    "max_downtime_ms",
    "bandwidth_mbps",
    "compression",
    "zstd_level",
    "disk_compression",
    "dedup",
    "auto_converge",
    "stall_action",
    "stall_rounds",
    "timeout_s",
)


def run_migrate(client: SyncClient, args: argparse.Namespace) -> Any:
    options = {k: getattr(args, k) for k in OPTION_KEYS if getattr(args, k) is not None}
    if args.detach:
        started = client.call("vm.migrate", name=args.name, destination=args.destination, **options)
        if not args.json:
            output.console.print(f"{started['op']}", highlight=False)
        return started
    events = client.events(["op.progress", "op.finished"])
    started = client.call("vm.migrate", name=args.name, destination=args.destination, **options)
    op_id = started["op"]
    finished = _follow(events, op_id, quiet=args.json)
    doc = client.call("op.get", op=op_id)
    if finished.get("state") != "succeeded":
        raise from_wire(finished.get("error") or {"code": "migration_failed", "message": "?"})
    if not args.json:
        result = doc.get("result") or {}
        # (the snapshots the destination defined, when the VM had any)
        output.fields(result, SUMMARY + (["snapshots"] if "snapshots" in result else []))
    return doc


def _follow(events: Any, op_id: str, quiet: bool) -> dict[str, Any]:
    """Waits for the operation's end, with a live progress bar unless ``quiet``."""
    if quiet:  # a script's (--json): no bar, and no rich to import
        for event in events:
            if event.get("op") == op_id and event["topic"] == "op.finished":
                return dict(event)
        return {"state": "unknown"}
    from rich.progress import (  # noqa: PLC0415 - see output's docstring
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=output.console,
        transient=False,
    ) as bar:
        task = bar.add_task("preparing", total=None, detail="")
        for event in events:
            if event.get("op") != op_id:
                continue
            if event["topic"] == "op.finished":
                bar.update(task, description=str(event.get("state")))
                return dict(event)
            total = event.get("total_bytes") or None
            done = (total - event.get("remaining_bytes", 0)) if total else None
            bar.update(
                task,
                description=str(event.get("phase")),
                total=total,
                completed=done,
                detail=progress_detail(event),
            )
    return {"state": "unknown"}


def progress_detail(event: dict[str, Any]) -> str:
    """One ``op.progress`` sample as the bar's text: a stopped VM's volume copy, or a
    live migration's round, memory and (when it mirrors pool disks) disk bytes."""
    if event.get("phase") == "copying":
        return (
            f"{event.get('disks', 0)} volume(s) copied  "
            f"{_mb(event.get('bytes'))} -> {_mb(event.get('bytes_wire'))} MB"
        )
    detail = (
        f"round {event.get('round', 0)}  {event.get('pages', 0)} pages  "
        f"{_mb(event.get('bytes_logical'))} -> {_mb(event.get('bytes_wire'))} MB  "
        f"dirty {_mb(event.get('dirty_rate_bytes_s'))} MB/s"
    )
    if "disk_bytes" in event:
        detail += f"  disk {_mb(event['disk_bytes'])} -> {_mb(event.get('disk_bytes_wire'))} MB"
    if "stall" in event:
        detail += f"  stalled: {event['stall']['action']}"
    return detail


def _mb(value: Any) -> str:
    return f"{(value or 0) / 1e6:.1f}"


def run_list(client: SyncClient, args: argparse.Namespace) -> Any:
    ops = client.call("op.list", limit=args.limit)
    if not args.json:
        output.table(ops, OP_COLUMNS)
    return ops


def run_get(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("op.get", op=args.op)
    if not args.json:
        output.fields(doc)
    return doc


def run_cancel(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("op.cancel", op=args.op)
    if not args.json:
        output.console.print(f"cancelling {args.op}", highlight=False)
    return doc
