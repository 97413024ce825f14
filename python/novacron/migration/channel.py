"""Migration channels between daemons: one mutual-TLS connection per migration.

The destination listens on its migration address (``[migration] listen``) with the
same TLS material as its RPC listener; the client certificate must carry the ``node``
role. The source opens the connection and, right after the handshake, sends the
32-byte token the destination's ``migration.prepare`` answered with; the destination
hands the stream to the migration waiting for that token, or closes it.

Both ends tune the socket so that a dead link fails the migration within
``link_timeout_s``: TCP keep-alive probes while idle, and ``TCP_USER_TIMEOUT`` for data
left unacknowledged (a cut cable otherwise blocks a sender for many minutes).
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import trio

from novacron import errors
from novacron.client import split_address
from novacron.logs import kv
from novacron.pki.names import from_peercert
from novacron.server.listener import accept

log = logging.getLogger("novacron.migration")

TOKEN_BYTES = 32
HANDSHAKE_TIMEOUT_S = 10.0
# Small kernel buffers on the data path: what sits in them when QEMU stops the guest
# must cross the link before the guest can resume (downtime), and big buffers also make
# QEMU believe the link is faster than it is (it estimates downtime from how fast its
# socket drains). The kernel doubles this value. (QEMU's own Unix socket is bounded by
# its writer's send buffer, the kernel's default.)
CHANNEL_SNDBUF = 256 * 1024


def tune(sock: trio.socket.SocketType | socket.socket, link_timeout_s: float) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_SNDBUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(link_timeout_s / 3))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 2))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(link_timeout_s * 1000))


async def open_channel(
    address: str,
    context: ssl.SSLContext,
    server_name: str,
    token: bytes,
    link_timeout_s: float,
) -> trio.SSLStream[trio.SocketStream]:
    """Connects to a destination's migration listener and presents ``token``."""
    host, port = split_address(address)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            tcp = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise errors.Unavailable(f"cannot open a migration channel to {address}: {exc}") from None
    tune(tcp.socket, link_timeout_s)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            await stream.do_handshake()
            await stream.send_all(token)
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        await trio.aclose_forcefully(stream)
        raise errors.Unavailable(f"migration channel to {address} failed: {exc}") from None
    return stream


async def _receive_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class ChannelListener:
    """Accepts migration channels and hands each to the migration awaiting its token.

    ``context`` is called per connection (the RPC listener's current TLS context, so a
    reload applies here too); ``deliver(token, peer_name, stream)`` returns whether a
    migration took the stream.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: Callable[[], ssl.SSLContext],
        deliver: Callable[[bytes, str, trio.SSLStream[trio.SocketStream]], bool],
        link_timeout_s: float,
    ) -> None:
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._context = context
        self._deliver = deliver
        self._link_timeout_s = link_timeout_s
        self.address = sock.getsockname()
        self.refused = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as conns:
                task_status.started()
                while True:
                    conns.start_soon(self._handle, await accept(self._sock))
        finally:
            self._sock.close()

    async def _handle(self, raw: trio.socket.SocketType) -> None:
        peer: Any = "?"
        stream = None
        why = "closed"
        try:
            peer = raw.getpeername()
            tune(raw, self._link_timeout_s)
            stream = trio.SSLStream(trio.SocketStream(raw), self._context(), server_side=True)
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await stream.do_handshake()
                cert = from_peercert(stream.getpeercert())
                token = await _receive_exactly(stream, TOKEN_BYTES)
            if cert is None or "node" not in cert.roles:
                why = "client certificate is not a node certificate"
            elif len(token) != TOKEN_BYTES:
                why = "no token"
            elif self._deliver(token, cert.name, stream):
                return
            else:
                why = "unknown token"
        except (trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            why = f"handshake failed: {exc}"
        self.refused += 1
        log.warning("migration.channel_refused", extra=kv(peer=str(peer), why=why))
        if stream is not None:
            await trio.aclose_forcefully(stream)
        else:
            raw.close()


async def close_gently(stream: trio.abc.Stream, wait_s: float = 2.0) -> None:
    """Closes with TLS close_notify when the peer is still there, else forcefully."""
    with trio.move_on_after(wait_s) as waited:
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(stream)
    if waited.cancelled_caught:
        await trio.aclose_forcefully(stream)


def same_token(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
