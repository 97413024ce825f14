"""``novacron vm console NAME``: the VM's serial console on this terminal.

The terminal is put in raw mode (every key goes to the guest, Ctrl-C included) until
Ctrl-] leaves. With standard input not a terminal (a pipe, a file), its bytes are
sent as they come; at its end the command keeps printing the guest's output for
``--linger`` seconds, then lets the console go. ``--watch`` only prints the output,
alongside whoever types, until Ctrl-C or the console's end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any, BinaryIO

from novacron import errors
from novacron.cli.argtypes import seconds
from novacron.sync_client import SyncClient

ESCAPE = b"\x1d"  # Ctrl-]
POLL_S = 0.2  # how often the loop looks again (TLS may hold bytes select does not see)
FOLLOW_S = 1.0  # how often --follow asks for more of the log
LOG_READ = 1 << 20  # the most one call returns


def add_vm_commands(vm_sub: Any) -> None:
    console = vm_sub.add_parser(
        "console", help="the VM's serial console, interactive (leave with Ctrl-])"
    )
    console.add_argument("vm")
    console.add_argument(
        "--force", action="store_true", help="take the console from another client"
    )
    console.add_argument(
        "--watch",
        action="store_true",
        help="only watch (read-only, beside whoever types; leave with Ctrl-C)",
    )
    console.add_argument(
        "--scrollback",
        type=int,
        default=0,
        metavar="BYTES",
        help="first print up to that many of the console log's last bytes (at most 65536)",
    )
    console.add_argument(
        "--linger",
        type=seconds(3600, zero=True),
        default=1.0,
        metavar="S",
        help="seconds to keep printing output after piped input ends (default 1)",
    )
    console.set_defaults(run=run_console)
    log = vm_sub.add_parser("console-log", help="the VM's console log (what its console printed)")
    log.add_argument("vm")
    log.add_argument(
        "--bytes", type=int, default=64 * 1024, metavar="N", help="how much of its end (64 KiB)"
    )
    log.add_argument("--follow", "-f", action="store_true", help="keep printing what follows")
    log.set_defaults(run=run_log)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """The terminal at ``fd`` in raw mode (nothing if it is not a terminal)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_console(client: SyncClient, args: argparse.Namespace) -> Any:
    method = "vm.console.watch" if args.watch else "vm.console.open"
    try:
        opened = client.call(
            method, name=args.vm, force=args.force or None, scrollback=args.scrollback or None
        )
        number = opened["console"]
    except errors.PermissionDenied:
        if not args.watch:  # (a viewer may watch)
            sys.stderr.write("hint: --watch shows the console without typing (viewer role)\n")
        raise
    stdin = sys.stdin.fileno()
    if os.isatty(stdin):
        leave = "Ctrl-C" if args.watch else "Ctrl-]"
        sys.stderr.write(f"Connected to {args.vm}'s console; leave with {leave}\r\n")
        sys.stderr.flush()
    reason = None
    try:
        if args.watch:
            with contextlib.suppress(KeyboardInterrupt):
                reason = relay(client, number, None, sys.stdout.buffer, 0)
        else:
            with _raw(stdin):
                reason = relay(client, number, stdin, sys.stdout.buffer, args.linger)
    finally:
        with contextlib.suppress(errors.NotFound, errors.Unavailable):
            client.call("vm.console.close", console=number)
    if reason is not None:
        sys.stderr.write(f"\r\nconsole closed: {reason}\r\n")
    return None


def relay(
    client: SyncClient, number: int, stdin: int | None, out: BinaryIO, linger: float
) -> str | None:
    """Copies ``stdin`` to the console and its output to ``out`` until Ctrl-], the end of
    ``stdin`` plus ``linger`` seconds, or the console's end (its reason returned).
    Without ``stdin`` (watching) only the console's end stops it."""
    until: float | None = None  # once stdin ended: when to stop
    while until is None or time.monotonic() < until:
        for note in client.notifications(0):
            payload = note.params[0] if note.params else None
            if not isinstance(payload, dict) or payload.get("console") != number:
                continue
            if note.method == "console" and isinstance(payload.get("data"), bytes):
                out.write(payload["data"])
                out.flush()
            elif note.method == "console.closed":
                return str(payload.get("message") or payload.get("reason"))
        watched = [client.fileno()] + ([stdin] if until is None and stdin is not None else [])
        ready, _, _ = select.select(watched, [], [], POLL_S)
        if until is not None or stdin is None or stdin not in ready:
            continue
        data = os.read(stdin, 4096)
        if not data:
            until = time.monotonic() + linger
            continue
        data, escaped, _ = data.partition(ESCAPE)
        if data:
            client.call("vm.console.write", console=number, data=data)
        if escaped:
            return None
    return None


def run_log(client: SyncClient, args: argparse.Namespace) -> Any:
    """Prints the log's end; with ``--follow``, what is appended after it, once a second
    (a log made anew meanwhile, after the VM was deleted and created again, from its start)."""
    got = client.call("vm.console.log", name=args.vm, limit=args.bytes)
    out = sys.stdout.buffer
    while True:
        out.write(got["data"])
        out.flush()
        if not args.follow:
            return None
        time.sleep(FOLLOW_S)
        got = client.call("vm.console.log", name=args.vm, offset=got["end"], limit=LOG_READ)
