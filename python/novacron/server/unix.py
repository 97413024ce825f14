"""The Unix socket listener: bind (or take the systemd-passed socket), identify by peer.

The socket file is created under a temporary name, given mode 0660 and the admin group,
then renamed into place, so it is never reachable with looser permissions.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
from pathlib import Path

import trio

from novacron.auth.bindings import Bindings
from novacron.auth.identity import Identity, peer_credentials, unix_identity
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.rpc.dispatch import Registry
from novacron.server.limits import ConnectionLimits, ConnectionSettings
from novacron.server.listener import Listener

log = logging.getLogger("novacron.server")

SOCKET_MODE = 0o660
BACKLOG = 1024


class SocketInUse(Exception):
    """Another process is already serving on the socket path."""


def bind_unix(path: Path, group: str) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket of a daemon that died
        else:
            raise SocketInUse(f"{path} is in use by another process")
        finally:
            probe.close()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, SOCKET_MODE)
        try:
            os.chown(tmp, -1, grp.getgrnam(group).gr_gid)
        except KeyError:
            log.warning("socket.group_missing", extra=kv(group=group, socket=path))
        except PermissionError:
            log.warning("socket.chown_denied", extra=kv(group=group, socket=path))
        os.rename(tmp, path)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    return sock


class UnixServer(Listener):
    """Callers identified by ``SO_PEERCRED`` (uid/gid → user, groups, roles)."""

    def __init__(
        self,
        sock: socket.socket,
        registry: Registry,
        bus: EventBus,
        admin_group: str,
        settings: ConnectionSettings,
        bindings: Bindings | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(trio.socket.from_stdlib_socket(sock), registry, bus, settings, limits)
        self._admin_group = admin_group
        self._bindings = bindings

    async def open(self, raw: trio.socket.SocketType) -> tuple[trio.abc.Stream, Identity] | None:
        stream = trio.SocketStream(raw)
        pid, uid, gid = peer_credentials(stream.socket)  # type: ignore[arg-type]
        identity = await trio.to_thread.run_sync(unix_identity, pid, uid, gid, self._admin_group)
        if self._bindings is not None:
            identity = self._bindings.apply(identity)
        return stream, identity
