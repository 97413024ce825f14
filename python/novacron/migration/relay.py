"""The two relay loops of a migration's data path, on trio streams.

Source side: QEMU connects to the source daemon (``migrateuri`` points at a loopback
port the daemon listens on); :func:`relay_source` reads QEMU's stream, turns it into
frames (:class:`~novacron.migration.stream.StreamSender`) and writes them to the
channel (mutual TLS to the destination daemon), while passing ``RETURN`` frames back to
QEMU (its return path: PONG and SHUT). Destination side: :func:`relay_destination`
rebuilds the stream for the destination QEMU and sends QEMU's replies back as
``RETURN`` frames.

The destination writes only bytes a ``CHECK`` frame vouched for (length and xxh3-128
of the stream so far): a corrupted stream is refused before the destination QEMU sees
it, the destination QEMU then fails to load, and the VM stays on the source.

The page engine's calls that may encode or decode a batch of pages (milliseconds each)
run on worker threads of an ``engine`` :class:`~novacron.blocking.Pool`, not on the
trio thread, so the daemon's other connections and tasks are not held up by a
migration; the engine releases the GIL for its work. Calls that cannot (a read of
QEMU's stream too short to fill the open batch: splitting and copying it; a frame
other than page frames under 256 KiB) run inline, as a thread hand-off would cost more
than they do. Each end's engine object is used by one thread at a time: on the
source every use is under the channel's lock (the reading of ``at_gate`` and of the
final counts too), on the destination one task makes them all.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import trio

from novacron.blocking import Pool
from novacron.logs import kv
from novacron.migration import frames
from novacron.migration.stream import StreamReceiver, StreamSender

log = logging.getLogger("novacron.migration")

READ_SIZE = 1024 * 1024
IDLE_FLUSH_S = 0.005
WINDOW = 32 * 1024 * 1024  # stream bytes the source may be ahead of the destination QEMU
ACK_EVERY = 1024 * 1024  # the destination acknowledges this much stream at a time
QUEUE_LIMIT = 2 * WINDOW  # destination: vouched stream waiting for QEMU, at most
ENGINE_THREADS = 2  # a relay's engine calls at once when the caller gives no pool
INLINE_FRAME = 256 * 1024  # destination: smaller frames other than page frames apply inline


def engine_pool() -> Pool:
    """A pool for one relay's engine calls (the daemon shares one among its migrations)."""
    return Pool("migration-engine", ENGINE_THREADS)


@dataclass
class RelayStats:
    stream_bytes: int = 0
    channel_bytes: int = 0
    returned_bytes: int = 0
    pages: int = 0
    zero_pages: int = 0
    done: bool = False
    error: str | None = None
    passthrough: str | None = field(default=None)
    # the page engine's record counts (zero, unchanged, dup, delta, compressed, raw)
    records: dict[str, int] = field(default_factory=dict)
    # where the relay's time went, in seconds: waiting for its input (QEMU's stream or
    # the channel), working (the engine), sending (to the channel or QEMU), waiting
    # for the destination to catch up (the window)
    stages: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("input", "work", "output", "window"), 0.0)
    )

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage] += time.perf_counter() - began

    def stage_summary(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.stages.items()}


@contextlib.contextmanager
def single_errors() -> Iterator[None]:
    """A relay fails with one cause, not a group (its tasks are internal): the first
    failure; the other task usually failed because of it (same broken link)."""
    try:
        yield
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


class Channel:
    """The channel stream with one writer at a time: frames are produced and sent under
    one lock, so two tasks never interleave or reorder them (nor use the engine object
    that produces them at once)."""

    def __init__(self, stream: trio.abc.Stream, stats: RelayStats, engine: Pool) -> None:
        self.stream = stream
        self.stats = stats
        self.engine = engine
        self.lock = trio.Lock()
        self.sent = 0

    async def send(
        self, produce: Callable[[], list[bytes]], offload: Callable[[], bool] = lambda: True
    ) -> int:
        """Frames from ``produce``, sent. It runs on a worker thread (engine work)
        unless ``offload``, asked under the lock, says it is cheap."""
        async with self.lock:
            with self.stats.timed("work"):
                if offload():
                    data = await self.engine.run(produce)
                else:
                    data = produce()
            return await self._send(data)

    async def send_frames(self, ready: list[bytes]) -> int:
        async with self.lock:
            return await self._send(ready)

    async def _send(self, data: list[bytes]) -> int:
        if not data:
            return 0
        blob = b"".join(data)  # (one buffer: that very object, no copy)
        with self.stats.timed("output"):
            await self.stream.send_all(blob)
        self.sent += len(blob)
        return len(blob)


async def relay_source(
    qemu: trio.abc.Stream,
    channel: trio.abc.Stream,
    sender: StreamSender,
    stats: RelayStats,
    abandoned: Callable[[], str | None] = lambda: None,
    commit: Callable[[], Awaitable[None]] | None = None,
    engine: Pool | None = None,
) -> None:
    """QEMU's stream to the channel; ``RETURN`` frames back to QEMU. Returns when the
    destination acknowledged the end (closed its side after ``END``).

    ``abandoned`` says why the migration was given up, if it was (cancel, stall): the
    source QEMU then closes its stream early, and the destination gets ``ABORT``
    instead of ``END`` for it. ``commit`` (with a sender made ``gated``): awaited when
    the stream reaches the gate (the device state), before any of it goes; an error
    from it fails the relay, and the destination never completes. ``engine``: the
    threads the page engine runs on (:func:`engine_pool` when not given)."""

    out = Channel(channel, stats, engine or engine_pool())
    ended = False
    committed = commit is None
    at_gate = False
    acked = 0
    ack_arrived = trio.Event()

    def feed(data: bytes) -> list[bytes]:
        nonlocal at_gate
        ready = sender.feed(data)
        at_gate = sender.at_gate  # read here: under the channel's lock, on this thread
        return ready

    def finish() -> list[bytes]:
        ready = sender.finish()
        split = sender.split_stats
        stats.pages, stats.zero_pages = split["pages"], split["zero_pages"]
        stats.passthrough = sender.passthrough_reason
        stats.records = sender.engine_stats
        return ready

    async def switch_over() -> None:
        nonlocal committed
        assert commit is not None
        await out.send(sender.flush)  # every page before the gate is there already
        await commit()
        committed = True
        await out.send(sender.open_gate)

    async def forward() -> None:
        nonlocal ended, ack_arrived
        while True:
            with stats.timed("window"):
                while stats.stream_bytes - acked > WINDOW:  # the destination catches up
                    await ack_arrived.wait()
                    ack_arrived = trio.Event()
            data: bytes | bytearray = b""
            with stats.timed("input"), trio.move_on_after(IDLE_FLUSH_S) as idle:
                data = await qemu.receive_some(READ_SIZE)
            if not idle.cancelled_caught and not data:
                break
            if idle.cancelled_caught:
                await out.send(sender.flush)
                with stats.timed("input"):
                    data = await qemu.receive_some(READ_SIZE)
                if not data:
                    break
            stats.stream_bytes += len(data)
            await out.send(partial(feed, bytes(data)), partial(sender.may_encode, len(data)))
            stats.channel_bytes = out.sent
            if not committed and at_gate:
                await switch_over()
        why = abandoned()
        if why is not None:
            await out.send_frames([frames.encode_abort(why)])
            raise frames.FrameError(f"the migration was abandoned ({why})")
        if not committed:  # a stream that never reached the gate: its end waits instead
            await switch_over()
        await out.send(finish)
        ended = True
        stats.channel_bytes = out.sent  # both tasks send: count in one place

    async def back() -> None:
        nonlocal acked
        decoder = frames.FrameDecoder()
        while True:
            try:
                data = await channel.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if ended:  # the destination hung up after the whole stream: done
                    return
                raise
            if not data:
                return
            for frame in decoder.feed(bytes(data)):
                if frame.kind == frames.RETURN:
                    stats.returned_bytes += len(frame.payload)
                    await qemu.send_all(frame.payload)
                elif frame.kind == frames.ACK:
                    acked = max(acked, frames.decode_ack(frame.payload))
                    ack_arrived.set()
                elif frame.kind == frames.ANNOUNCE:
                    await out.send(partial(sender.announce, frame.payload))
                elif frame.kind == frames.ABORT:
                    raise frames.FrameError(
                        f"destination aborted: {frames.decode_abort(frame.payload)}"
                    )
                else:
                    raise frames.FrameError(
                        f"unexpected frame type {frame.kind} from the destination"
                    )

    with single_errors():
        async with trio.open_nursery() as n:
            n.start_soon(back)
            await forward()
    stats.done = True


async def announce(channel: trio.abc.Stream, receiver: StreamReceiver) -> None:
    """Sends the destination's ``ANNOUNCE`` (its page store's hashes) if it has not gone
    yet: as soon as the channel is open, so it crosses the link while the destination
    QEMU is still starting, and the source's first pages can already be references."""
    replies = receiver.take_replies()
    if replies:
        await channel.send_all(b"".join(replies))


async def relay_destination(
    channel: trio.abc.Stream,
    qemu: trio.abc.Stream,
    receiver: StreamReceiver,
    stats: RelayStats,
    engine: Pool | None = None,
) -> None:
    """Frames from the channel to the destination QEMU (only bytes a ``CHECK`` vouched
    for), QEMU's replies back as ``RETURN``. On a bad stream: ``ABORT`` to the source,
    then the error is raised; the destination QEMU never saw the bad bytes.

    Reading the channel and feeding QEMU are separate tasks joined by a queue bounded in
    bytes (the source's window bounds it already; ``QUEUE_LIMIT`` guards against a
    source that ignores it): while QEMU takes a burst, the link keeps flowing. The
    reading task alone uses ``receiver``, its calls on ``engine``'s threads."""

    engine = engine or engine_pool()
    out = Channel(channel, stats, engine)
    queue = _ByteQueue(QUEUE_LIMIT)
    await announce(channel, receiver)  # if the caller did not already

    async def back() -> None:
        while data := await qemu.receive_some(READ_SIZE):
            stats.returned_bytes += len(data)
            await out.send_frames([frames.encode(frames.RETURN, bytes(data))])

    async def refuse(exc: Exception) -> None:
        """The stream cannot go on here: ``ABORT`` to the source (best effort)."""
        stats.error = str(exc)
        log.error("migration.stream_rejected", extra=kv(error=str(exc)))
        with (
            trio.move_on_after(5),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await out.send_frames([frames.encode_abort(str(exc))])

    decoder = frames.FrameDecoder()
    with single_errors():
        async with trio.open_nursery() as n:
            n.start_soon(back)
            fed = trio.Event()

            async def feed() -> None:
                """The vouched stream to QEMU, with an ``ACK`` every ``ACK_EVERY``."""
                acked = 0
                try:
                    while (rebuilt := await queue.get()) is not None:
                        with stats.timed("output"):
                            await qemu.send_all(rebuilt)
                        queue.taken(len(rebuilt))
                        stats.stream_bytes += len(rebuilt)
                        if stats.stream_bytes - acked >= ACK_EVERY:
                            acked = stats.stream_bytes
                            await out.send_frames([frames.encode_ack(acked)])
                except Exception as exc:  # the destination QEMU went away
                    await refuse(exc)
                    raise
                finally:
                    fed.set()

            n.start_soon(feed)
            try:
                while not receiver.ended:
                    with stats.timed("input"):
                        data = await channel.receive_some(READ_SIZE)
                    if not data:
                        raise frames.FrameError("the source closed the channel before END")
                    stats.channel_bytes += len(data)
                    with stats.timed("work"):
                        received = decoder.feed(bytes(data))
                    for frame in received:
                        with stats.timed("work"):
                            big = len(frame.payload) >= INLINE_FRAME
                            if frame.kind in frames.PAGE_FRAMES or big:
                                rebuilt = await engine.run(receiver.apply, frame)
                            else:
                                rebuilt = receiver.apply(frame)
                        if rebuilt:
                            with stats.timed("window"):
                                await queue.put(rebuilt)
            except Exception as exc:
                await refuse(exc)
                raise
            queue.close()
            await fed.wait()  # every vouched byte handed to QEMU
            # the stream is complete; QEMU's last replies (SHUT) may still come: wait for
            # it to close its side, within reason
            n.cancel_scope.deadline = trio.current_time() + 30
    stats.done = True


class _ByteQueue:
    """Chunks from one producer task to one consumer task, at most ``limit`` bytes
    waiting (one chunk over the limit is let in alone, so any chunk gets through)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[memoryview] = deque()
        self._queued = 0
        self._closed = False
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def put(self, chunk: memoryview) -> None:
        while self._queued and self._queued + len(chunk) > self._limit:
            await self._changed.wait()
        self._chunks.append(chunk)
        self._queued += len(chunk)
        self._notify()

    def close(self) -> None:
        self._closed = True
        self._notify()

    async def get(self) -> memoryview | None:
        """The next chunk, or None once closed and empty. The chunk's bytes count as
        waiting until :meth:`taken`."""
        while not self._chunks:
            if self._closed:
                return None
            await self._changed.wait()
        return self._chunks.popleft()

    def taken(self, size: int) -> None:
        self._queued -= size
        self._notify()
