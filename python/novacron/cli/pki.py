"""``novacron ca init``, ``novacron cert issue|revoke|list``: the cluster CA, on local
files (no daemon involved). Private keys are written 0600 and never printed."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from novacron.pki.names import ROLES

DEFAULT_CA_DIR = os.environ.get("NOVACRON_CA_DIR", "/etc/novacron/ca")

Runner = Callable[[None, argparse.Namespace], Any]


def _deferred(name: str) -> Runner:
    """``pki_commands.<name>``, imported when the command runs: ``cryptography`` takes
    ~40 ms to import, which every other command would pay at start-up."""

    def run(client: None, args: argparse.Namespace) -> Any:
        from novacron.cli import pki_commands  # noqa: PLC0415 - the reason is above

        runner: Runner = getattr(pki_commands, name)
        return runner(client, args)

    return run


def _ca_dir(parser: Any) -> None:
    """The CA's directory: ``--ca-dir`` or ``--dir``, the same on every command."""
    parser.add_argument(
        "--ca-dir",
        "--dir",
        type=Path,
        default=Path(DEFAULT_CA_DIR),
        dest="ca_dir",
        help=f"the CA's directory (default {DEFAULT_CA_DIR})",
    )


def add_commands(groups: Any) -> None:
    ca = groups.add_parser("ca", help="the cluster certificate authority (local files)")
    ca_sub = ca.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = ca_sub.add_parser("init", help="create a CA (ca.key 0600, ca.crt, crl.pem)")
    _ca_dir(init)
    init.add_argument("--name", default="NovaCron CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=3650)
    init.set_defaults(run=_deferred("run_init"), local=True)
    crl = ca_sub.add_parser("crl", help="re-sign the revocation list (it is valid 30 days)")
    _ca_dir(crl)
    crl.set_defaults(run=_deferred("run_crl"), local=True)

    cert = groups.add_parser("cert", help="issue, revoke and list certificates")
    sub = cert.add_subparsers(dest="command", required=True, metavar="COMMAND")
    issue = sub.add_parser("issue", help="issue a certificate and key for a user or node")
    _ca_dir(issue)
    issue.add_argument("--name", required=True, help="user or node name (the certificate's CN)")
    issue.add_argument("--role", required=True, choices=ROLES)
    issue.add_argument("--tenant", action="append", default=[], dest="tenants")
    issue.add_argument("--node", action="store_true", help="a node certificate (role node)")
    issue.add_argument(
        "--address", action="append", default=[], help="node: IP or DNS name peers dial"
    )
    issue.add_argument("--out", type=Path, default=Path("."), help="where to write NAME.crt/.key")
    issue.add_argument("--days", type=int, default=365)
    issue.set_defaults(run=_deferred("run_issue"), local=True)
    revoke = sub.add_parser("revoke", help="revoke a certificate (daemons: SIGHUP to reload)")
    _ca_dir(revoke)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--name")
    which.add_argument("--serial", type=lambda v: int(v, 0))
    revoke.set_defaults(run=_deferred("run_revoke"), local=True)
    lst = sub.add_parser("list", help="every certificate the CA issued")
    _ca_dir(lst)
    lst.set_defaults(run=_deferred("run_list"), local=True)
