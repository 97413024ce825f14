"""``api/console_remote.py``: a console relayed from the VM's node. The VM's node here is a
scripted peer on the other end of an in-memory stream, speaking the real codec to a real
:class:`~novacron.client.Client`; the relay against two daemons and a real guest:
``tests/system/test_cluster_migration.py``."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from novacron import errors
from novacron.api.console_remote import RemoteConsole, open_remote
from novacron.client import Client
from novacron.rpc import codec
from novacron.rpc.dispatch import ConnectionState

Script = Callable[[trio.abc.Stream, list[codec.Request]], Awaitable[None]]


class Cluster:
    """The one part of ClusterService the relay uses: a connection to a node."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[codec.Request] = []
        self.closed = trio.Event()

    @asynccontextmanager
    async def peer(self, node: str, notification_buffer: float = math.inf) -> AsyncIterator[Client]:
        ours, theirs = trio.testing.memory_stream_pair()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve, theirs)
                client = Client(ours, 1 << 20, notification_buffer)
                nursery.start_soon(client._reader)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
                    self.closed.set()
        except BaseExceptionGroup as group:  # (what the body raised, as connect_tls does)
            if len(group.exceptions) != 1:
                raise
            raise group.exceptions[0] from None

    async def _serve(self, stream: trio.abc.Stream) -> None:
        await self.script(stream, self.requests)


class Requests:
    """The requests the relay sends the VM's node, one at a time (None at the end)."""

    def __init__(self, stream: trio.abc.Stream, seen: list[codec.Request]) -> None:
        self.stream, self.seen = stream, seen
        self.decoder = codec.Decoder(1 << 20)
        self.ready: list[codec.Request] = []

    async def next(self) -> codec.Request | None:
        while not self.ready:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            for message in self.decoder.feed(data):
                assert isinstance(message, codec.Request)
                self.ready.append(message)
        self.seen.append(self.ready.pop(0))
        return self.seen[-1]


def note(method: str, payload: dict[str, Any]) -> bytes:
    return codec.encode_notification(method, payload)


class Caller:
    """The caller's connection: what it was sent."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.state = ConnectionState()
        self.state.start_task = nursery.start_soon
        self.state.notify = self._notify
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def _notify(self, method: str, payload: dict[str, Any]) -> None:
        self.sent.append((method, payload))


def console(number: int = 3, read_only: bool = False) -> RemoteConsole:
    return RemoteConsole(
        number, "web1", "node1", read_only, {"user": "unix:alice", "roles": ["operator"]}, "acme"
    )


def test_output_is_relayed_under_the_callers_id_and_the_end_is_told() -> None:
    async def script(stream: trio.abc.Stream, seen: list[codec.Request]) -> None:
        incoming = Requests(stream, seen)
        while (request := await incoming.next()) is not None:
            params = request.params[0]
            if params["call"] == "vm.console.open":
                # (notifications may come before the answer, as from a daemon)
                await stream.send_all(note("console", {"console": 7, "data": b"login: "}))
                await stream.send_all(codec.encode_response(request.msgid, None, {"console": 7}))
                await stream.send_all(note("console", {"console": 8, "data": b"not ours"}))
                await stream.send_all(note("event", {"topic": "vm.state"}))
                await stream.send_all(note("console", {"console": 7, "data": b"root"}))
                await stream.send_all(
                    note("console.closed", {"console": 7, "reason": "ended", "message": "stopped"})
                )

    async def main() -> None:
        cluster = Cluster(script)
        async with trio.open_nursery() as nursery:
            caller = Caller(nursery)
            remote = console()
            opened = await open_remote(
                cluster, caller.state, remote, "vm.console.open", {"name": "web1"}
            )
            assert opened == {"console": 3, "vm": "web1", "read_only": False}
            await remote.done.wait()
        assert caller.sent == [
            ("console", {"console": 3, "data": b"login: "}),
            ("console", {"console": 3, "data": b"root"}),
            (
                "console.closed",
                {"console": 3, "vm": "web1", "reason": "ended", "message": "stopped"},
            ),
        ]
        assert caller.state.consoles == {} and cluster.closed.is_set()
        forwarded = cluster.requests[0]
        assert forwarded.method == "cluster.forward"
        assert forwarded.params[0] == {
            "call": "vm.console.open",
            "params": {"name": "web1"},
            "identity": {"user": "unix:alice", "roles": ["operator"]},
        }

    trio.run(main)


def test_a_refusal_of_the_vms_node_is_the_callers_and_lists_nothing() -> None:
    async def script(stream: trio.abc.Stream, seen: list[codec.Request]) -> None:
        incoming = Requests(stream, seen)
        while (request := await incoming.next()) is not None:
            refusal = errors.Conflict("VM 'web1' is not running").to_wire()
            await stream.send_all(codec.encode_response(request.msgid, refusal, None))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            caller = Caller(nursery)
            with pytest.raises(errors.Conflict, match="not running"):
                await open_remote(
                    Cluster(script), caller.state, console(), "vm.console.watch", {"name": "web1"}
                )
            await trio.testing.wait_all_tasks_blocked()
            assert caller.state.consoles == {} and caller.sent == []

    trio.run(main)


def test_input_goes_to_the_remote_console_and_closing_lets_it_go() -> None:
    async def script(stream: trio.abc.Stream, seen: list[codec.Request]) -> None:
        incoming = Requests(stream, seen)
        while (request := await incoming.next()) is not None:
            params = request.params[0]
            if params["call"] == "vm.console.open":
                answer: Any = {"console": 9}
            elif params["params"]["data"] == b"late":
                error = errors.NotFound("no console 9 open on this connection").to_wire()
                await stream.send_all(codec.encode_response(request.msgid, error, None))
                continue
            else:
                answer = {"written": len(params["params"]["data"])}
            await stream.send_all(codec.encode_response(request.msgid, None, answer))

    async def main() -> None:
        cluster = Cluster(script)
        async with trio.open_nursery() as nursery:
            caller = Caller(nursery)
            remote = console(5)
            await open_remote(cluster, caller.state, remote, "vm.console.open", {"name": "web1"})
            assert caller.state.consoles == {5: remote}
            await remote.write(b"ls\r")
            assert remote.bytes_written == 3
            with pytest.raises(errors.Conflict, match="has ended"):
                await remote.write(b"late")  # (the VM's node let it go meanwhile)
            remote.closed_by_client = True
            remote.scope.cancel()
            await remote.done.wait()
        wrote = cluster.requests[1].params[0]
        assert wrote["call"] == "vm.console.write"
        assert wrote["params"] == {"console": 9, "data": b"ls\r"}
        assert caller.sent == [] and caller.state.consoles == {} and cluster.closed.is_set()
        with pytest.raises(errors.Conflict, match="has ended"):
            await remote.write(b"x")

    trio.run(main)


def test_the_connection_to_the_vms_node_ending_ends_the_console() -> None:
    async def script(stream: trio.abc.Stream, seen: list[codec.Request]) -> None:
        incoming = Requests(stream, seen)
        while (request := await incoming.next()) is not None:
            await stream.send_all(codec.encode_response(request.msgid, None, {"console": 1}))
            await stream.aclose()
            return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            caller = Caller(nursery)
            remote = console()
            await open_remote(
                Cluster(script), caller.state, remote, "vm.console.open", {"name": "web1"}
            )
            await remote.done.wait()
        assert caller.sent == [
            (
                "console.closed",
                {
                    "console": 3,
                    "vm": "web1",
                    "reason": "error",
                    "message": "the connection to the VM's node ended",
                },
            )
        ]

    trio.run(main)
