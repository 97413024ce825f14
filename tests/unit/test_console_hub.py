"""The shared consoles' bookkeeping (``api/console_hub.py``): one stream per VM, one
session typing and any number watching, every session the same output, a slow one let
go, the stream's end told to all and the stream let go with the last session.

The stream here is an in-memory one with :class:`~novacron.vm.console.ConsoleStream`'s
three calls; the libvirt stream itself, on a real guest: ``tests/system/test_console.py``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from novacron import errors
from novacron.api.console_hub import CHUNK, OVERRUN, ConsoleHub, ConsoleSession, SharedConsole
from novacron.blocking import Pool


class MemoryStream:
    """A console whose output the test gives (``feed``), ends (``hang_up``) or breaks."""

    def __init__(self) -> None:
        self.send, self._recv = trio.open_memory_channel[bytes | Exception](100)
        self.written: list[bytes] = []
        self.closed = 0
        self.reads = 0

    async def read(self) -> bytes:
        item = await self._recv.receive()
        self.reads += 1
        if isinstance(item, Exception):
            raise item
        return item

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    async def close(self) -> None:
        self.closed += 1

    def feed(self, data: bytes) -> None:
        self.send.send_nowait(data)

    def hang_up(self) -> None:
        self.send.send_nowait(b"")


class Opener:
    def __init__(self) -> None:
        self.streams: list[MemoryStream] = []
        self.forced: list[bool] = []
        self.refuse: errors.NovaCronError | None = None

    async def __call__(self, vm: str, force: bool) -> MemoryStream:
        if self.refuse is not None:
            raise self.refuse
        self.forced.append(force)
        self.streams.append(MemoryStream())
        return self.streams[-1]


def _session(number: int, read_only: bool = False, user: str = "alice") -> ConsoleSession:
    return ConsoleSession(number, "vm1", "default", read_only, user)


def run(test: Callable[[ConsoleHub, Opener], Awaitable[None]]) -> None:
    async def main() -> None:
        opener = Opener()
        await test(ConsoleHub(opener, Pool("console-test", 1)), opener)

    trio.run(main)


async def collect(shared: SharedConsole, session: ConsoleSession, out: list[bytes]) -> None:
    """A client that takes everything at once (until its session ends)."""
    while data := await shared.output(session):
        out.append(data)


async def joined(hub: ConsoleHub, *sessions: ConsoleSession) -> SharedConsole:
    """The console ``sessions`` share, once each joined it (none forcing)."""
    for session in sessions:
        await hub.join(session, force=False)
    return _shared(sessions[0])


def _shared(session: ConsoleSession) -> SharedConsole:
    assert session.shared is not None
    return session.shared


def test_a_typing_and_a_watching_session_share_one_stream_and_its_output() -> None:
    async def test(hub: ConsoleHub, opener: Opener) -> None:
        typing, watching = _session(1), _session(2, read_only=True, user="bob")
        await hub.join(typing, force=False)
        await hub.join(watching, force=False)
        assert len(opener.streams) == 1 and typing.shared is watching.shared
        shared, stream = _shared(typing), opener.streams[0]
        seen: dict[int, list[bytes]] = {1: [], 2: []}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, shared, typing, seen[1])
            nursery.start_soon(collect, shared, watching, seen[2])
            for chunk in (b"login: ", b"root\r\n", b"# "):
                stream.feed(chunk)
                await trio.testing.wait_all_tasks_blocked()
            stream.hang_up()
        assert b"".join(seen[1]) == b"".join(seen[2]) == b"login: root\r\n# "
        assert typing.end is not None and typing.end[0] == "ended"
        assert watching.end == typing.end
        assert stream.reads == 4  # each output read once, for both
        with pytest.raises(errors.Conflict, match="has ended"):
            await shared.write(typing, b"ls\r")
        assert stream.written == []

    run(test)


def test_only_the_typing_session_writes_and_a_second_typist_is_refused_unless_forced() -> None:
    async def test(hub: ConsoleHub, opener: Opener) -> None:
        first, watcher = _session(1), _session(2, read_only=True)
        shared = await joined(hub, first, watcher)
        await shared.write(first, b"ls\r")
        with pytest.raises(errors.Conflict, match="read-only"):
            await shared.write(watcher, b"rm -rf /\r")
        second = _session(3, user="carol")
        with pytest.raises(errors.Conflict, match="alice has VM 'vm1'") as refused:
            await hub.join(second, force=False)
        assert refused.value.details["holder"] == "alice"
        assert second.shared is None and shared.writer is first  # nothing changed
        await shared.write(first, b"pwd\r")

        await hub.join(second, force=True)  # takes it over: the first is told
        assert len(opener.streams) == 1  # (the same stream; libvirt is not asked)
        assert shared.writer is second and first.end is not None and first.end[0] == "taken"
        assert await shared.output(first) == b""
        with pytest.raises(errors.Conflict, match="another client took"):
            await shared.write(first, b"x")
        await shared.write(second, b"id\r")
        assert opener.streams[0].written == [b"ls\r", b"pwd\r", b"id\r"]
        assert watcher.end is None  # watching goes on

    run(test)


def test_a_session_that_falls_too_far_behind_is_let_go_and_the_others_go_on() -> None:
    async def test(hub: ConsoleHub, opener: Opener) -> None:
        fast, slow = _session(1, read_only=True), _session(2, read_only=True)
        shared, stream = await joined(hub, fast, slow), opener.streams[0]
        chunk = b"x" * 65536
        got = 0
        for _ in range(OVERRUN // len(chunk) + 1):  # the slow one never takes any
            stream.feed(chunk)
            got += len(await shared.output(fast))
        assert got == OVERRUN + len(chunk)
        assert slow.end is not None and slow.end[0] == "overrun"
        assert await shared.output(slow) == b""  # (its backlog is dropped, not sent)
        stream.feed(b"more")
        assert await shared.output(fast) == b"more" and fast.end is None

    run(test)


def test_a_session_just_behind_keeps_its_backlog() -> None:
    async def test(hub: ConsoleHub, opener: Opener) -> None:
        fast, slow = _session(1), _session(2, read_only=True)
        shared, stream = await joined(hub, fast, slow), opener.streams[0]
        for _ in range(OVERRUN // 65536):
            stream.feed(b"y" * 65536)
            await shared.output(fast)
        assert slow.end is None
        pieces = [await shared.output(slow) for _ in range(OVERRUN // CHUNK)]
        assert pieces == [b"y" * CHUNK] * (OVERRUN // CHUNK)  # (a notification at most each)

    run(test)


def test_a_broken_stream_ends_every_session_with_its_error() -> None:
    async def test(hub: ConsoleHub, opener: Opener) -> None:
        a, b = _session(1), _session(2, read_only=True)
        shared = await joined(hub, a, b)
        opener.streams[0].feed(b"last words")
        opener.streams[0].send.send_nowait(errors.Internal("the stream broke"))
        assert await shared.output(a) == b"last words"
        assert await shared.output(a) == b""
        assert a.end == b.end == ("error", "the stream broke")
        assert await shared.output(b) == b"last words"  # what came before is still sent
        assert await shared.output(b) == b""

        # a session that comes now gets a new stream (the old one's sessions still drain)
        c = _session(3)
        await hub.join(c, force=False)
        assert len(opener.streams) == 2 and c.shared is not shared

    run(test)


def test_the_last_session_to_leave_lets_the_stream_go_and_the_next_opens_anew() -> None:
    async def test(hub: ConsoleHub, opener: Opener) -> None:
        a, b = _session(1), _session(2, read_only=True)
        await hub.join(a, force=False)
        await hub.join(b, force=True)
        assert opener.forced == [False]  # (force matters to libvirt only when opening)
        assert hub.statistics()["open"] == 1 and hub.statistics()["sessions"] == 2
        assert hub.statistics()["watching"] == 1
        await hub.leave(a)
        assert opener.streams[0].closed == 0 and _shared(b).writer is None
        c = _session(3)
        await hub.join(c, force=False)  # the typing seat is free: no force needed
        await hub.leave(b)
        await hub.leave(c)
        assert opener.streams[0].closed == 1
        assert hub.statistics()["open"] == 0 and hub.statistics()["sessions"] == 0
        await hub.join(_session(4), force=True)
        assert len(opener.streams) == 2 and opener.forced == [False, True]

    run(test)


def test_a_refused_open_adds_nothing() -> None:
    async def test(hub: ConsoleHub, opener: Opener) -> None:
        opener.refuse = errors.Conflict("VM 'vm1' is not running")
        a = _session(1)
        with pytest.raises(errors.Conflict, match="not running"):
            await hub.join(a, force=False)
        assert a.shared is None and hub.statistics()["open"] == 0
        opener.refuse = None
        await hub.join(a, force=False)
        assert hub.statistics()["open"] == 1

    run(test)


def test_when_the_reading_session_leaves_another_reads_on() -> None:
    async def test(hub: ConsoleHub, opener: Opener) -> None:
        a, b = _session(1), _session(2, read_only=True)
        shared, stream = await joined(hub, a, b), opener.streams[0]
        seen: list[bytes] = []
        reader = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancelled_read, shared, a, reader)
            await trio.testing.wait_all_tasks_blocked()  # a reads
            nursery.start_soon(collect, shared, b, seen)
            await trio.testing.wait_all_tasks_blocked()  # b waits on a's read
            reader.cancel()  # a's client goes away mid-read: b reads instead, at once
            await trio.testing.wait_all_tasks_blocked()
            stream.feed(b"still here")
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [b"still here"]
            await hub.leave(a)
            stream.hang_up()
        assert b"".join(seen) == b"still here"

    run(test)


async def _cancelled_read(
    shared: SharedConsole, session: ConsoleSession, scope: trio.CancelScope
) -> None:
    with scope:
        await shared.output(session)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=30),
    takes=st.lists(st.integers(0, 2), max_size=60),
)
def test_every_session_gets_the_output_in_order_however_the_clients_interleave(
    chunks: list[bytes], takes: list[int]
) -> None:
    """Sessions take their output in any order (the test's schedule); each gets every
    byte the console printed, in order, once."""

    async def test(hub: ConsoleHub, opener: Opener) -> None:
        sessions = [_session(1), _session(2, read_only=True), _session(3, read_only=True)]
        for s in sessions:
            await hub.join(s, force=False)
        shared, stream = _shared(sessions[0]), opener.streams[0]
        for chunk in chunks:
            stream.feed(chunk)
        stream.hang_up()
        got: list[bytearray] = [bytearray() for _ in sessions]
        for k in takes:  # one piece each time a session's turn comes
            got[k] += await shared.output(sessions[k])
        for k, s in enumerate(sessions):
            while data := await shared.output(s):
                got[k] += data
            assert bytes(got[k]) == b"".join(chunks)
            assert s.end is not None and s.end[0] == "ended"

    run(test)
