"""``novacron whoami``, ``novacron auth bind|unbind|bindings``, ``novacron audit tail|verify``."""

from __future__ import annotations

import argparse
from typing import Any

from novacron.cli import output
from novacron.cli.disks import LIMIT_FLAGS, limits_text
from novacron.cli.net import limits_text as nic_limits_text
from novacron.sync_client import SyncClient


class AuditBroken(Exception):
    """``audit verify`` found a bad entry (the CLI exits non-zero)."""


def add_commands(groups: Any) -> None:
    groups.add_parser("whoami", help="your identity, roles and tenants").set_defaults(
        run=run_whoami
    )
    auth = groups.add_parser("auth", help="role bindings for local users and groups")
    sub = auth.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bind = sub.add_parser("bind", help="give user:NAME or group:NAME a role in tenants")
    bind.add_argument("principal")
    bind.add_argument("--role", required=True, choices=("operator", "viewer", "admin"))
    bind.add_argument("--tenant", action="append", default=[], dest="tenants")
    bind.set_defaults(run=run_bind)
    unbind = sub.add_parser("unbind", help="remove a binding")
    unbind.add_argument("principal")
    unbind.set_defaults(run=run_unbind)
    sub.add_parser("bindings", help="list bindings").set_defaults(run=run_bindings)

    audit = groups.add_parser("audit", help="the tamper-evident audit log")
    asub = audit.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tail = asub.add_parser("tail", help="the newest entries")
    tail.add_argument("-n", "--limit", type=int, default=20)
    tail.set_defaults(run=run_tail)
    asub.add_parser(
        "verify", help="check the hash chain (exit 1 at the first bad entry)"
    ).set_defaults(run=run_verify)


def run_whoami(client: SyncClient, args: argparse.Namespace) -> Any:
    who = client.call("auth.whoami")
    if not args.json:
        ident = who["identity"]
        tenants = ident["tenants"]
        output.fields(
            {
                "principal": who["principal"],
                "roles": ", ".join(ident["roles"]) or "none",
                "tenants": "all" if tenants is None else ", ".join(tenants) or "none",
                "permissions": ", ".join(who["permissions"]),
            }
        )
    return who


def run_bind(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("auth.bind", principal=args.principal, role=args.role, tenants=args.tenants)
    if not args.json:
        output.fields(doc)
    return doc


def run_unbind(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call("auth.unbind", principal=args.principal)
    if not args.json:
        output.fields(doc)
    return doc


def run_bindings(client: SyncClient, args: argparse.Namespace) -> Any:
    rows = client.call("auth.bindings")
    if not args.json:
        shown = [{**r, "tenants": ",".join(r["tenants"]) or "-"} for r in rows]
        output.table(shown, [("principal", "PRINCIPAL"), ("role", "ROLE"), ("tenants", "TENANTS")])
    return rows


def run_tail(client: SyncClient, args: argparse.Namespace) -> Any:
    rows = client.call("audit.tail", limit=args.limit)
    if not args.json:
        output.table(
            [{**r, "ts_at": r["ts"]} for r in rows],
            [
                ("id", "ID"),
                ("ts_at", "TIME"),
                ("principal", "WHO"),
                ("tenant", "TENANT"),
                ("method", "METHOD"),
                ("outcome", "OUTCOME"),
            ],
        )
    return rows


def run_verify(client: SyncClient, args: argparse.Namespace) -> Any:
    result = client.call("audit.verify")
    if not args.json:
        if result["ok"]:
            output.console.print(
                f"audit log intact: {result['entries']} entries, head {result['head']}",
                highlight=False,
            )
        else:
            output.errors.print(
                f"audit log BROKEN at entry {result['first_bad']}: {result['reason']}"
                f" ({result['entries']} entries check out before it)",
                highlight=False,
            )
    if not result["ok"]:
        if args.json:
            output.as_json(result)
        raise AuditBroken(result["first_bad"])
    return result


def add_quota_commands(groups: Any) -> None:
    quota = groups.add_parser("quota", help="per-tenant quotas")
    sub = quota.add_subparsers(dest="command", required=True, metavar="COMMAND")
    get = sub.add_parser("get", help="a tenant's limits and usage")
    get.add_argument("tenant")
    get.set_defaults(run=run_quota_get)
    put = sub.add_parser("set", help="set a tenant's limits (omitted = no limit)")
    put.add_argument("tenant")
    put.add_argument("--vcpus", type=int, dest="max_vcpus")
    put.add_argument("--memory", type=int, dest="max_memory_mib", help="MiB")
    put.add_argument("--vms", type=int, dest="max_vms")
    put.add_argument(
        "--disk", type=int, dest="max_disk_gib", help="GiB of new volumes (not images by path)"
    )
    for flag, key, unit in LIMIT_FLAGS:  # (the throttle of the tenant's new disks)
        put.add_argument(
            f"--disk-{flag.removeprefix('--')}",
            type=int,
            dest=f"disk_{key}",
            metavar="N",
            help=f"{unit} a second by each new disk without limits of its own",
        )
    for way in ("inbound", "outbound"):  # (the bandwidth limits of the tenant's new NICs)
        put.add_argument(
            f"--nic-{way}",
            type=int,
            dest=f"nic_{way}",
            metavar="BYTES",
            help=f"{way} bytes a second through each new NIC without limits of its own",
        )
    put.set_defaults(run=run_quota_set)


def _show_quota(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if not args.json:
        used = doc["used"]

        def limit(key: str, used_key: str) -> str:
            cap = doc[key]
            return f"{used[used_key]} / {'unlimited' if cap is None else cap}"

        output.fields(
            {
                "tenant": doc["tenant"],
                "vcpus": limit("max_vcpus", "vcpus"),
                "memory_mib": limit("max_memory_mib", "memory_mib"),
                "vms": limit("max_vms", "vms"),
                "disk_gib": limit("max_disk_gib", "disk_gib"),
                "disk_limits": limits_text(doc.get("disk_limits")) or "none",
                "nic_limits": nic_limits_text(doc.get("nic_limits")) or "none",
            }
        )
    return doc


def run_quota_get(client: SyncClient, args: argparse.Namespace) -> Any:
    return _show_quota(client.call("quota.get", tenant=args.tenant), args)


def run_quota_set(client: SyncClient, args: argparse.Namespace) -> Any:
    doc = client.call(
        "quota.set",
        tenant=args.tenant,
        max_vcpus=args.max_vcpus,
        max_memory_mib=args.max_memory_mib,
        max_vms=args.max_vms,
        max_disk_gib=args.max_disk_gib,
        disk_limits={k: v for _, k, _ in LIMIT_FLAGS if (v := getattr(args, f"disk_{k}"))} or None,
        nic_limits={
            f"{way}_bytes_per_s": v
            for way in ("inbound", "outbound")
            if (v := getattr(args, f"nic_{way}"))
        }
        or None,
    )
    return _show_quota(doc, args)
