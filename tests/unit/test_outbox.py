from __future__ import annotations

import trio
import trio.testing

from novacron.server.outbox import HIGH_WATER, Outbox


async def test_messages_arrive_in_order_and_coalesce_under_load() -> None:
    send, recv = trio.testing.memory_stream_pair()
    box = Outbox(send)
    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(box.send, b"%03d" % i)
    await send.aclose()
    data = b""
    while chunk := await recv.receive_some():
        data += chunk
    got = sorted(data[i : i + 3] for i in range(0, len(data), 3))
    assert got == [b"%03d" % i for i in range(50)]
    assert box.writes < 50  # concurrent senders shared writes


async def test_closed_peer_raises_and_stays_closed() -> None:
    send, recv = trio.testing.memory_stream_pair()
    await recv.aclose()
    box = Outbox(send)
    try:
        await box.send(b"x")
    except trio.BrokenResourceError:
        pass
    assert box.closed
    try:
        await box.send(b"y")
        raise AssertionError("expected ClosedResourceError")
    except trio.ClosedResourceError:
        pass


async def test_wait_writable_blocks_until_the_reader_drains() -> None:
    send, recv = trio.testing.lockstep_stream_pair()
    box = Outbox(send)
    big = b"x" * (HIGH_WATER + 10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.send, b"first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(box.send, big)  # queued behind the blocked flusher
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.2) as waited:
            await box.wait_writable()
        assert waited.cancelled_caught  # over the high-water mark: must wait
        total = 0
        while total < len(big) + 5:
            total += len(await recv.receive_some())
        await box.wait_writable()
