"""``novacron``: talk to novacrond over its Unix socket.

Human tables by default, ``--json`` for scripts. Errors print their code and message
and exit 1 (2 for usage errors, 3 when the daemon cannot be reached).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from novacron import __version__
from novacron.cli import node, output, vm
from novacron.client import SyncClient
from novacron.errors import NovaCronError, Unavailable

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
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for answers")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    node.add_commands(groups)
    vm.add_commands(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args.run
    try:
        with SyncClient(args.socket, timeout=args.timeout) as client:
            result = command(client, args)
    except Unavailable as exc:
        output.errors.print(f"error: {exc.code}: {exc.message}", highlight=False)
        return 3
    except NovaCronError as exc:
        output.errors.print(f"error: {exc.code}: {exc.message}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130
    if result is not None and args.json:
        output.as_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
