"""A console of a VM on another node of the cluster, relayed for the caller.

A client may open a console through any node. When the VM is another node's, this node
opens a connection of its own to that node (its node certificate, like other forwarded
calls) and asks it, through ``cluster.forward`` with the caller's identity, to open the
console on that connection; the VM's node checks the caller's rights and holds the
console as for a local client. This node then relays: the console's notifications to
the caller (under the caller's console id), the caller's input and close to the VM's
node. The connection is the console's alone; closing the console, or the caller's
connection ending, closes it, which lets the console go there.

Output is relayed at the caller's pace: the connection to the VM's node stops being
read while :data:`BUFFERED` notifications wait, so the VM's node holds the rest, and lets
this node's session go (``overrun``) if it falls 1 MiB behind its other clients.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from novacron import errors
from novacron.api.console_hub import tell_end
from novacron.client import Client
from novacron.rpc.dispatch import ConnectionState

log = logging.getLogger("novacron.console")

BUFFERED = 16  # notifications read from the VM's node and not yet relayed
GONE = ("error", "the connection to the VM's node ended")


class Peers(Protocol):
    """Connections to the other nodes (:class:`~novacron.cluster.service.ClusterService`)."""

    def peer(
        self, node: str, notification_buffer: float = ...
    ) -> AbstractAsyncContextManager[Client]: ...


@dataclass(eq=False)
class RemoteConsole:
    """One client's console of a VM on ``node``: ``id`` on the caller's connection,
    ``remote`` on this node's connection to ``node``."""

    id: int
    vm: str
    node: str
    read_only: bool
    caller: dict[str, Any]  # the caller's identity, as cluster.forward carries it
    tenant: str  # the VM's tenant (for this node's audit of the caller's calls)
    remote: int = 0
    peer: Client | None = None
    end: tuple[str, str] | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    opened: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    failure: errors.NovaCronError | None = None  # why it could not be opened
    closed_by_client: bool = False
    bytes_sent: int = 0
    bytes_written: int = 0

    async def write(self, data: bytes) -> None:
        """Gives ``data`` to the guest through the VM's node (which refuses a watching
        console's input)."""
        if self.peer is None:
            raise errors.Conflict(f"console {self.id} has ended", {"console": self.id})
        params = {"console": self.remote, "data": data}
        try:
            await self.peer.call(
                "cluster.forward", call="vm.console.write", params=params, identity=self.caller
            )
        except errors.NotFound:  # (the VM's node no longer has it: it ended there)
            raise errors.Conflict(
                f"console {self.id} has ended: {(self.end or GONE)[1]}", {"console": self.id}
            ) from None
        self.bytes_written += len(data)


async def open_remote(
    cluster: Peers,
    conn: ConnectionState,
    console: RemoteConsole,
    method: str,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Opens ``console`` on its node (``method`` with ``params``, as its caller) and
    starts relaying it on ``conn``, where it is listed under its id at once (and taken
    off when it ends); the VM's node's answer, or its refusal raised."""
    assert conn.start_task is not None
    conn.consoles[console.id] = console
    conn.start_task(lambda: _relay(cluster, conn, console, method, params))
    try:
        await console.opened.wait()
    finally:
        if console.failure is None and console.peer is None:  # (cancelled while opening)
            console.scope.cancel()
    if console.failure is not None:
        raise console.failure
    return {"console": console.id, "vm": console.vm, "read_only": console.read_only}


async def _relay(
    cluster: Peers,
    conn: ConnectionState,
    console: RemoteConsole,
    method: str,
    params: dict[str, Any],
) -> None:
    assert conn.notify is not None
    gone = False
    try:
        with console.scope:
            async with cluster.peer(console.node, notification_buffer=BUFFERED) as peer:
                opened = await peer.call(
                    "cluster.forward", call=method, params=params, identity=console.caller
                )
                console.remote, console.peer = int(opened["console"]), peer
                console.opened.set()
                await _pass_on(peer, conn, console)
    except errors.NovaCronError as exc:
        if console.peer is None:
            console.failure = exc
        else:
            console.end = ("error", exc.message)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        gone = True  # (the caller's connection)
    finally:
        console.peer = None
        if not console.opened.is_set():
            if console.failure is None:
                console.failure = errors.Unavailable(
                    f"could not open the console on node {console.node!r}"
                )
            console.opened.set()
        if conn.consoles.get(console.id) is console:
            del conn.consoles[console.id]
        console.done.set()
    if console.failure is None:  # (one never opened is the caller's error, no end)
        await tell_end(conn, console, gone, log, node=console.node)


async def _pass_on(peer: Client, conn: ConnectionState, console: RemoteConsole) -> None:
    """Relays the console's notifications until it ends there (its reason kept)."""
    assert conn.notify is not None
    async with contextlib.aclosing(peer.notifications()) as notes:
        async for note in notes:
            payload = note.params[0] if note.params else None
            if not isinstance(payload, dict) or payload.get("console") != console.remote:
                continue
            if note.method == "console" and isinstance(payload.get("data"), bytes):
                data: bytes = payload["data"]
                await conn.notify("console", {"console": console.id, "data": data})
                console.bytes_sent += len(data)
            elif note.method == "console.closed":
                reason, message = payload.get("reason"), payload.get("message")
                console.end = (str(reason), str(message))
                return
    console.end = GONE
