"""The mutual-TLS TCP listener: TLS 1.3 only, client certificates required.

A connection is served only after a handshake that finishes within
``handshake_timeout_s`` and presents a client certificate signed by the cluster CA,
valid now, and not on the revocation list. The caller's identity comes from the
certificate (:func:`novacron.pki.names.from_peercert`). :meth:`TlsServer.reload`
(SIGHUP or ``tls.reload``) reads the certificate, key, CA and CRL again; new
connections use the new material, open ones keep theirs.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import trio

from novacron.auth.identity import Identity, tls_identity
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.pki.names import from_peercert
from novacron.rpc.dispatch import Registry
from novacron.server.limits import ConnectionLimits, ConnectionSettings
from novacron.server.listener import Listener

log = logging.getLogger("novacron.tls")

BACKLOG = 4096


class TlsConfigError(Exception):
    """TLS material that cannot be used; the daemon refuses to start with it."""


def check_private_file(path: Path) -> None:
    """A private key must exist and not be readable by group or others."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise TlsConfigError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise TlsConfigError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )


def server_context(cert: Path, key: Path, ca: Path, crl: Path | None) -> ssl.SSLContext:
    check_private_file(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.num_tickets = 0  # no resumption: every connection is checked against the current CRL
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=str(ca))
        if crl is not None:
            ctx.load_verify_locations(cafile=str(crl))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"TLS material unusable: {exc}") from None
    return ctx


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise TlsConfigError(f"listen address {text!r} is not host:port")
    return host.strip("[]"), int(port)


def bind_tcp(address: str) -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class TlsServer(Listener):
    def __init__(
        self,
        sock: socket.socket,
        registry: Registry,
        bus: EventBus,
        material: tuple[Path, Path, Path, Path | None],
        handshake_timeout_s: float,
        settings: ConnectionSettings,
        limits: ConnectionLimits | None = None,
        max_handshakes: int = 0,
    ) -> None:
        """``max_handshakes``: handshakes in progress at once (0: no limit); a connection
        past them is closed at once, before any TLS work."""
        super().__init__(trio.socket.from_stdlib_socket(sock), registry, bus, settings, limits)
        self._material = material
        self._ctx = server_context(*material)
        self._handshake_timeout = handshake_timeout_s
        self._max_handshakes = max_handshakes
        self._handshaking = 0
        self.address = sock.getsockname()
        self.refused = 0

    def context(self) -> ssl.SSLContext:
        """The current server context (other listeners of this node share it)."""
        return self._ctx

    def reload(self) -> dict[str, Any]:
        """Reads the TLS material again; on failure keeps the current one and says why."""
        try:
            self._ctx = server_context(*self._material)
        except TlsConfigError as exc:
            log.error("tls.reload_failed", extra=kv(error=str(exc)))
            return {"reloaded": False, "error": str(exc)}
        log.info("tls.reloaded", extra=kv(crl=self._material[3] or "-"))
        return {"reloaded": True, "listen": f"{self.address[0]}:{self.address[1]}"}

    async def open(self, raw: trio.socket.SocketType) -> tuple[trio.abc.Stream, Identity] | None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = raw.getpeername()
        if self._max_handshakes and self._handshaking >= self._max_handshakes:
            # unauthenticated peers cannot hold more than this many descriptors (the
            # listener closes the socket)
            self._refused(
                peer, f"{self._handshaking} handshakes in progress, at most {self._max_handshakes}"
            )
            return None
        stream = trio.SSLStream(trio.SocketStream(raw), self._ctx, server_side=True)
        why = None
        self._handshaking += 1
        try:
            with trio.fail_after(self._handshake_timeout):
                await stream.do_handshake()
        except trio.TooSlowError:
            why = "handshake timed out"
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            cause = exc.__cause__ or exc
            why = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
            why = str(why or cause)
        finally:
            self._handshaking -= 1
        identity = None
        if why is None:
            found = from_peercert(stream.getpeercert())
            if found is None:
                why = "client certificate has no usable name"
            else:
                identity = tls_identity(found)
        if identity is None:
            self._refused(peer, why)
            await trio.aclose_forcefully(stream)
            return None
        return stream, identity

    def _refused(self, peer: Any, why: str | None) -> None:
        self.refused += 1
        log.info("tls.refused", extra=kv(peer=f"{peer[0]}:{peer[1]}", why=why))
