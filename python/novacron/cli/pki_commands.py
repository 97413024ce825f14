"""What ``novacron ca ...`` and ``novacron cert ...`` do (the parsers are in
:mod:`novacron.cli.pki`): the cluster CA on local files, no daemon involved."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from novacron.cli import output
from novacron.errors import InvalidParams
from novacron.pki.ca import CaError, CertificateAuthority


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
