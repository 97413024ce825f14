"""``novacron``: talk to novacrond over its Unix socket, or over mutual TLS (``--tls``).

Human tables by default, ``--json`` for scripts. Errors print their code and message
and exit 1 (2 for usage errors, 3 when the daemon cannot be reached). ``ca`` and
``cert`` work on local files and need no daemon.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from novacron import __version__
from novacron.cli import cluster, disks, metrics, migrate, net, node, output, pki, security, vm
from novacron.cli.argtypes import seconds
from novacron.cli.security import AuditBroken
from novacron.errors import InvalidParams, NovaCronError, Unavailable
from novacron.sync_client import MAX_TIMEOUT_S, SyncClient, TlsFiles

Command = Callable[[SyncClient, argparse.Namespace], Any]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="novacron", description="NovaCron command-line client")
    parser.add_argument("--version", action="version", version=f"novacron {__version__}")
    parser.add_argument(
        "--socket",
        default=os.environ.get("NOVACRON_SOCKET"),
        help="daemon socket (default: $NOVACRON_SOCKET, the system socket, or the dev socket)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--timeout",
        type=seconds(MAX_TIMEOUT_S),
        default=None,
        help="seconds to wait for answers",
    )
    env = os.environ.get
    tls = parser.add_argument_group("mutual TLS (instead of the Unix socket)")
    tls.add_argument("--tls", default=env("NOVACRON_TLS"), metavar="HOST:PORT")
    tls.add_argument("--cert", default=env("NOVACRON_CERT"), help="your certificate")
    tls.add_argument("--key", default=env("NOVACRON_KEY"), help="your private key")
    tls.add_argument("--ca", default=env("NOVACRON_CA"), help="the cluster CA certificate")
    tls.add_argument("--server-name", default=env("NOVACRON_SERVER_NAME"), help="node name")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    node.add_commands(groups)
    vm.add_commands(groups)
    disks.add_image_commands(groups)
    net.add_commands(groups)
    cluster.add_commands(groups)
    migrate.add_op_commands(groups)
    security.add_commands(groups)
    security.add_quota_commands(groups)
    pki.add_commands(groups)
    metrics.add_commands(groups)
    return parser


def open_client(args: argparse.Namespace) -> SyncClient:
    if not args.tls:
        return SyncClient(args.socket, timeout=args.timeout)
    if not (args.cert and args.key and args.ca):
        raise InvalidParams("--tls needs --cert, --key and --ca (or NOVACRON_CERT/KEY/CA)")
    files = TlsFiles(Path(args.cert), Path(args.key), Path(args.ca))
    return SyncClient.tls(args.tls, files, timeout=args.timeout, server_name=args.server_name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args.run
    try:
        if getattr(args, "local", False):
            result = command(None, args)  # type: ignore[arg-type]
        else:
            with open_client(args) as client:
                result = command(client, args)
    except AuditBroken:
        return 1
    except Unavailable as exc:
        output.errors.print(f"error: {exc.code}: {exc.message}", highlight=False, markup=False)
        return 3
    except NovaCronError as exc:
        output.errors.print(f"error: {exc.code}: {exc.message}", highlight=False, markup=False)
        return 1
    except KeyboardInterrupt:
        return 130
    if result is not None and args.json:
        output.as_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
