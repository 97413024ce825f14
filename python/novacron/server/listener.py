"""What every listener does: accept, identify, admit, serve connections, drain on shutdown.

Subclasses say how a fresh socket becomes a stream and an identity (:meth:`Listener.open`):
peer credentials on the Unix socket, a TLS handshake and a client certificate on TCP.
Listeners may share one :class:`~novacron.server.limits.ConnectionLimits`, which admits
each identified connection or has it told why not and closed.
"""

from __future__ import annotations

import errno
import logging

import trio

from novacron.auth.identity import Identity
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.rpc.dispatch import Registry
from novacron.server.connection import Connection, send_protocol_error
from novacron.server.limits import ConnectionLimits, ConnectionSettings

log = logging.getLogger("novacron.server")

# out of descriptors or memory: the listening socket itself is fine, so wait and retry
RETRIED_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


async def accept(sock: trio.socket.SocketType) -> trio.socket.SocketType:
    """The next connection; waits out a shortage of descriptors or memory (logged)."""
    while True:
        try:
            raw, _ = await sock.accept()
            return raw
        except OSError as exc:
            if exc.errno not in RETRIED_ACCEPT_ERRORS:
                raise
            log.error("socket.accept_failed", extra=kv(error=exc.strerror))
            await trio.sleep(0.1)


class Listener:
    def __init__(
        self,
        sock: trio.socket.SocketType,
        registry: Registry,
        bus: EventBus,
        settings: ConnectionSettings,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self._sock = sock
        self._registry = registry
        self._bus = bus
        self._settings = settings
        self._limits = limits
        self._connections: set[Connection] = set()
        self._accept_scope = trio.CancelScope()
        self._conn_scope: trio.CancelScope | None = None
        self._drained = trio.Event()

    async def open(self, raw: trio.socket.SocketType) -> tuple[trio.abc.Stream, Identity] | None:
        """The stream and the caller's identity, or None to drop the connection."""
        raise NotImplementedError

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
            conns.start_soon(self._handle, await accept(self._sock))

    async def _handle(self, raw: trio.socket.SocketType) -> None:
        try:
            opened = await self.open(raw)
        except OSError as exc:  # the peer went away while being identified
            log.info("connection.dropped", extra=kv(error=exc.strerror or str(exc)))
            raw.close()
            return
        except BaseException:
            raw.close()
            raise
        if opened is None:
            raw.close()
            return
        stream, identity = opened
        why = self._limits.admit(identity) if self._limits is not None else None
        if why is not None:
            await self._turn_away(stream, identity, why)
            return
        try:
            conn = Connection(stream, identity, self._registry, self._bus, self._settings)
            self._connections.add(conn)
            if self._accept_scope.cancel_called:
                conn.stop_reading()  # accepted just before shutdown began
            try:
                await conn.serve()
            finally:
                self._connections.discard(conn)
        finally:
            if self._limits is not None:
                self._limits.release(identity)

    @staticmethod
    async def _turn_away(stream: trio.abc.Stream, identity: Identity, why: str) -> None:
        """Tells a connection over the limits why (``too_many_connections``), closes it."""
        log.warning("connection.refused", extra=kv(principal=identity.principal, why=why))
        await send_protocol_error(stream.send_all, "too_many_connections", why)
        await trio.aclose_forcefully(stream)

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
