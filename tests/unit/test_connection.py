"""One connection's dispatch over a real in-memory byte stream: spawned and inline calls,
their answers, and stopping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from novacron.auth.identity import Identity
from novacron.eventbus import EventBus
from novacron.rpc import codec
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params
from novacron.server.connection import INLINE_BATCH, Connection
from novacron.server.limits import FREE_PENDING, ConnectionSettings, PendingBudget

ADMIN = Identity(kind="unix", user="root", uid=0, roles=frozenset({"admin"}), tenants=None)
ALICE = Identity(kind="tls", user="alice", roles=frozenset({"operator"}), tenants=frozenset({"a"}))


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
async def serving(
    slow: Slow,
    max_inflight: int,
    message_timeout_s: float = 0.0,
    pending: PendingBudget | None = None,
    identity: Identity = ADMIN,
) -> AsyncIterator[tuple[Connection, Any]]:
    """A connection serving ``slow``'s registry; the client's end of its stream."""
    client, server = trio.testing.memory_stream_pair()
    settings = ConnectionSettings(1 << 20, max_inflight, message_timeout_s, pending)
    conn = Connection(server, identity, slow.registry, EventBus(), settings)
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


async def test_a_message_not_complete_in_time_closes_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow, decoder = Slow(), codec.Decoder()
    request = codec.encode_request(1, "session.hello", None)
    async with serving(slow, max_inflight=16, message_timeout_s=10) as (_, client):
        await client.send_all(request[:3])
        began = trio.current_time()
        with trio.fail_after(30):  # (on the test's clock, which jumps when all wait)
            (notice,) = await replies(client, decoder, 1)
        assert trio.current_time() - began == pytest.approx(10)
        assert notice == codec.Notification(
            "protocol.error",
            [{"code": "timeout", "message": "a message was not complete 10 s after it began"}],
        )
        assert await client.receive_some() == b""


async def test_a_connection_may_stay_idle_between_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow, decoder = Slow(), codec.Decoder()
    async with serving(slow, max_inflight=16, message_timeout_s=10) as (_, client):
        for msgid in range(3):
            await client.send_all(codec.encode_request(msgid, "session.hello", None))
            (answer,) = await replies(client, decoder, 1)
            assert answer.msgid == msgid
            await trio.sleep(100)
        await client.aclose()


async def test_messages_that_keep_coming_in_pieces_are_not_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every read ends inside a message, but each completes one: that is progress."""
    slow, decoder = Slow(), codec.Decoder()
    stream = b"".join(codec.encode_request(i, "session.hello", None) for i in range(13))
    size = len(codec.encode_request(0, "session.hello", None))
    async with serving(slow, max_inflight=16, message_timeout_s=10) as (_, client):
        await client.send_all(stream[: size // 2])
        for i in range(12):  # 12 reads 6 s apart: 72 s in all, never a whole message
            await trio.sleep(6)
            await client.send_all(stream[size // 2 + i * size : size // 2 + (i + 1) * size])
        with trio.fail_after(1):
            (*answered,) = await replies(client, decoder, 12)
        assert sorted(r.msgid for r in answered) == list(range(12))
        await trio.sleep(6)
        await client.send_all(stream[size // 2 + 12 * size :])
        (last,) = await replies(client, decoder, 1)
        assert last.msgid == 12
        await client.aclose()


async def test_time_spent_waiting_for_a_call_slot_is_not_the_peers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow, decoder = Slow(), codec.Decoder()
    hello = codec.encode_request(3, "session.hello", None)
    async with serving(slow, max_inflight=1, message_timeout_s=10) as (_, client):
        # the second call waits for the first's slot, a message begun behind it
        await client.send_all(
            codec.encode_request(1, "vm.get", None)
            + codec.encode_request(2, "vm.get", None)
            + hello[:3]
        )
        await trio.sleep(100)  # the server does not read meanwhile
        slow.release.set()
        with trio.fail_after(1):
            first = await replies(client, decoder, 2)
        assert sorted(r.msgid for r in first) == [1, 2]
        await client.send_all(hello[3:])
        with trio.fail_after(1):
            (last,) = await replies(client, decoder, 1)
        assert (last.msgid, last.result) == (3, "hi")
        await client.aclose()


async def test_messages_being_received_share_one_budget() -> None:
    """Two connections each begin a large request; the second does not fit in what the
    daemon's budget has left and is closed (``overloaded``); a local admin's is taken
    all the same; what a connection drew is back once its message completed or it
    closed."""
    slow, decoder = Slow(), codec.Decoder()
    budget = PendingBudget(100_000)
    big = codec.encode_request(1, "session.hello", {"pad": "x" * (FREE_PENDING + 80_000)})
    part = big[: FREE_PENDING + 60_000]
    async with (
        serving(slow, 16, pending=budget, identity=ALICE) as (_, first),
        serving(slow, 16, pending=budget, identity=ALICE) as (_, second),
        serving(slow, 16, pending=budget) as (_, admin),
    ):
        await first.send_all(part)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 60_000
        await second.send_all(part)
        with trio.fail_after(5):
            (notice,) = await replies(second, decoder, 1)
            assert await second.receive_some() == b""
        assert notice == codec.Notification(
            "protocol.error",
            [
                {
                    "code": "overloaded",
                    "message": "the daemon holds its limit of requests being received; retry later",
                }
            ],
        )
        await admin.send_all(part)  # (the operator is never locked out)
        await trio.testing.wait_all_tasks_blocked()
        assert (budget.used, budget.refused) == (120_000, 1)
        await first.send_all(big[len(part) :])  # completes: answered, its draw returned
        with trio.fail_after(5):
            (answer,) = await replies(first, codec.Decoder(), 1)
        assert answer.result == "hi" and budget.used == 60_000
        await admin.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 0
        await first.aclose()
