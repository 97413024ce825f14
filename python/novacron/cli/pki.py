"""``novacron ca init``, ``novacron cert issue|revoke|list``: the cluster CA, on local
files (no daemon involved). Private keys are written 0600 and never printed."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from novacron.cli import output
from novacron.errors import InvalidParams
from novacron.pki.ca import CaError, CertificateAuthority
from novacron.pki.names import ROLES

DEFAULT_CA_DIR = os.environ.get("NOVACRON_CA_DIR", "/etc/novacron/ca")


def add_commands(groups: Any) -> None:
    ca = groups.add_parser("ca", help="the cluster certificate authority (local files)")
    ca_sub = ca.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = ca_sub.add_parser("init", help="create a CA (ca.key 0600, ca.crt, crl.pem)")
    init.add_argument("--dir", type=Path, default=Path(DEFAULT_CA_DIR), dest="ca_dir")
    init.add_argument("--name", default="NovaCron CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=3650)
    init.set_defaults(run=run_init, local=True)
    crl = ca_sub.add_parser("crl", help="re-sign the revocation list (it is valid 30 days)")
    crl.add_argument("--dir", type=Path, default=Path(DEFAULT_CA_DIR), dest="ca_dir")
    crl.set_defaults(run=run_crl, local=True)

    cert = groups.add_parser("cert", help="issue, revoke and list certificates")
    sub = cert.add_subparsers(dest="command", required=True, metavar="COMMAND")
    issue = sub.add_parser("issue", help="issue a certificate and key for a user or node")
    issue.add_argument("--ca-dir", type=Path, default=Path(DEFAULT_CA_DIR))
    issue.add_argument("--name", required=True, help="user or node name (the certificate's CN)")
    issue.add_argument("--role", required=True, choices=ROLES)
    issue.add_argument("--tenant", action="append", default=[], dest="tenants")
    issue.add_argument("--node", action="store_true", help="a node certificate (role node)")
    issue.add_argument(
        "--address", action="append", default=[], help="node: IP or DNS name peers dial"
    )
    issue.add_argument("--out", type=Path, default=Path("."), help="where to write NAME.crt/.key")
    issue.add_argument("--days", type=int, default=365)
    issue.set_defaults(run=run_issue, local=True)
    revoke = sub.add_parser("revoke", help="revoke a certificate (daemons: SIGHUP to reload)")
    revoke.add_argument("--ca-dir", type=Path, default=Path(DEFAULT_CA_DIR))
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--name")
    which.add_argument("--serial", type=lambda v: int(v, 0))
    revoke.set_defaults(run=run_revoke, local=True)
    lst = sub.add_parser("list", help="every certificate the CA issued")
    lst.add_argument("--ca-dir", type=Path, default=Path(DEFAULT_CA_DIR))
    lst.set_defaults(run=run_list, local=True)


def _ca(path: Path) -> CertificateAuthority:
    try:
        return CertificateAuthority(path)
    except CaError as exc:
        raise InvalidParams(str(exc)) from None


def run_init(_client: None, args: argparse.Namespace) -> Any:
    try:
        ca = CertificateAuthority.init(args.ca_dir, args.name, args.days)
    except CaError as exc:
        raise InvalidParams(str(exc)) from None
    doc = {
        "ca_dir": str(ca.dir),
        "certificate": str(ca.dir / "ca.crt"),
        "crl": str(ca.dir / "crl.pem"),
    }
    if not args.json:
        output.fields(doc)
    return doc


def run_crl(_client: None, args: argparse.Namespace) -> Any:
    path = _ca(args.ca_dir).write_crl()
    doc = {"crl": str(path)}
    if not args.json:
        output.fields(doc)
    return doc


def run_issue(_client: None, args: argparse.Namespace) -> Any:
    if args.node and args.role != "node":
        raise InvalidParams("--node certificates have role node")
    try:
        cert, key = _ca(args.ca_dir).issue(
            args.name,
            args.role,
            args.out,
            tenants=tuple(args.tenants),
            node=args.node,
            addresses=tuple(args.address),
            days=args.days,
        )
    except CaError as exc:
        raise InvalidParams(str(exc)) from None
    doc = {"name": args.name, "role": args.role, "certificate": str(cert), "key": str(key)}
    if not args.json:
        output.fields(doc)
    return doc


def run_revoke(_client: None, args: argparse.Namespace) -> Any:
    try:
        serials = _ca(args.ca_dir).revoke(name=args.name, serial=args.serial)
    except CaError as exc:
        raise InvalidParams(str(exc)) from None
    doc = {"revoked": [hex(s) for s in serials], "crl": str(args.ca_dir / "crl.pem")}
    if not args.json:
        output.fields(doc)
        output.console.print("copy crl.pem to the daemons and send them SIGHUP", highlight=False)
    return doc


def run_list(_client: None, args: argparse.Namespace) -> Any:
    rows = [
        {
            "serial": hex(e.serial),
            "name": e.name,
            "role": ",".join(e.roles),
            "tenants": ",".join(e.tenants) or "-",
            "not_after": e.not_after,
            "revoked_at": e.revoked_at,
        }
        for e in _ca(args.ca_dir).index()
    ]
    if not args.json:
        output.table(
            rows,
            [
                ("name", "NAME"),
                ("role", "ROLE"),
                ("tenants", "TENANTS"),
                ("not_after", "EXPIRES"),
                ("revoked_at", "REVOKED"),
                ("serial", "SERIAL"),
            ],
        )
    return rows
