"""One libvirt console stream per VM, shared by every client that has the console open.

libvirt lets one client hold a VM's console. The daemon holds it once per VM and shares
it: one session may type (``vm.console.open``), any number watch (``vm.console.watch``),
and all of them see the same output. The stream is opened when the first session comes
and let go when the last one leaves.

Nobody runs a reader of its own: a session whose client has taken everything sent to it
reads the next output from libvirt for everyone, unless another session is reading
already. So the console goes at the pace of its fastest client, the guest's output waits
in QEMU (as on a serial line) while every client is behind, and a client that falls
:data:`OVERRUN` bytes behind the others is let go (``overrun``) instead of holding the
daemon's memory or everyone's console.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from novacron import errors
from novacron.blocking import Pool
from novacron.logs import kv
from novacron.rpc.dispatch import ConnectionState

OVERRUN = 1 << 20  # bytes of output a session may have waiting before it is let go
CHUNK = 64 * 1024  # the most output one call of SharedConsole.output returns

# why a session ended without its client asking: (reason, message)
TAKEN = ("taken", "another client took the console over")
BEHIND = ("overrun", "this client fell more than 1 MiB behind the console's output")
ENDED = ("ended", "the console ended (the VM stopped or left this node)")


class Stream(Protocol):
    """What a shared console needs of its stream (:class:`~novacron.vm.console.ConsoleStream`)."""

    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...


Opener = Callable[[str, bool], Awaitable[Stream]]  # (vm, force) -> its open console


@dataclass(eq=False)
class ConsoleSession:
    """One client's console: ``id`` on its connection, for typing or (``read_only``)
    watching."""

    id: int
    vm: str
    tenant: str
    read_only: bool
    user: str
    pending: bytearray = field(default_factory=bytearray)  # output not yet sent to it
    end: tuple[str, str] | None = None  # set when it ended without its client asking
    shared: SharedConsole | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    closed_by_client: bool = False
    bytes_sent: int = 0  # output sent to this client
    bytes_written: int = 0  # input this client gave

    async def write(self, data: bytes) -> None:
        """Gives ``data`` to the guest (``conflict`` if this session may not)."""
        assert self.shared is not None
        await self.shared.write(self, data)


class SharedConsole:
    """A VM's open console stream and the sessions sharing it."""

    def __init__(self, vm: str, stream: Stream) -> None:
        self.vm = vm
        self.stream = stream
        self.sessions: set[ConsoleSession] = set()
        self.writer: ConsoleSession | None = None
        self.ended: tuple[str, str] | None = None
        self._reading = False
        self._changed = trio.Event()
        self._write_lock = trio.Lock()

    def wake(self) -> None:
        """Tells every session waiting for output to look again."""
        self._changed.set()
        self._changed = trio.Event()

    def finish(self, session: ConsoleSession, why: tuple[str, str]) -> None:
        """Ends one session (it sends what it has, then says why)."""
        if session.end is None:
            session.end = why
        if self.writer is session:
            self.writer = None
        self.wake()

    async def output(self, session: ConsoleSession) -> bytes:
        """The next output for ``session``, as soon as there is some; ``b""`` once it
        ended (``session.end`` says why)."""
        while True:
            if session.pending:
                data = bytes(session.pending[:CHUNK])
                del session.pending[:CHUNK]
                session.bytes_sent += len(data)
                return data
            if session.end is not None:
                return b""
            if self._reading:
                await self._changed.wait()
            else:
                await self._read()

    async def _read(self) -> None:
        self._reading = True
        try:
            data = await self.stream.read()
        except errors.NovaCronError as exc:
            self._end_all(("error", exc.message))
            return
        finally:
            self._reading = False
            self.wake()  # (also when cancelled: another session reads instead)
        if not data:
            self._end_all(ENDED)
            return
        for session in self.sessions:
            if session.end is not None:
                continue
            session.pending += data
            if len(session.pending) > OVERRUN:
                session.pending.clear()
                self.finish(session, BEHIND)

    def _end_all(self, why: tuple[str, str]) -> None:
        self.ended = why
        for session in self.sessions:
            self.finish(session, why)

    async def write(self, session: ConsoleSession, data: bytes) -> None:
        """Gives ``data`` to the guest as ``session``'s input."""
        if session.read_only:
            raise errors.Conflict(
                f"console {session.id} is read-only (opened with vm.console.watch)",
                {"console": session.id},
            )
        if session.end is not None or self.writer is not session:
            raise errors.Conflict(
                f"console {session.id} has ended: {(session.end or TAKEN)[1]}",
                {"console": session.id},
            )
        async with self._write_lock:  # (one client's writes reach the guest in order)
            await self.stream.write(data)
        session.bytes_written += len(data)


class ConsoleHub:
    """The daemon's shared consoles, one per VM with a session open."""

    def __init__(self, opener: Opener, pool: Pool) -> None:
        self._open = opener
        self._pool = pool
        self._consoles: dict[str, SharedConsole] = {}
        self._lock = trio.Lock()  # opening and letting go of streams, one at a time

    async def join(self, session: ConsoleSession, force: bool) -> None:
        """Adds ``session`` to its VM's console, opening libvirt's stream if no session
        has it (``force`` takes it from a client outside this daemon). A session for
        typing while another has the console for typing: ``conflict``, unless ``force``
        ends that one (``taken``)."""
        async with self._lock:
            shared = self._consoles.get(session.vm)
            if shared is not None and shared.ended is not None:
                del self._consoles[session.vm]  # (its sessions still drain; a new stream)
                shared = None
            if shared is None:
                shared = SharedConsole(session.vm, await self._open(session.vm, force))
                self._consoles[session.vm] = shared
            elif not session.read_only and shared.writer is not None:
                if not force:
                    raise errors.Conflict(
                        f"{shared.writer.user} has VM {session.vm!r}'s console open for input;"
                        " force takes it over, vm.console.watch views it alongside",
                        {"vm": session.vm, "holder": shared.writer.user},
                    )
                shared.finish(shared.writer, TAKEN)
            shared.sessions.add(session)
            session.shared = shared
            if not session.read_only:
                shared.writer = session

    async def leave(self, session: ConsoleSession) -> None:
        """Takes ``session`` off its console; the last one lets libvirt's stream go.
        Shielded: it runs as a connection ends."""
        shared = session.shared
        if shared is None:
            return
        with trio.CancelScope(shield=True):
            async with self._lock:
                shared.sessions.discard(session)
                if shared.writer is session:
                    shared.writer = None
                shared.wake()
                if shared.sessions:
                    return
                if self._consoles.get(shared.vm) is shared:
                    del self._consoles[shared.vm]
                with contextlib.suppress(errors.NovaCronError):
                    await shared.stream.close()

    def statistics(self) -> dict[str, Any]:
        """For ``node.info``: VMs whose console is open, sessions, and the threads."""
        return {
            "open": len(self._consoles),
            "sessions": sum(len(s.sessions) for s in self._consoles.values()),
            "watching": sum(1 for c in self._consoles.values() for s in c.sessions if s.read_only),
            "pool": self._pool.statistics(),
        }


class Ending(Protocol):
    """What :func:`tell_end` needs of a console (a session here or a relayed one)."""

    id: int
    vm: str
    end: tuple[str, str] | None
    closed_by_client: bool
    bytes_sent: int
    bytes_written: int


async def tell_end(
    conn: ConnectionState, console: Ending, gone: bool, log: logging.Logger, **extra: Any
) -> None:
    """Logs a console's end (``extra`` added) and, unless its client closed it or its
    connection is ``gone``, sends the client ``console.closed`` with why."""
    if console.closed_by_client:
        reason = "closed"
    else:
        reason = console.end[0] if console.end is not None else "connection_closed"
    log.info(
        "console.closed",
        extra=kv(
            vm=console.vm,
            console=console.id,
            reason=reason,
            bytes_sent=console.bytes_sent,
            bytes_written=console.bytes_written,
            **extra,
        ),
    )
    if console.closed_by_client or gone or console.end is None or conn.notify is None:
        return
    reason, message = console.end
    note = {"console": console.id, "vm": console.vm, "reason": reason, "message": message}
    with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        await conn.notify("console.closed", note)
