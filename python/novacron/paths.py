"""Default locations shared by the daemon and its clients (no server code here)."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_SOCKET = Path("/run/novacron/novacrond.sock")
SYSTEM_STATE_DIR = Path("/var/lib/novacron")
SYSTEM_CONFIG = Path("/etc/novacron/novacrond.toml")
SYSTEM_MIGRATION_STREAMS = Path("/run/novacron/migration")
MAX_SOCKET_PATH = 107  # bytes of a Unix socket's path (sun_path holds 108, NUL included)
# a migration's socket is <stream dir>/<16 hex digits>/qemu.sock: 27 bytes more
MAX_MIGRATION_STREAM_DIR = MAX_SOCKET_PATH - 27


def dev_runtime_dir() -> Path:
    """Per-user runtime directory: ``$XDG_RUNTIME_DIR/novacron`` or ``/tmp/novacron-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "novacron"
    return Path(f"/tmp/novacron-{os.getuid()}")  # noqa: S108 - per-user, created 0700


def dev_socket() -> Path:
    return dev_runtime_dir() / "novacrond.sock"


def dev_migration_streams() -> Path:
    """``<dev runtime dir>/migration``, or ``/tmp/novacron-<uid>/migration`` when that is
    too long for the sockets inside it."""
    streams = dev_runtime_dir() / "migration"
    if len(str(streams).encode()) <= MAX_MIGRATION_STREAM_DIR:
        return streams
    return Path(f"/tmp/novacron-{os.getuid()}/migration")  # noqa: S108 - per-user


def dev_state_dir() -> Path:
    """Per-user state directory: ``$XDG_STATE_HOME/novacron`` (default ``~/.local/state``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "novacron-dev"


def default_client_socket() -> Path:
    """Socket a client uses when none is given: ``$NOVACRON_SOCKET``, else the system
    socket if it exists, else the per-user dev socket."""
    env = os.environ.get("NOVACRON_SOCKET")
    if env:
        return Path(env)
    if SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return dev_socket()
