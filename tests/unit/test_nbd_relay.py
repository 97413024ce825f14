"""The relay of QEMU's NBD connections, on real Unix sockets: only the VM's QEMU is
taken, each connection gets a channel of its own and its bytes cross both ways exactly,
and either end closing closes both (the real mirror, through two libvirtds:
tests/system/test_migration.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from novacron import errors
from novacron.blocking import Pool
from novacron.migration import nbd_relay, qemu_socket
from novacron.migration.nbd_relay import NbdStats

ENGINE = Pool("test-engine", 2)


def test_the_socket_sits_beside_the_memory_streams() -> None:
    stream = Path("/run/novacron/migration/0123456789abcdef/qemu.sock")
    assert nbd_relay.socket_path(stream) == stream.parent / "nbd.sock"
    assert nbd_relay.disks_uri(stream) == "unix:///run/novacron/migration/0123456789abcdef/nbd.sock"


async def test_bytes_cross_both_ways_and_either_end_closing_closes_both() -> None:
    a_ours, a_theirs = trio.testing.memory_stream_pair()
    b_ours, b_theirs = trio.testing.memory_stream_pair()
    stats = NbdStats()
    async with trio.open_nursery() as n:
        n.start_soon(nbd_relay.pump, a_ours, b_ours, stats)
        await a_theirs.send_all(b"request" * 1000)
        got = b""
        while len(got) < 7000:
            got += await b_theirs.receive_some()
        assert got == b"request" * 1000
        await b_theirs.send_all(b"reply")
        assert await a_theirs.receive_some() == b"reply"
        await a_theirs.aclose()  # the client hangs up: the other end is closed too
    assert await b_theirs.receive_some() == b""
    assert (stats.to_destination, stats.to_source) == (7000, 5)
    assert (stats.wire_to_destination, stats.wire_to_source) == (7000, 5)  # not packed


@pytest.mark.parametrize("packing", ["lz4", "zstd"])
async def test_a_packed_connection_reaches_the_destination_qemu_as_it_left_the_source(
    tmp_path: Path, packing: str
) -> None:
    """The source QEMU's connection, relayed packed to the destination daemon's end,
    which connects it to the destination QEMU's socket: NBD's bytes arrive exactly,
    fewer cross the channel."""
    source = qemu_socket.make_dir(tmp_path / "source", "0123456789abcdef")
    dest = qemu_socket.make_dir(tmp_path / "dest", "0123456789abcdef")
    request = bytes(1 << 20) + b"NBD_CMD_WRITE of a text block; " * 40_000 + os.urandom(9000)
    reply = b"\x67\x44\x66\x98" + bytes(12)  # a simple reply's magic, error 0, handle
    try:
        listener = await nbd_relay.listen(source.path, (os.getuid(), os.getgid()))
        # the destination QEMU: a listener of this process's at its NBD socket
        served = trio.socket.socket(trio.socket.AF_UNIX)
        await served.bind(str(nbd_relay.socket_path(dest.path)))
        served.listen(1)
        out_stats, in_stats = NbdStats(packing=packing), NbdStats(packing=packing)

        async def open_channel() -> trio.abc.Stream:
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(
                nbd_relay.relay_in, theirs, dest.path, os.getuid(), qemu_pid, in_stats, ENGINE
            )
            return ours

        async def qemu_pid() -> int | None:
            return os.getpid()

        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(
                nbd_relay.serve_source,
                listener,
                os.getuid(),
                qemu_pid,
                open_channel,
                out_stats,
                ENGINE,
            )
            with trio.fail_after(10):
                client = await trio.open_unix_socket(str(nbd_relay.socket_path(source.path)))
                await client.send_all(request)
                server, _ = await served.accept()
                got = b""
                while len(got) < len(request):
                    got += await server.recv(1 << 20)
                await server.send(reply)
                assert await client.receive_some() == reply
                server.close()
                assert await client.receive_some() == b""  # QEMU hung up: so does the relay
                await client.aclose()
            nursery.cancel_scope.cancel()
        assert got == request
        for stats in (out_stats, in_stats):
            assert (stats.to_destination, stats.to_source) == (len(request), len(reply))
            assert stats.wire_to_destination < len(request) // 10  # zeros, text: packed
            assert stats.wire_to_source == len(reply) + 10  # (one raw piece's frame)
    finally:
        served.close()
        source.remove()
        dest.remove()


async def test_only_the_vms_qemu_is_relayed_each_connection_on_its_own_channel(
    tmp_path: Path,
) -> None:
    made = qemu_socket.make_dir(tmp_path, "0123456789abcdef")
    try:
        listener = await nbd_relay.listen(made.path, (os.getuid(), os.getgid()))
        sock = nbd_relay.socket_path(made.path)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o711
        opened, channels = trio.open_memory_channel[trio.abc.Stream](4)

        async def open_channel() -> trio.abc.Stream:
            ours, theirs = trio.testing.memory_stream_pair()
            await opened.send(theirs)
            return ours

        qemu = os.getpid()

        async def qemu_pid() -> int | None:
            return qemu

        stats = NbdStats()
        async with listener, trio.open_nursery() as n:
            n.start_soon(
                nbd_relay.serve_source,
                listener,
                os.getuid(),
                qemu_pid,
                open_channel,
                stats,
                ENGINE,
            )
            got = []
            for data in (b"one", b"two"):
                conn = await trio.open_unix_socket(str(sock))
                await conn.send_all(data)
                with trio.fail_after(5):
                    channel = await channels.receive()
                    got.append(await channel.receive_some())
                    await channel.send_all(b"re:" + data)
                    assert await conn.receive_some() == b"re:" + data
                await conn.aclose()
            assert got == [b"one", b"two"]
            # another process of QEMU's user (here: not the pid libvirt names): refused
            qemu = os.getpid() + 1
            async with await trio.open_unix_socket(str(sock)) as stranger:
                with trio.fail_after(5):
                    assert await stranger.receive_some() == b""
            assert stats.connections == 2
            assert (stats.to_destination, stats.to_source) == (6, 12)
            n.cancel_scope.cancel()
    finally:
        made.remove()
    assert not made.path.parent.exists()  # (the NBD socket goes with the directory)


async def test_a_channel_that_cannot_open_closes_qemus_connection(tmp_path: Path) -> None:
    made = qemu_socket.make_dir(tmp_path, "0123456789abcdef")
    try:
        listener = await nbd_relay.listen(made.path, (os.getuid(), os.getgid()))

        async def refused() -> trio.abc.Stream:
            raise errors.MigrationFailed("connection refused")

        async def qemu_pid() -> int | None:
            return None  # (not known: the uid check stands alone)

        async with listener, trio.open_nursery() as n:
            n.start_soon(
                nbd_relay.serve_source,
                listener,
                os.getuid(),
                qemu_pid,
                refused,
                NbdStats(),
                ENGINE,
            )
            path = str(nbd_relay.socket_path(made.path))
            async with await trio.open_unix_socket(path) as conn:
                with trio.fail_after(5):
                    assert await conn.receive_some() == b""  # QEMU's mirror fails at once
            n.cancel_scope.cancel()
    finally:
        made.remove()


async def test_the_destination_gives_up_on_a_qemu_that_never_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nbd_relay, "QEMU_CONNECT_S", 0.2)
    ours, theirs = trio.testing.memory_stream_pair()

    async def qemu_pid() -> int | None:
        return None

    stats = NbdStats()
    await nbd_relay.relay_in(ours, tmp_path / "qemu.sock", os.getuid(), qemu_pid, stats, ENGINE)
    assert await theirs.receive_some() == b"" and stats.connections == 0
