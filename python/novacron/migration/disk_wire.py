"""The storage copy's frames (sans-IO): a stopped VM's volumes, one after another, from
the source daemon to the destination daemon on a migration channel of their own.

Frames are the migration channel's (``type: u8``, ``length: u32`` big-endian,
``payload``; :mod:`~novacron.migration.frames`); integers are big-endian. From the
source, for each volume in the order the destination's ``migration.prepare`` listed
them:

* ``DISK`` (11) — ``index: u32``: the volume that starts now (0, 1, 2, ... in order);
* ``EXTENT`` (12) — ``offset: u64``, ``length: u32``, ``codec: u8``, then the bytes:
  codec 0 the ``length`` bytes as they are, codec 1 a zstd frame that unpacks to
  exactly ``length`` bytes (at most 16 MiB);
* ``HOLE`` (13) — ``offset: u64``, ``length: u64``: that many zero bytes (a hole in the
  source's file, or a run of zero blocks);
* ``DISK_END`` (14) — ``length: u64``, then the xxh3-128 (16 bytes) of the bytes of
  every ``EXTENT`` of the volume, unpacked, in order.

Each ``EXTENT`` and ``HOLE`` starts where the one before it ended (the first at 0) and
has a length over 0; ``DISK_END``'s length is where the last one ended. The bytes are
the volume's file as the source's libvirt reads it (a qcow2 image's own bytes, not the
disk the guest sees). From the destination: ``COPIED`` (15) — ``index: u32``,
``length: u64`` — once that volume is written whole; either side may send ``ABORT``
(5, a UTF-8 reason) and close. Anything else, out of order, or over the volume's limit
is a :class:`~novacron.migration.frames.FrameError`, and the copy fails.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from novacron._core import StreamDigest, pack_extent, unpack_piece
from novacron.errors import EngineError
from novacron.migration import frames
from novacron.migration.frames import Frame, FrameError

# pack_extent's codecs (here ZERO travels as a HOLE frame; LZ4 packs NBD connections only)
RAW, ZSTD, ZERO, LZ4 = 0, 1, 2, 3
MAX_EXTENT = 16 * 1024 * 1024
_INDEX = struct.Struct(">I")
_EXTENT = struct.Struct(">QIB")
_HOLE = struct.Struct(">QQ")
_END = struct.Struct(">Q16s")
_COPIED = struct.Struct(">IQ")


class DiskSender:
    """Frames of volumes, one at a time: :meth:`begin`, then :meth:`data` and
    :meth:`hole` for the volume's bytes in order, then :meth:`end`."""

    def __init__(self) -> None:
        self.index = -1
        self.offset = 0  # in the current volume
        self.logical = 0  # bytes of every volume so far, holes included
        self.zero = 0  # of them, holes and zero blocks
        self.wire = 0  # frame bytes made
        self._digest = StreamDigest()

    def _frame(self, kind: int, payload: bytes) -> bytes:
        out = frames.encode(kind, payload)
        self.wire += len(out)
        return out

    def begin(self, index: int) -> bytes:
        self.index, self.offset, self._digest = index, 0, StreamDigest()
        return self._frame(frames.DISK, _INDEX.pack(index))

    def data(self, chunk: bytes) -> bytes:
        """``chunk`` (at most 16 MiB), the next bytes of the volume: zero blocks become
        holes, the rest is packed when that pays."""
        if len(chunk) > MAX_EXTENT:
            raise ValueError(f"a chunk of {len(chunk)} bytes is over {MAX_EXTENT}")
        out = []
        view = memoryview(chunk)
        for at, length, codec, payload in pack_extent(chunk):
            offset = self.offset + at
            if codec == ZERO:
                out.append(self._frame(frames.HOLE, _HOLE.pack(offset, length)))
                self.zero += length
            else:
                head = _EXTENT.pack(offset, length, codec)
                out.append(self._frame(frames.EXTENT, head + payload))
                self._digest.update(view[at : at + length])
        self.offset += len(chunk)
        self.logical += len(chunk)
        return b"".join(out)

    def hole(self, length: int) -> bytes:
        if length <= 0:
            return b""
        out = self._frame(frames.HOLE, _HOLE.pack(self.offset, length))
        self.offset += length
        self.logical += length
        self.zero += length
        return out

    def end(self) -> bytes:
        return self._frame(frames.DISK_END, _END.pack(self.offset, self._digest.digest()))


@dataclass(frozen=True)
class Begin:
    index: int


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class Hole:
    length: int


@dataclass(frozen=True)
class Finished:
    index: int
    length: int


Action = Begin | Data | Hole | Finished


class DiskReceiver:
    """Checks the source's frames and turns each into what to do with the volume being
    written. ``limits``: the most bytes each volume may have, in order."""

    def __init__(self, limits: list[int]) -> None:
        self.limits = limits
        self.index = -1
        self.offset = 0
        self.open = False
        self.bytes = 0  # volume bytes received (holes included)
        self._digest = StreamDigest()

    @property
    def done(self) -> bool:
        return not self.open and self.index == len(self.limits) - 1

    def _advance(self, offset: int, length: int) -> None:
        if not self.open:
            raise FrameError("volume bytes outside a volume")
        if offset != self.offset:
            raise FrameError(f"volume {self.index}: bytes at {offset}, expected {self.offset}")
        if length <= 0:
            raise FrameError(f"volume {self.index}: an empty piece at {offset}")
        if offset + length > self.limits[self.index]:
            raise FrameError(
                f"volume {self.index} is over its limit of {self.limits[self.index]} bytes"
            )
        self.offset += length
        self.bytes += length

    def feed(self, frame: Frame) -> Action:
        kind, payload = frame.kind, frame.payload
        if kind == frames.ABORT:
            raise FrameError(f"the source aborted: {frames.decode_abort(payload)}")
        if kind == frames.DISK:
            if self.open or len(payload) != _INDEX.size:
                raise FrameError("a DISK frame out of place or malformed")
            (index,) = _INDEX.unpack(payload)
            if index != self.index + 1 or index >= len(self.limits):
                raise FrameError(f"volume {index} out of order (expected {self.index + 1})")
            self.index, self.offset, self.open = index, 0, True
            self._digest = StreamDigest()
            return Begin(index)
        if kind == frames.EXTENT:
            if len(payload) < _EXTENT.size:
                raise FrameError("an EXTENT frame too short")
            offset, length, codec = _EXTENT.unpack_from(payload)
            if codec not in (RAW, ZSTD) or length > MAX_EXTENT:
                raise FrameError(f"an EXTENT of codec {codec} and {length} bytes")
            self._advance(offset, length)
            try:
                data = unpack_piece(codec, memoryview(payload)[_EXTENT.size :], length)
            except EngineError as exc:
                raise FrameError(f"volume {self.index}: {exc}") from None
            self._digest.update(data)
            return Data(data)
        if kind == frames.HOLE:
            if len(payload) != _HOLE.size:
                raise FrameError("a HOLE frame of the wrong size")
            offset, length = _HOLE.unpack(payload)
            self._advance(offset, length)
            return Hole(length)
        if kind == frames.DISK_END:
            if not self.open or len(payload) != _END.size:
                raise FrameError("a DISK_END frame out of place or malformed")
            length, digest = _END.unpack(payload)
            if length != self.offset:
                raise FrameError(
                    f"volume {self.index} ends at {length} bytes, but {self.offset} arrived"
                )
            if digest != self._digest.digest():
                raise FrameError(f"volume {self.index} arrived corrupted (digest mismatch)")
            self.open = False
            return Finished(self.index, length)
        raise FrameError(f"unexpected frame type {kind} in a storage copy")


def encode_copied(index: int, length: int) -> bytes:
    return frames.encode(frames.COPIED, _COPIED.pack(index, length))


def decode_copied(payload: bytes) -> tuple[int, int]:
    if len(payload) != _COPIED.size:
        raise FrameError("a COPIED frame of the wrong size")
    index, length = _COPIED.unpack(payload)
    return int(index), int(length)
