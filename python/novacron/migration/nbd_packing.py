"""QEMU's NBD connections packed on their migration channels (``vm.migrate`` of a
running VM with pool disks, ``disk_compression`` lz4 or zstd).

A packed NBD channel carries, after the token, frames of the migration channel's
framing (``type: u8``, ``length: u32`` big-endian, ``payload``) of one type only, both
ways:

* ``NBD_BYTES`` (16) — ``length: u32`` (big-endian), ``codec: u8``, then the payload:
  the next ``length`` bytes of the NBD connection in that direction (1 to 1 MiB).
  Codec 0: the payload is those bytes; 1: one zstd frame that unpacks to exactly them;
  2: they are all zero, the payload is empty; 3: one LZ4 block (the block format, no
  frame header) that unpacks to exactly them.

Each end packs what it reads from its QEMU with the codec agreed in
``migration.prepare`` (zero runs of whole 64 KiB blocks as codec 2, data as codec 1 or
3 when that saves a sixteenth, else 0) and reads any codec. Anything else — another
frame type, a length of 0 or over 1 MiB, a payload that does not unpack to exactly
``length`` bytes — ends the connection (QEMU's mirror fails, and libvirt's job with it;
the VM stays where it runs).

The unpacked bytes are NBD's, exactly as the other QEMU wrote them: this layer neither
reads nor changes NBD's protocol. :class:`Packer` and :class:`Unpacker` are sans-IO;
:class:`PackedChannel` runs them on a migration channel, their engine work on worker
threads.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import trio

from novacron._core import pack_extent, unpack_piece
from novacron.blocking import Pool
from novacron.errors import EngineError
from novacron.migration import frames
from novacron.migration.disk_wire import LZ4, RAW, ZERO, ZSTD
from novacron.migration.frames import FrameError

CODECS = {"zstd": ZSTD, "lz4": LZ4}  # disk_compression's names of what packs
MAX_PIECE = 1024 * 1024
SMALL = 2048  # fewer bytes than this go raw, without a worker thread's round trip
_HEAD = struct.Struct(">IB")
# the largest payload a piece may have: LZ4's worst case for MAX_PIECE bytes
MAX_FRAME = _HEAD.size + MAX_PIECE + MAX_PIECE // 255 + 16
READ_SIZE = 256 * 1024


def agreed(asked: object) -> str:
    """The destination's side of the agreement: the source's ``disk_compression``
    (from its ``migration.prepare`` options) when this daemon packs it, else ``none``
    (a source of an earlier release asks for nothing, and relays NBD as it is)."""
    return asked if isinstance(asked, str) and asked in CODECS else "none"


def of_answer(part: Mapping[str, Any]) -> str:
    """The source's side: the packing the destination's answer (its ``nbd`` part)
    names; ``none`` when it names none (a destination of an earlier release)."""
    packing = part.get("packing", "none")
    if packing != "none" and packing not in CODECS:
        raise ValueError(f"the destination packs NBD as {packing!r}, which this node does not")
    return str(packing)


def _frame(length: int, codec: int, payload: bytes) -> bytes:
    return frames.encode(frames.NBD_BYTES, _HEAD.pack(length, codec) + payload)


class Packer:
    """NBD bytes to ``NBD_BYTES`` frames, with one packing codec (:data:`CODECS`)."""

    def __init__(self, codec: int) -> None:
        if codec not in (RAW, ZSTD, LZ4):
            raise ValueError(f"codec {codec} does not pack")
        self.codec = codec

    def pack(self, data: bytes | bytearray | memoryview) -> bytes:
        """The frames of ``data`` (any length; blocking, engine work: call it on a
        worker thread unless ``data`` is short)."""
        view = memoryview(data)
        out = []
        for start in range(0, len(view), MAX_PIECE):
            part = view[start : start + MAX_PIECE]
            if len(part) < SMALL:
                out.append(_frame(len(part), RAW, bytes(part)))
                continue
            for _, length, codec, payload in pack_extent(part, self.codec):
                out.append(_frame(length, codec, payload))
        return b"".join(out)


class Unpacker:
    """``NBD_BYTES`` frames to NBD bytes: :meth:`feed` takes what the channel gave and
    returns the pieces it completed; :meth:`unpack` turns them into bytes (blocking for
    packed ones: call it on a worker thread)."""

    def __init__(self) -> None:
        self._decoder = frames.FrameDecoder(MAX_FRAME)

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    def feed(self, data: bytes | bytearray) -> list[tuple[int, int, memoryview]]:
        """Complete pieces as ``(codec, length, payload)``, checked but not unpacked."""
        pieces = []
        for frame in self._decoder.feed(data):
            if frame.kind != frames.NBD_BYTES:
                raise FrameError(f"frame type {frame.kind} on a packed NBD channel")
            if len(frame.payload) < _HEAD.size:
                raise FrameError("an NBD_BYTES frame too short")
            length, codec = _HEAD.unpack_from(frame.payload)
            if not 0 < length <= MAX_PIECE:
                raise FrameError(f"an NBD_BYTES frame of {length} bytes")
            if codec not in (RAW, ZSTD, ZERO, LZ4):
                raise FrameError(f"an NBD_BYTES frame of codec {codec}")
            pieces.append((codec, length, memoryview(frame.payload)[_HEAD.size :]))
        return pieces

    @staticmethod
    def unpack(pieces: list[tuple[int, int, memoryview]]) -> bytes:
        out = []
        for codec, length, payload in pieces:
            try:
                out.append(unpack_piece(codec, payload, length))
            except EngineError as exc:
                raise FrameError(f"an NBD_BYTES frame does not unpack: {exc}") from None
        return b"".join(out)


def _packed(pieces: list[tuple[int, int, memoryview]]) -> bool:
    return any(codec in (ZSTD, LZ4) for codec, _, _ in pieces)


class PackedChannel(trio.abc.Stream):
    """A migration channel that packs what is sent and unpacks what is received, for
    :func:`~novacron.migration.nbd_relay.pump`. ``on_sent`` / ``on_received`` are told
    the channel bytes of each send and receive. A malformed frame is a
    :class:`FrameError` from :meth:`receive_some`.

    Memory stays bounded whatever the other end sends: each :meth:`receive_some`
    unpacks pieces only up to what it returns (a piece is at most 1 MiB), however many
    the channel's bytes held (zero pieces of 10 bytes each stand for 1 MiB)."""

    def __init__(
        self,
        channel: trio.abc.Stream,
        codec: int,
        engine: Pool,
        on_sent: Callable[[int], None] = lambda n: None,
        on_received: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.channel = channel
        self._packer = Packer(codec)
        self._unpacker = Unpacker()
        self._engine = engine
        self._on_sent, self._on_received = on_sent, on_received
        self._pieces: deque[tuple[int, int, memoryview]] = deque()  # checked, not unpacked
        self._pending = b""  # unpacked, not yet taken

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) < SMALL:
            out = self._packer.pack(data)
        else:
            out = await self._engine.run(self._packer.pack, data)
        await self.channel.send_all(out)
        self._on_sent(len(out))

    async def wait_send_all_might_not_block(self) -> None:
        await self.channel.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = max_bytes or READ_SIZE
        if not self._pending:
            while not self._pieces:
                data = await self.channel.receive_some(READ_SIZE)
                if not data:
                    if self._unpacker.buffered:
                        raise FrameError("the packed NBD channel ended inside a frame")
                    return b""
                self._on_received(len(data))
                self._pieces.extend(self._unpacker.feed(data))
            taken, length = [], 0
            while self._pieces and length < limit:  # (at least one piece)
                taken.append(self._pieces.popleft())
                length += taken[-1][1]
            if _packed(taken):
                self._pending = await self._engine.run(Unpacker.unpack, taken)
            else:
                self._pending = Unpacker.unpack(taken)
        out, self._pending = self._pending[:limit], self._pending[limit:]
        return out

    async def aclose(self) -> None:
        await self.channel.aclose()
