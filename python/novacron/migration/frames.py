"""Framing of the daemon-to-daemon migration channel (sans-IO: bytes in, frames out).

Every frame is ``type: u8``, ``length: u32 big-endian``, ``payload``. Types:

* ``VERBATIM`` (1) — bytes of QEMU's stream, as they are;
* ``PAGES`` (2) — ``total_pages: u64``, ``count: u32``, then per page ``prefix_len: u32``,
  the verbatim bytes that precede the page in the stream, ``index: u64``; then one
  page-engine batch holding those pages (``docs/migration-wire.md``);
* ``RETURN`` (3) — bytes of QEMU's return path (destination to source);
* ``END`` (4) — ``length: u64``, ``xxh3-128: 16 bytes`` (big-endian) of the whole
  original stream;
* ``ABORT`` (5) — a UTF-8 reason;
* ``CHECK`` (6) — ``length: u64``, ``xxh3-128: 16 bytes`` of the stream up to the end of
  the frames before it. The receiver writes nothing to QEMU that a ``CHECK`` has not
  vouched for, so a corrupted stream never reaches the destination QEMU;
* ``START`` (7) — ``total_pages: u64``, as soon as the source knows the guest's size;
* ``ANNOUNCE`` (8) — destination to source, once, as soon as the channel is open
  (before or after ``START``): 16-byte hashes of pages it holds in its page store (kept
  from earlier migrations), which the source then sends as references. The source
  sends no ``PAGES`` before it;
* ``ACK`` (9) — destination to source: ``length: u64``, the bytes of the stream written
  to the destination QEMU so far. The source reads no further from its QEMU while it is
  more than a window (32 MiB of stream) ahead of that, so QEMU's bandwidth estimate —
  and with it the switch-over's downtime — reflects the whole path, not how fast the
  source absorbs pages that cost a few bytes on the wire (references);
* ``PACKED_PAGES`` (10) — a ``PAGES`` frame whose per-page entries are zstd-compressed:
  ``total_pages: u64``, ``count: u32``, ``head_len: u32``, ``packed_len: u32``, then
  ``packed_len`` bytes of zstd that unpack to exactly ``head_len`` bytes of entries (as in
  ``PAGES``), then the batch. The source sends it instead of ``PAGES`` when it is smaller.

A stopped VM's volumes travel on a channel of their own, with five more types
(:mod:`~novacron.migration.disk_wire`): ``DISK`` (11), ``EXTENT`` (12), ``HOLE`` (13),
``DISK_END`` (14) from the source, ``COPIED`` (15) from the destination. A running VM's
volumes travel as QEMU's NBD connections, each on a channel of its own: as they are,
or packed in ``NBD_BYTES`` (16) frames (:mod:`~novacron.migration.nbd_packing`).

A frame over ``max_frame`` bytes, an unknown type or a malformed payload is a
:class:`FrameError`; the channel is then closed (the migration fails on this side).
The payloads of ``PAGES``, ``PACKED_PAGES``, ``CHECK``, ``END`` and ``START`` are made and
checked by the Rust halves of the channel (``novacron._core.ChannelSender`` / ``ChannelReceiver``);
this module frames, and splits frames, for the relays.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERBATIM, PAGES, RETURN, END, ABORT, CHECK, START, ANNOUNCE, ACK = 1, 2, 3, 4, 5, 6, 7, 8, 9
PACKED_PAGES = 10
DISK, EXTENT, HOLE, DISK_END, COPIED = 11, 12, 13, 14, 15
NBD_BYTES = 16
TYPES = frozenset(
    {VERBATIM, PAGES, RETURN, END, ABORT, CHECK, START, ANNOUNCE, ACK, PACKED_PAGES}
    | {DISK, EXTENT, HOLE, DISK_END, COPIED, NBD_BYTES}
)
PAGE_FRAMES = frozenset({PAGES, PACKED_PAGES})  # the frames that carry pages
HEADER = struct.Struct(">BI")
_LENGTH = struct.Struct(">Q")
MAX_FRAME = 64 * 1024 * 1024


class FrameError(Exception):
    """Bytes on the migration channel that are not a valid frame (or a frame out of
    place, or the sender's ``ABORT``)."""


class DigestMismatch(Exception):
    """The rebuilt stream differs from the source's: the migration must be aborted."""


@dataclass(frozen=True)
class Frame:
    kind: int
    payload: bytes


def encode(kind: int, payload: bytes) -> bytes:
    if kind not in TYPES:
        raise ValueError(f"unknown frame type {kind}")
    return HEADER.pack(kind, len(payload)) + payload


def encode_abort(reason: str) -> bytes:
    return encode(ABORT, reason.encode()[:500])


def decode_abort(payload: bytes) -> str:
    return payload.decode("utf-8", "replace")[:200]


def encode_ack(length: int) -> bytes:
    return encode(ACK, _LENGTH.pack(length))


def decode_ack(payload: bytes) -> int:
    if len(payload) != _LENGTH.size:
        raise FrameError("ACK frame of the wrong size")
    (length,) = _LENGTH.unpack(payload)
    return int(length)


class FrameDecoder:
    """Accumulates bytes; yields complete frames."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if kind not in TYPES:
                raise FrameError(f"unknown frame type {kind}")
            if length > self._max:
                raise FrameError(f"frame of {length} bytes over the {self._max}-byte limit")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            with memoryview(self._buf) as view:  # one copy, not two
                out.append(Frame(kind, bytes(view[HEADER.size : end])))
            del self._buf[:end]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
