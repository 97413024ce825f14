"""novacron.client against the real server code in-process (real Unix sockets)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from novacron import errors
from novacron.client import SyncClient, connect
from novacron.eventbus import EventBus
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params
from novacron.server.limits import ConnectionSettings
from novacron.server.unix import UnixServer, bind_unix


def make_registry() -> Registry:
    reg = Registry()

    @reg.method("session.hello")
    async def hello(ctx: CallContext, p: Params) -> Any:
        """Hello."""
        p.done()
        return {"protocol": 1}

    @reg.method("vm.get")
    async def get(ctx: CallContext, p: Params) -> Any:
        """Sleeps ``memory_mib`` ms, then answers with the name."""
        name = p.name()
        delay = p.integer("memory_mib", 0, 10_000, default=0)
        p.done()
        await trio.sleep(delay / 1000)
        if name == "ghost":
            raise errors.NotFound("no such vm")
        return {"name": name}

    return reg


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "s.sock"
    sock = bind_unix(path, "no-such-group")
    settings = ConnectionSettings(1 << 20, 16, 60.0)
    srv = UnixServer(sock, make_registry(), EventBus(), "no-such-group", settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.run)
        yield path
        await srv.shutdown(1)


async def test_concurrent_calls_complete_out_of_order(server: Path) -> None:
    order: list[str] = []
    async with connect(server) as c:

        async def one(name: str, delay: int) -> None:
            result = await c.call("vm.get", name=name, memory_mib=delay)
            order.append(result["name"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "slow", 300)
            await trio.sleep(0.05)
            nursery.start_soon(one, "fast", 0)
    assert order == ["fast", "slow"]


async def test_errors_map_to_exceptions(server: Path) -> None:
    async with connect(server) as c:
        with pytest.raises(errors.NotFound):
            await c.call("vm.get", name="ghost")
        with pytest.raises(errors.MethodNotFound):
            await c.call("vm.nope")
        assert (await c.call("session.hello"))["protocol"] == 1


async def test_an_error_leaving_the_block_is_itself_not_a_group(server: Path) -> None:
    """What a caller's ``except errors.NotFound`` around ``async with connect()`` catches
    (the client's reader task must not wrap it)."""
    with pytest.raises(errors.NotFound):
        async with connect(server) as c:
            await c.call("vm.get", name="ghost")
    with pytest.raises(KeyError, match="mine"):
        async with connect(server) as c:
            raise KeyError("mine")
    with trio.move_on_after(0.05) as scope:  # a cancellation passes through too
        async with connect(server) as c:
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_unreachable_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(errors.Unavailable):
        async with connect(tmp_path / "none.sock"):
            pass
    with pytest.raises(errors.Unavailable):
        SyncClient(tmp_path / "none.sock")


async def test_sync_client_timeout_and_oversize(server: Path) -> None:
    def blocking() -> None:
        with SyncClient(server, timeout=0.2) as c, pytest.raises(errors.Timeout):
            c.call("vm.get", name="a", memory_mib=2000)
        with SyncClient(server) as c:
            with pytest.raises(errors.ProtocolError) as info:
                c.call("vm.get", name="a" * (2 << 20))
            assert info.value.code == "too_large"

    await trio.to_thread.run_sync(blocking)


async def test_server_closing_fails_pending_calls(tmp_path: Path) -> None:
    path = tmp_path / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    async def close_after_read() -> None:
        conn, _ = await trio.to_thread.run_sync(listener.accept)
        await trio.to_thread.run_sync(conn.recv, 100)
        conn.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_after_read)
        async with connect(path) as c:
            with pytest.raises(errors.Unavailable):
                await c.call("session.hello")
    listener.close()


async def test_trio_client_reports_the_protocol_error(server: Path) -> None:
    async with connect(server) as c:
        with pytest.raises(errors.ProtocolError) as info:
            await c.call("vm.get", name="a" * (2 << 20))
        assert info.value.code == "too_large"
