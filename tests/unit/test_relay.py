"""The relay loops on in-memory streams: QEMU -> source relay -> channel -> destination
relay -> QEMU, with the return path, and a tampering channel in the middle."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from novacron._core import PageStore
from novacron.errors import EngineError
from novacron.migration import frames, relay
from novacron.migration.relay import RelayStats, relay_destination, relay_source
from novacron.migration.stream import DigestMismatch, StreamReceiver, StreamSender
from tests.qemu_stream_builder import SHUT
from tests.unit.test_stream import iterations


async def migrate(
    stream: bytes,
    tamper: bool = False,
    received: bytearray | None = None,
    failures: dict[str, list[BaseException]] | None = None,
    source_store: PageStore | None = None,
    destination_store: PageStore | None = None,
    abandoned: str | None = None,
    commit: Callable[[], Awaitable[None]] | None = None,
    reads_until: int | None = None,
    src_stats: RelayStats | None = None,
    qemu_dies_after: int | None = None,
) -> tuple[bytes, bytes, RelayStats, RelayStats]:
    """Runs both relays; with ``failures`` given, each side's error is kept there (by
    side) instead of cancelling the other side. ``reads_until``: the destination QEMU
    stops reading after that many bytes (its side then has no buffer at all).
    ``qemu_dies_after``: the destination QEMU closes its connection after that many."""
    src_qemu, src_relay_side = trio.testing.memory_stream_pair()
    dst_relay_side: trio.abc.HalfCloseableStream
    dst_qemu: trio.abc.HalfCloseableStream
    if reads_until is None:
        dst_relay_side, dst_qemu = trio.testing.memory_stream_pair()
    else:
        dst_relay_side, dst_qemu = trio.testing.lockstep_stream_pair()
    chan_src, chan_mid_a = trio.testing.memory_stream_pair()
    chan_mid_b, chan_dst = trio.testing.memory_stream_pair()
    received = bytearray() if received is None else received
    returned = bytearray()
    src_stats = src_stats if src_stats is not None else RelayStats()
    dst_stats = RelayStats()
    kept = failures if failures is not None else {}

    async def source_qemu() -> None:
        # a failed migration looks to QEMU like a dropped connection
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for at in range(0, len(stream), 50_000):
                await src_qemu.send_all(stream[at : at + 50_000])
            # like QEMU: wait for the destination's SHUT before closing
            while len(returned) < len(SHUT):
                data = await src_qemu.receive_some(100)
                if not data:
                    break
                returned.extend(data)
        await src_qemu.aclose()

    async def destination_qemu() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while len(received) < len(stream):
                if reads_until is not None and len(received) >= reads_until:
                    await trio.sleep_forever()
                if qemu_dies_after is not None and len(received) >= qemu_dies_after:
                    await dst_qemu.aclose()
                    return
                data = await dst_qemu.receive_some(65536)
                if not data:
                    return
                received.extend(data)
            await dst_qemu.send_all(SHUT)
        await dst_qemu.aclose()

    async def middle(
        a: trio.abc.HalfCloseableStream, b: trio.abc.HalfCloseableStream, flip: bool
    ) -> None:
        seen = 0
        while data := await a.receive_some(65536):
            data = bytearray(data)
            if flip and seen < 2_000 <= seen + len(data):
                data[2_000 - seen] ^= 0x40  # inside the first batch of pages
            seen += len(data)
            try:
                await b.send_all(bytes(data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the far end is gone: so is this hop
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await b.send_eof()  # half-close: the other direction keeps flowing

    async def source() -> None:
        try:
            sender = StreamSender(
                batch_pages=16,
                wait_for_announce=True,
                store=source_store,
                gated=commit is not None,
            )
            await relay_source(
                src_relay_side, chan_src, sender, src_stats, lambda: abandoned, commit
            )
        except Exception as exc:
            if failures is None:
                raise
            kept.setdefault("source", []).append(exc)
        finally:
            await chan_src.aclose()
            await src_relay_side.aclose()

    async def destination() -> None:
        try:
            receiver = StreamReceiver(destination_store)
            await relay_destination(chan_dst, dst_relay_side, receiver, dst_stats)
            for _ in receiver.keep(chunk_pages=7):  # as the daemon does, after the stream
                await trio.lowlevel.checkpoint()
        except Exception as exc:
            if failures is None:
                raise
            kept.setdefault("destination", []).append(exc)
        finally:
            await chan_dst.aclose()
            await dst_relay_side.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(source_qemu)
            n.start_soon(destination_qemu)
            n.start_soon(middle, chan_mid_a, chan_mid_b, tamper)
            n.start_soon(middle, chan_mid_b, chan_mid_a, False)
            n.start_soon(source)
            n.start_soon(destination)
    return bytes(received), bytes(returned), src_stats, dst_stats


async def test_a_stream_crosses_with_its_return_path() -> None:
    stream, pages = iterations(5, 3)
    received, returned, src, dst = await migrate(stream)
    assert received == stream and returned == SHUT
    assert src.done and dst.done and src.pages == pages
    assert src.stream_bytes == len(stream) == dst.stream_bytes
    assert src.channel_bytes < len(stream)
    # the engine's record counts add up to the pages it was offered
    records = src.records
    assert records["pages"] == pages
    kinds = ("zero", "unchanged", "dup", "delta", "delta_from", "compressed", "raw")
    assert sum(records[k] for k in kinds) == pages


async def test_the_page_engine_encodes_and_decodes_off_the_trio_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every engine call that encodes or decodes pages (milliseconds each in a real
    migration) runs on a worker thread, so the daemon's event loop keeps serving its
    other connections; only calls that cannot (reads too short to fill a batch, small
    frames other than page frames) run inline."""
    trio_thread = threading.get_ident()
    on_trio: list[str] = []
    off_trio: list[str] = []

    def recorded(cls: type, name: str, does_pages: Callable[[Any, Any], bool]) -> None:
        original = getattr(cls, name)

        def call(self: object, *args: Any) -> Any:
            result = original(self, *args)
            if does_pages(args, result):
                (on_trio if threading.get_ident() == trio_thread else off_trio).append(name)
            return result

        monkeypatch.setattr(cls, name, call)

    def framed_pages(args: Any, result: Any) -> bool:
        kinds = {f.kind for f in frames.FrameDecoder().feed(b"".join(result))}
        return bool(kinds & frames.PAGE_FRAMES)

    for name in ("feed", "announce", "flush", "finish"):
        recorded(StreamSender, name, framed_pages)
    recorded(StreamReceiver, "apply", lambda args, _: args[0].kind in frames.PAGE_FRAMES)
    stream, _ = iterations(5, 3)
    received, returned, src, dst = await migrate(stream, src_stats=RelayStats())
    assert received == stream and returned == SHUT and src.done and dst.done
    assert "apply" in off_trio and {"feed", "announce", "flush", "finish"} & set(off_trio)
    assert not on_trio, on_trio


async def test_a_tampered_channel_never_reaches_qemu() -> None:
    stream, _ = iterations(6, 9)
    received = bytearray()
    failures: dict[str, list[BaseException]] = {}
    with trio.move_on_after(20):  # the source QEMU may wait for a SHUT that never comes
        await migrate(stream, tamper=True, received=received, failures=failures)
    # the destination refused the stream (digest or batch checksum) ...
    (refusal,) = failures["destination"]
    assert isinstance(refusal, EngineError | DigestMismatch), refusal
    # ... before any wrong byte reached its QEMU, and the source stopped too (it got the
    # ABORT, or found the channel gone)
    assert len(received) < len(stream) and stream.startswith(bytes(received))
    (stopped,) = failures["source"]
    assert isinstance(stopped, frames.FrameError | trio.BrokenResourceError), stopped


async def test_page_stores_make_the_next_migration_cheap() -> None:
    """The destination keeps what arrived, the source keeps what it sent: the same VM
    migrating again (or back) sends references for what the other side holds."""
    # one pass over memory (as when nothing is dirtied during the copy): what arrives is
    # what the destination keeps; a page rewritten between passes could not be reused
    stream, _ = iterations(1, 21, incompressible=True)
    a_store, b_store = PageStore(10_000), PageStore(10_000)
    received, _, first, _ = await migrate(stream, source_store=a_store, destination_store=b_store)
    assert received == stream and len(a_store) > 0 and len(b_store) > 0
    received, _, again, _ = await migrate(stream, destination_store=b_store)  # A -> B again
    assert received == stream
    received, _, back, _ = await migrate(stream, destination_store=a_store)  # B -> A
    assert received == stream
    assert again.channel_bytes < first.channel_bytes / 3
    assert back.channel_bytes < first.channel_bytes / 3
    # what made them cheap: references to pages the other side holds
    assert first.records["dup"] == 0 < again.records["dup"]
    assert back.records["dup"] > 0


async def test_an_abandoned_migration_is_aborted_not_ended() -> None:
    """When the source gave up (cancel, stall), QEMU's early end of stream is not vouched
    for: the destination gets ABORT, and nothing past the last CHECK."""
    stream, _ = iterations(4, 5)
    received = bytearray()
    failures: dict[str, list[BaseException]] = {}
    with trio.move_on_after(20):
        await migrate(stream, received=received, failures=failures, abandoned="cancel")
    (refusal,) = failures["destination"]
    assert isinstance(refusal, frames.FrameError) and "source aborted: cancel" in str(refusal)
    (gave_up,) = failures["source"]
    assert "abandoned (cancel)" in str(gave_up)
    assert stream.startswith(bytes(received))


DEVICE_STATE = b"\x04\x00\x00\x00\x03\x03cpu"  # the builder's first device section


async def test_the_device_state_waits_for_the_switch_over_commit() -> None:
    """A gated sender holds the device state (and what follows) until the commit ran:
    the destination QEMU has all of the RAM then, and none of the device state."""
    stream, _ = iterations(5, 11)
    gate = stream.rindex(DEVICE_STATE)
    received = bytearray()
    seen_at_commit: list[int] = []

    async def commit() -> None:
        await trio.sleep(0.3)  # the destination has written all it was allowed to
        seen_at_commit.append(len(received))

    got, returned, src, _ = await migrate(stream, received=received, commit=commit)
    assert got == stream and returned == SHUT and src.done
    (seen,) = seen_at_commit
    assert gate - 64 <= seen <= gate, (gate, seen)  # all RAM, no device state


async def test_a_refused_commit_keeps_the_device_state_from_the_destination() -> None:
    stream, _ = iterations(4, 12)
    gate = stream.rindex(DEVICE_STATE)
    received = bytearray()
    failures: dict[str, list[BaseException]] = {}

    async def commit() -> None:
        raise frames.FrameError("switch-over refused: the migration lock was lost")

    with trio.move_on_after(20):
        await migrate(stream, received=received, failures=failures, commit=commit)
    (refused,) = failures["source"]
    assert "lock was lost" in str(refused)
    assert len(received) <= gate and stream.startswith(bytes(received))
    assert "destination" in failures  # it never got END: the migration cannot complete


async def test_the_source_stays_within_a_window_of_the_destination_qemu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """However cheaply pages travel (references), the source reads no more than a
    window ahead of what the destination QEMU took: QEMU's bandwidth estimate is then
    the whole path's, and so is the downtime it plans for."""
    monkeypatch.setattr(relay, "WINDOW", 256 * 1024)
    monkeypatch.setattr(relay, "ACK_EVERY", 32 * 1024)
    monkeypatch.setattr(relay, "READ_SIZE", 128 * 1024)  # scaled down with the window
    stream, _ = iterations(60, 4, incompressible=True)
    assert len(stream) > 4 * 1024 * 1024
    received = bytearray()
    source = RelayStats()
    with trio.move_on_after(3):
        await migrate(stream, received=received, reads_until=300_000, src_stats=source)
    assert 300_000 <= len(received) < 600_000
    # the source read at most the window past what the destination QEMU took, plus
    # one read and the batch it may still hold (16 pages with their headers)
    ahead = source.stream_bytes - len(received)
    assert 0 < ahead < 256 * 1024 + relay.READ_SIZE + 16 * 4200, ahead
    assert source.stream_bytes < len(stream) / 4


async def test_the_destination_queue_holds_a_bounded_number_of_bytes() -> None:
    """Between reading the channel and feeding QEMU: a producer past the limit waits
    until the consumer took enough; a lone chunk over the limit still passes; closing
    ends the consumer after the last chunk."""
    queue = relay._ByteQueue(100)
    got: list[bytes] = []
    await queue.put(memoryview(b"a" * 60))
    with trio.move_on_after(0.05) as waited:
        await queue.put(memoryview(b"b" * 60))  # 120 > 100: waits
    assert waited.cancelled_caught

    async def consume() -> None:
        while (chunk := await queue.get()) is not None:
            got.append(bytes(chunk))
            queue.taken(len(chunk))

    async with trio.open_nursery() as n:
        n.start_soon(consume)
        await queue.put(memoryview(b"b" * 60))
        await queue.put(
            memoryview(b"c" * 250)
        )  # alone over the limit: let in once the queue is empty
        queue.close()
    assert got == [b"a" * 60, b"b" * 60, b"c" * 250]


async def test_a_destination_qemu_that_goes_away_aborts_the_source() -> None:
    stream, _ = iterations(40, 3)
    failures: dict[str, list[BaseException]] = {}
    received = bytearray()
    await migrate(stream, received=received, failures=failures, qemu_dies_after=100_000)
    assert "destination" in failures
    (source_failed,) = failures["source"]
    assert "destination aborted" in str(source_failed), source_failed
    assert len(received) < len(stream)
