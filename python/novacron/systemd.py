"""systemd integration without libsystemd: sd_notify, the watchdog and socket activation.

* :func:`notify` sends ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=...`` as one
  datagram to ``$NOTIFY_SOCKET`` (a path, or an abstract name starting with ``@``).
* :func:`watchdog_interval` reads ``$WATCHDOG_USEC`` (honouring ``$WATCHDOG_PID``); the
  daemon pings at half that interval from a trio task, so a wedged event loop is killed.
* :func:`listen_fds` returns the sockets passed with ``$LISTEN_FDS`` (from fd 3) when
  ``$LISTEN_PID`` is this process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import trio

SD_LISTEN_FDS_START = 3


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Sends one notification; returns False when not running under systemd."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None if disabled."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


async def watchdog(interval: float) -> None:
    """Pings the watchdog for as long as the trio loop keeps running this task."""
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)


def listen_fds(env: Mapping[str, str] | None = None, unset: bool = True) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (empty when there are none)."""
    env = os.environ if env is None else env
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    if unset and env is os.environ:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets
