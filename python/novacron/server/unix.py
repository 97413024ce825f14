"""The Unix socket listener: bind (or take the systemd-passed socket), accept, identify.

The socket file is created under a temporary name, given mode 0660 and the admin group,
then renamed into place, so it is never reachable with looser permissions.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
from pathlib import Path

import trio

from novacron.auth.identity import peer_credentials, unix_identity
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.rpc.dispatch import Registry
from novacron.server.connection import Connection

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


class UnixServer:
    def __init__(
        self,
        sock: socket.socket,
        registry: Registry,
        bus: EventBus,
        admin_group: str,
        max_message: int,
        max_inflight: int,
    ) -> None:
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._registry = registry
        self._bus = bus
        self._admin_group = admin_group
        self._max_message = max_message
        self._max_inflight = max_inflight
        self._connections: set[Connection] = set()
        self._accept_scope = trio.CancelScope()
        self._conn_scope: trio.CancelScope | None = None
        self._drained = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as conns:
                self._conn_scope = conns.cancel_scope
                with self._accept_scope:
                    task_status.started()
                    await self._accept_loop(conns)
        finally:
            self._sock.close()
            self._drained.set()

    async def _accept_loop(self, conns: trio.Nursery) -> None:
        while True:
            try:
                raw, _ = await self._sock.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("socket.accept_failed", extra=kv(error=exc.strerror))
                    await trio.sleep(0.1)
                    continue
                raise
            conns.start_soon(self._handle, trio.SocketStream(raw))

    async def _handle(self, stream: trio.SocketStream) -> None:
        pid, uid, gid = peer_credentials(stream.socket)  # type: ignore[arg-type]
        identity = await trio.to_thread.run_sync(unix_identity, pid, uid, gid, self._admin_group)
        conn = Connection(
            stream,
            identity,
            self._registry,
            self._bus,
            self._max_message,
            self._max_inflight,
        )
        self._connections.add(conn)
        if self._accept_scope.cancel_called:
            conn.stop_reading()  # accepted just before shutdown began
        try:
            await conn.serve()
        finally:
            self._connections.discard(conn)

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting, let in-flight calls finish within ``grace_s``, then cut the rest."""
        self._accept_scope.cancel()
        for conn in list(self._connections):
            conn.stop_reading()
        with trio.move_on_after(grace_s):
            await self._drained.wait()
        if not self._drained.is_set() and self._conn_scope is not None:
            log.warning("shutdown.grace_expired", extra=kv(open=len(self._connections)))
            self._conn_scope.cancel()
            await self._drained.wait()
