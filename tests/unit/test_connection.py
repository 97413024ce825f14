"""One connection's dispatch over a real in-memory byte stream: spawned and inline calls,
their answers, and stopping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from novacron.auth.identity import Identity
from novacron.eventbus import EventBus
from novacron.rpc import codec
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params
from novacron.server.connection import INLINE_BATCH, Connection

ADMIN = Identity(kind="unix", user="root", roles=frozenset({"admin"}))


class Slow:
    """A registry whose ``vm.get`` waits until released; ``session.hello`` is inline."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.started = 0
        self.registry = Registry()

        @self.registry.method("vm.get")
        async def get(ctx: CallContext, p: Params) -> Any:
            """Waits."""
            self.started += 1
            await self.release.wait()
            return "slow"

        @self.registry.method("session.hello", inline=True)
        async def hello(ctx: CallContext, p: Params) -> Any:
            """Answers at once."""
            return "hi"


async def replies(stream: trio.abc.ReceiveStream, decoder: codec.Decoder, n: int) -> list[Any]:
    out: list[Any] = []
    while len(out) < n:
        out.extend(decoder.feed(await stream.receive_some()))
    return out


@asynccontextmanager
async def serving(slow: Slow, max_inflight: int) -> AsyncIterator[tuple[Connection, Any]]:
    """A connection serving ``slow``'s registry; the client's end of its stream."""
    client, server = trio.testing.memory_stream_pair()
    conn = Connection(server, ADMIN, slow.registry, EventBus(), 1 << 20, max_inflight)
    async with trio.open_nursery() as n:
        n.start_soon(conn.serve)
        yield conn, client


async def test_inline_calls_answer_while_spawned_calls_wait() -> None:
    slow, decoder = Slow(), codec.Decoder()
    # one call slot, which the slow call holds: spawned calls would wait for it
    async with serving(slow, max_inflight=1) as (_, client):
        await client.send_all(
            codec.encode_request(1, "vm.get", None)
            + codec.encode_request(2, "session.hello", None)
            + codec.encode_request(3, "session.hello", None)
        )
        with trio.fail_after(5):
            first = await replies(client, decoder, 2)
        assert [(r.msgid, r.result) for r in first] == [(2, "hi"), (3, "hi")]
        assert slow.started == 1  # the slow call runs, unanswered
        slow.release.set()
        with trio.fail_after(5):
            (last,) = await replies(client, decoder, 1)
        assert (last.msgid, last.result) == (1, "slow")
        await client.aclose()


async def test_stop_reading_lets_calls_in_flight_answer_and_takes_no_more() -> None:
    slow, decoder = Slow(), codec.Decoder()
    async with serving(slow, max_inflight=16) as (conn, client):
        await client.send_all(codec.encode_request(1, "vm.get", None))
        await trio.testing.wait_all_tasks_blocked()
        assert slow.started == 1
        conn.stop_reading()  # the reader waits for bytes: it stops at once
        await client.send_all(codec.encode_request(2, "session.hello", None))
        await trio.testing.wait_all_tasks_blocked()
        slow.release.set()
        with trio.fail_after(5):
            answered = await replies(client, decoder, 1)
            assert [r.msgid for r in answered] == [1]
            assert await client.receive_some() == b""  # then the connection closes


async def test_a_read_full_of_inline_calls_is_answered_in_several_writes() -> None:
    slow, decoder = Slow(), codec.Decoder()
    async with serving(slow, max_inflight=16) as (conn, client):
        calls = 200  # one read: they never reach a checkpoint by themselves
        await client.send_all(
            b"".join(codec.encode_request(i, "session.hello", None) for i in range(calls))
        )
        with trio.fail_after(5):
            answered = await replies(client, decoder, calls)
        assert sorted(r.msgid for r in answered) == list(range(calls))
        # every INLINE_BATCH answers a write (a checkpoint), not one write for all
        assert conn._outbox.writes >= -(-calls // INLINE_BATCH)
        await client.aclose()
