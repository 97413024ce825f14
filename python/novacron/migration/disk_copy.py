"""A stopped VM's volumes copied to the destination before its definition moves
(``vm.migrate`` of a stopped VM with disks in its node's pool).

The destination's ``migration.prepare`` makes an empty volume in its own pool for each
such disk (at the path its daemon gives that VM's disk), and answers with a token and
its migration channel's port. The source opens a migration channel (mutual TLS, the
token first; :mod:`~novacron.migration.channel`) and sends each volume's file as
libvirt reads it, sparse: holes and runs of zero blocks travel as lengths, the rest in
pieces of up to a MiB, zstd-1 packed when that makes them smaller
(:mod:`~novacron.migration.disk_wire`). The destination writes each volume through
libvirt as it arrives, checks its length and digest, and confirms it (``COPIED``).
Only when every volume is confirmed does the definition move (with the disks at the
destination's paths); the source deletes its volumes once the destination has
recorded the VM.

Every read and write of a volume, and the unpacking, runs on a worker thread of the
hypervisor pool, one call per piece.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.migration import disk_wire, frames
from novacron.migration.disk_wire import DiskReceiver, DiskSender
from novacron.migration.relay import single_errors
from novacron.vm.service import VmService
from novacron.vm.volume_stream import VolumeReader, VolumeWriter

log = logging.getLogger("novacron.migration")

CHANNEL_WAIT_S = 60.0  # destination: from prepare to the source's channel
IDLE_S = 120.0  # either side: the longest wait for the other's next bytes
RECEIVE_SIZE = 1024 * 1024
REPORT_EVERY_S = 1.0
# the most a volume's file may hold beyond its disk's size (a qcow2 image's tables)
SLACK_BYTES = 64 * 1024 * 1024


def limit_of(size_gib: int) -> int:
    """The most bytes the file of a ``size_gib`` disk may have on the wire."""
    size = size_gib << 30
    return size + size // 8 + SLACK_BYTES


@dataclass
class CopyStats:
    disks: int = 0  # volumes the destination confirmed
    logical: int = 0  # bytes of the volumes' files, holes included
    zero: int = 0  # of them, holes and zero blocks (no bytes on the wire)
    wire: int = 0  # frame bytes sent
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "disks": self.disks,
            "bytes": self.logical,
            "zero_bytes": self.zero,
            "bytes_wire": self.wire,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Incoming:
    """The destination's side of one copy: where each volume goes, and the channel the
    source opens (delivered by the migration service)."""

    token: bytes
    paths: list[str]
    limits: list[int]
    stats: CopyStats = field(default_factory=CopyStats)

    def __post_init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[trio.SSLStream[trio.SocketStream]](1)


def _failed(what: str, exc: BaseException) -> errors.MigrationFailed:
    if isinstance(exc, errors.NovaCronError):
        return errors.MigrationFailed(f"{what}: {exc.message}", {"cause": exc.code})
    return errors.MigrationFailed(f"{what}: {exc}")


COPY_ERRORS = (
    errors.NovaCronError,
    frames.FrameError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    OSError,
)


# -- the source ----------------------------------------------------------------------


def _next_frames(reader: VolumeReader, sender: DiskSender) -> bytes | None:
    """The frames of the volume's next data or hole; None at its end."""
    got = reader.read()
    if isinstance(got, int):
        return sender.hole(got)
    if not got:
        return None
    return sender.data(got)


async def send(
    vms: VmService,
    channel: trio.abc.Stream,
    paths: list[str],
    stats: CopyStats,
    report: Callable[[CopyStats], None],
) -> None:
    """Sends each volume at ``paths``, in order; returns once the destination confirmed
    them all. Any failure is a ``migration_failed`` (and the destination is told)."""
    began = trio.current_time()
    sender = DiskSender()
    confirmed = trio.Event()

    async def confirmations() -> None:
        decoder = frames.FrameDecoder(max_frame=64 * 1024)
        while stats.disks < len(paths):
            data = await channel.receive_some(64 * 1024)
            if not data:
                raise frames.FrameError("the destination closed the storage copy")
            for frame in decoder.feed(bytes(data)):
                if frame.kind == frames.ABORT:
                    why = frames.decode_abort(frame.payload)
                    raise frames.FrameError(f"the destination aborted: {why}")
                if frame.kind != frames.COPIED:
                    raise frames.FrameError(f"unexpected frame type {frame.kind}")
                index, _ = disk_wire.decode_copied(frame.payload)
                if index != stats.disks:
                    raise frames.FrameError(f"volume {index} confirmed out of order")
                stats.disks += 1
                report(stats)
        confirmed.set()

    async def volumes() -> None:
        last = trio.current_time()
        for index, path in enumerate(paths):
            reader = await vms.hv_pool.run(vms.hv.volume_reader, path)
            complete = False
            try:
                await channel.send_all(sender.begin(index))
                while (out := await vms.hv_pool.run(_next_frames, reader, sender)) is not None:
                    if out:
                        await channel.send_all(out)
                    stats.logical, stats.zero, stats.wire = sender.logical, sender.zero, sender.wire
                    if trio.current_time() - last >= REPORT_EVERY_S:
                        last = trio.current_time()
                        report(stats)
                complete = True
            finally:
                with trio.CancelScope(shield=True):
                    await vms.hv_pool.run(reader.close, complete)
            await channel.send_all(sender.end())
            stats.wire = sender.wire

    try:
        with single_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(confirmations)
                await volumes()
                with trio.fail_after(IDLE_S):  # the last volume's confirmation
                    await confirmed.wait()
    except COPY_ERRORS as exc:
        await _tell_abort(channel, exc)
        raise _failed("the storage copy failed", exc) from None
    finally:
        stats.seconds = trio.current_time() - began
    log.info("migration.volumes_sent", extra=kv(**stats.to_dict()))


async def _tell_abort(channel: trio.abc.Stream, exc: BaseException) -> None:
    """Best effort: the other side learns why (the channel may be broken already)."""
    with trio.move_on_after(2):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await channel.send_all(frames.encode_abort(str(exc)))


# -- the destination -----------------------------------------------------------------


@dataclass
class _Writing:
    """The destination's volume being written (used by one worker thread at a time)."""

    vms: VmService
    inc: Incoming
    receiver: DiskReceiver
    writer: VolumeWriter | None = None

    def apply(self, frame: frames.Frame) -> tuple[int, int] | None:
        """One frame of the source's: checked and written. The volume's index and
        length when it is now written whole."""
        action = self.receiver.feed(frame)
        if isinstance(action, disk_wire.Begin):
            self.writer = self.vms.hv.volume_writer(self.inc.paths[action.index])
            return None
        assert self.writer is not None  # (the receiver allows nothing else outside a volume)
        if isinstance(action, disk_wire.Data):
            self.writer.write(action.data)
        elif isinstance(action, disk_wire.Hole):
            self.writer.skip(action.length)
        else:
            writer, self.writer = self.writer, None
            writer.close(True)
            return action.index, action.length
        return None

    def abandon(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close(False)


async def receive(vms: VmService, inc: Incoming) -> None:
    """Waits for the source's channel and writes every volume it sends; returns once all
    are written and confirmed. Failures raise ``migration_failed``; the caller deletes
    the volumes."""
    began = trio.current_time()
    try:
        with trio.fail_after(CHANNEL_WAIT_S):
            channel = await inc.recv.receive()
    except trio.TooSlowError:
        raise errors.MigrationFailed(
            f"the source did not open the storage copy within {CHANNEL_WAIT_S:g} s"
        ) from None
    writing = _Writing(vms, inc, DiskReceiver(inc.limits))
    try:
        async with channel:
            try:
                await _receive(vms, channel, writing)
            except COPY_ERRORS as exc:
                await _tell_abort(channel, exc)
                raise _failed("the storage copy failed", exc) from None
            finally:
                with trio.CancelScope(shield=True):
                    await vms.hv_pool.run(writing.abandon)
    finally:
        inc.stats.seconds = trio.current_time() - began
        inc.stats.logical = writing.receiver.bytes
    await vms.refresh_pool()
    log.info("migration.volumes_received", extra=kv(**inc.stats.to_dict()))


async def _receive(vms: VmService, channel: trio.abc.Stream, writing: _Writing) -> None:
    decoder = frames.FrameDecoder()
    while not writing.receiver.done:
        with trio.fail_after(IDLE_S):
            data = await channel.receive_some(RECEIVE_SIZE)
        if not data:
            raise frames.FrameError("the source closed the storage copy before its end")
        writing.inc.stats.wire += len(data)
        for frame in decoder.feed(bytes(data)):
            finished = await vms.hv_pool.run(writing.apply, frame)
            if finished is not None:
                writing.inc.stats.disks += 1
                await channel.send_all(disk_wire.encode_copied(*finished))
    if decoder.buffered:
        raise frames.FrameError("bytes after the last volume")
