"""Migration channels over real TLS on loopback: the token decides which migration
gets the stream; only node certificates are accepted."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import trio

from novacron import errors
from novacron.migration.channel import TOKEN_BYTES, ChannelListener, close_gently, open_channel
from novacron.server.tls import bind_tcp, server_context
from tests.pki_harness import Pki, free_port


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path)


def listener_for(pki: Pki, deliver) -> ChannelListener:  # type: ignore[no-untyped-def]
    certs = pki.root / "certs"
    ctx = server_context(certs / "node1.crt", certs / "node1.key", pki.ca.dir / "ca.crt", None)
    return ChannelListener(bind_tcp(f"127.0.0.1:{free_port()}"), lambda: ctx, deliver, 5.0)


async def test_the_token_hands_the_stream_to_its_migration(pki: Pki) -> None:
    token = secrets.token_bytes(TOKEN_BYTES)
    got: list[tuple[str, trio.SSLStream[trio.SocketStream]]] = []
    arrived = trio.Event()

    def deliver(tok: bytes, peer: str, stream: trio.SSLStream[trio.SocketStream]) -> bool:
        if tok != token:
            return False
        got.append((peer, stream))
        arrived.set()
        return True

    listener = listener_for(pki, deliver)
    node2 = pki.issue("node2", "node", addresses=("127.0.0.1",))
    async with trio.open_nursery() as n:
        await n.start(listener.run)
        address = f"127.0.0.1:{listener.address[1]}"
        stream = await open_channel(address, node2.context(), "node1", token, 5.0)
        with trio.fail_after(10):
            await arrived.wait()
        peer, server_side = got[0]
        assert peer == "node2"
        await stream.send_all(b"frames")
        assert await server_side.receive_some(100) == b"frames"
        await server_side.send_all(b"back")
        assert await stream.receive_some(100) == b"back"
        await close_gently(stream)
        assert await server_side.receive_some(100) == b""
        await close_gently(server_side)
        n.cancel_scope.cancel()
    assert listener.refused == 0


@pytest.mark.parametrize("who", ["wrong-token", "admin-cert"])
async def test_refused_channels_are_closed(pki: Pki, who: str) -> None:
    token = secrets.token_bytes(TOKEN_BYTES)

    def deliver(tok: bytes, peer: str, stream: trio.SSLStream[trio.SocketStream]) -> bool:
        return tok == token

    listener = listener_for(pki, deliver)
    files = (
        pki.issue("node2", "node", addresses=("127.0.0.1",))
        if who == "wrong-token"
        else pki.issue("root", "admin")
    )
    sent = secrets.token_bytes(TOKEN_BYTES) if who == "wrong-token" else token
    async with trio.open_nursery() as n:
        await n.start(listener.run)
        address = f"127.0.0.1:{listener.address[1]}"
        stream = await open_channel(address, files.context(), "node1", sent, 5.0)
        with trio.fail_after(10):
            try:
                data = await stream.receive_some(100)
            except trio.BrokenResourceError:
                data = b""
        assert data == b""
        await trio.aclose_forcefully(stream)
        n.cancel_scope.cancel()
    assert listener.refused == 1


async def test_nobody_listening_is_unavailable(pki: Pki) -> None:
    files = pki.issue("node2", "node", addresses=("127.0.0.1",))
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(errors.Unavailable):
        await open_channel(f"127.0.0.1:{port}", files.context(), "node1", b"x" * 32, 5.0)
