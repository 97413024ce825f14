"""A running VM's volumes copied while it runs: QEMU's NBD connections relayed between
the two daemons (``vm.migrate`` of a running VM with disks in its node's pool).

libvirt copies non-shared disks with NBD: the destination QEMU serves the new volumes
(``nbd-server-start``) and the source QEMU mirrors each disk into them
(``blockdev-mirror``, one NBD connection per disk), guest writes included, until the
memory's switch-over. With ``VIR_MIGRATE_PARAM_DISKS_URI = unix://PATH`` both QEMUs use
the same path on their own host, as the memory stream does (:mod:`qemu_socket`):
``<stream_dir>/<name>/nbd.sock``. The destination QEMU listens there; on the source,
this daemon does, and relays each connection of the source QEMU over a migration
channel of its own (mutual TLS, the copy's token first) to the destination daemon,
which connects it to the destination QEMU's socket. After the token the channel
carries NBD's bytes both ways, as they are or packed (``disk_compression``, agreed in
``migration.prepare``: :mod:`~novacron.migration.nbd_packing`); it closes when either
end does.

Who may connect on the source: the socket is given to QEMU's user (mode 0600) in the
migration's directory (which QEMU's user may pass through, not list), and a connection
is taken only from the process libvirt runs the VM's QEMU as; on the destination the
daemon connects only to a socket of QEMU's user, whose peer is the incoming domain's
QEMU (:func:`~novacron.migration.qemu_socket.connect_when_bound`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from novacron import errors
from novacron.blocking import Pool
from novacron.logs import kv
from novacron.migration import nbd_packing, qemu_socket
from novacron.migration.frames import FrameError
from novacron.migration.relay import single_errors

log = logging.getLogger("novacron.migration")

SOCKET_NAME = qemu_socket.NBD_SOCKET_NAME
READ_SIZE = 256 * 1024
QEMU_CONNECT_S = 60.0  # destination: from the source's channel to QEMU's NBD socket


def socket_path(stream_socket: Path) -> Path:
    """The NBD socket beside a migration's memory-stream socket."""
    return stream_socket.parent / SOCKET_NAME


def disks_uri(stream_socket: Path) -> str:
    return f"unix://{socket_path(stream_socket)}"


@dataclass
class NbdStats:
    packing: str = "none"  # disk_compression as agreed: lz4, zstd or none
    connections: int = 0
    to_destination: int = 0  # NBD bytes the source QEMU sent (requests and written data)
    to_source: int = 0  # what the destination QEMU answered
    packed_to_destination: int = 0  # channel bytes of packed connections
    packed_to_source: int = 0
    last_moved: float = field(default_factory=trio.current_time)

    @property
    def wire_to_destination(self) -> int:
        """What crossed the channels toward the destination (NBD's bytes when not packed)."""
        return self.to_destination if self.packing == "none" else self.packed_to_destination

    @property
    def wire_to_source(self) -> int:
        return self.to_source if self.packing == "none" else self.packed_to_source

    def to_dict(self) -> dict[str, int | str]:
        return {
            "packing": self.packing,
            "connections": self.connections,
            "bytes_to_destination": self.to_destination,
            "bytes_to_source": self.to_source,
            "wire_bytes_to_destination": self.wire_to_destination,
            "wire_bytes_to_source": self.wire_to_source,
        }


def packed(
    channel: trio.abc.Stream, stats: NbdStats, engine: Pool, at_source: bool
) -> trio.abc.Stream:
    """The channel as the relay uses it: packed when ``stats.packing`` says so; the
    bytes crossing it counted."""
    if stats.packing == "none":
        return channel

    def toward_destination(n: int) -> None:
        stats.packed_to_destination += n

    def toward_source(n: int) -> None:
        stats.packed_to_source += n

    sent, received = (toward_destination, toward_source)
    if not at_source:
        sent, received = received, sent
    codec = nbd_packing.CODECS[stats.packing]
    return nbd_packing.PackedChannel(channel, codec, engine, on_sent=sent, on_received=received)


async def pump(a: trio.abc.Stream, b: trio.abc.Stream, stats: NbdStats) -> None:
    """Bytes both ways until either end closes; then both are closed."""

    async def one_way(src: trio.abc.Stream, dst: trio.abc.Stream, forward: bool) -> None:
        while data := await src.receive_some(READ_SIZE):
            await dst.send_all(data)
            if forward:
                stats.to_destination += len(data)
            else:
                stats.to_source += len(data)
            stats.last_moved = trio.current_time()
        raise EOFError  # one end closed: the connection is over

    try:
        with single_errors():
            async with trio.open_nursery() as n:
                n.start_soon(one_way, b, a, False)
                await one_way(a, b, True)
    except FrameError as exc:  # the other daemon's frames: the connection is over
        log.warning("migration.nbd_malformed", extra=kv(error=str(exc)))
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(a)
        await trio.aclose_forcefully(b)


# -- the source ----------------------------------------------------------------------


async def listen(stream_socket: Path, qemu_owner: tuple[int, int]) -> trio.SocketListener:
    """The source's NBD socket, beside the memory stream's (whose directory
    :func:`qemu_socket.make_dir` made root's): the directory opened for passing
    through (0711), the socket given to QEMU's user (0600)."""
    path = socket_path(stream_socket)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chown(path, *qemu_owner)
        os.chmod(path, 0o600)
        os.chmod(path.parent, 0o711)  # noqa: S103 - traversable by QEMU, not listable
        sock.listen(8)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError):
            raise errors.Unavailable(f"cannot listen at {path}: {exc.strerror or exc}") from None
        raise
    return trio.SocketListener(sock)


async def serve_source(
    listener: trio.SocketListener,
    qemu_uid: int,
    qemu_pid: Callable[[], Awaitable[int | None]],
    open_channel: Callable[[], Awaitable[trio.abc.Stream]],
    stats: NbdStats,
    engine: Pool,
) -> None:
    """Relays each connection of the VM's QEMU (runs until cancelled). A connection from
    any other process is refused and logged."""
    async with trio.open_nursery() as nursery:
        while True:
            conn = await listener.accept()
            pid, uid = qemu_socket.peer(conn.socket)
            want = await qemu_pid()
            if uid != qemu_uid or (want is not None and pid != want):
                log.warning(
                    "migration.nbd_peer_refused",
                    extra=kv(pid=pid, uid=uid, expected_pid=want, expected_uid=qemu_uid),
                )
                await trio.aclose_forcefully(conn)
                continue
            stats.connections += 1
            nursery.start_soon(_relay_out, conn, open_channel, stats, engine)


async def _relay_out(
    conn: trio.SocketStream,
    open_channel: Callable[[], Awaitable[trio.abc.Stream]],
    stats: NbdStats,
    engine: Pool,
) -> None:
    try:
        channel = await open_channel()
    except (errors.NovaCronError, OSError, trio.BrokenResourceError) as exc:
        log.warning("migration.nbd_channel_failed", extra=kv(error=str(exc)))
        await trio.aclose_forcefully(conn)  # QEMU's mirror fails, and with it libvirt's job
        return
    await pump(conn, packed(channel, stats, engine, at_source=True), stats)


# -- the destination -----------------------------------------------------------------


async def relay_in(
    channel: trio.abc.Stream,
    stream_socket: Path,
    qemu_uid: int,
    qemu_pid: Callable[[], Awaitable[int | None]],
    stats: NbdStats,
    engine: Pool,
) -> None:
    """One NBD connection of the source's: to the destination QEMU's socket, then both
    ways until either end closes."""
    qemu: trio.SocketStream | None = None
    with contextlib.suppress(errors.NovaCronError, OSError), trio.move_on_after(QEMU_CONNECT_S):
        qemu = await qemu_socket.connect_when_bound(socket_path(stream_socket), qemu_uid, qemu_pid)
    if qemu is None:
        log.warning("migration.nbd_not_connected", extra=kv(path=str(stream_socket.parent)))
        await trio.aclose_forcefully(channel)
        return
    stats.connections += 1
    await pump(packed(channel, stats, engine, at_source=False), qemu, stats)
