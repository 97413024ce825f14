"""Framing of the daemon-to-daemon migration channel (sans-IO: bytes in, frames out).

Every frame is ``type: u8``, ``length: u32 big-endian``, ``payload``. Types:

* ``VERBATIM`` (1) — bytes of QEMU's stream, as they are;
* ``PAGES`` (2) — ``total_pages: u64``, ``count: u32``, then per page ``prefix_len: u32``,
  the verbatim bytes that precede the page in the stream, ``index: u64``; then one
  page-engine batch holding those pages (``docs/migration-wire.md``);
* ``RETURN`` (3) — bytes of QEMU's return path (destination to source);
* ``END`` (4) — ``length: u64``, ``sha256: 32 bytes`` of the whole original stream;
* ``ABORT`` (5) — a UTF-8 reason;
* ``CHECK`` (6) — ``length: u64``, ``sha256: 32 bytes`` of the stream up to the end of
  the frames before it. The receiver writes nothing to QEMU that a ``CHECK`` has not
  vouched for, so a corrupted stream never reaches the destination QEMU;
* ``START`` (7) — ``total_pages: u64``, as soon as the source knows the guest's size;
* ``ANNOUNCE`` (8) — the destination's answer to ``START``: 16-byte hashes of pages it
  holds in its page store (kept from earlier migrations), which the source then sends
  as references. The source sends no ``PAGES`` before it.

A frame over ``max_frame`` bytes, an unknown type or a malformed payload is a
:class:`FrameError`; the channel is then closed (the migration fails on this side).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERBATIM, PAGES, RETURN, END, ABORT, CHECK, START, ANNOUNCE = 1, 2, 3, 4, 5, 6, 7, 8
TYPES = frozenset({VERBATIM, PAGES, RETURN, END, ABORT, CHECK, START, ANNOUNCE})
_TOTAL = struct.Struct(">Q")
HEADER = struct.Struct(">BI")
MAX_FRAME = 64 * 1024 * 1024
_PAGES_HEAD = struct.Struct(">QI")
_PREFIX_LEN = struct.Struct(">I")
_INDEX = struct.Struct(">Q")
_END = struct.Struct(">Q32s")


class FrameError(Exception):
    """Bytes on the migration channel that are not a valid frame."""


@dataclass(frozen=True)
class Frame:
    kind: int
    payload: bytes


def encode(kind: int, payload: bytes) -> bytes:
    if kind not in TYPES:
        raise ValueError(f"unknown frame type {kind}")
    return HEADER.pack(kind, len(payload)) + payload


def encode_pages(total_pages: int, entries: list[tuple[bytes, int]], batch: bytes) -> bytes:
    parts = [_PAGES_HEAD.pack(total_pages, len(entries))]
    for prefix, index in entries:
        parts += [_PREFIX_LEN.pack(len(prefix)), prefix, _INDEX.pack(index)]
    parts.append(batch)
    return encode(PAGES, b"".join(parts))


def decode_pages(payload: bytes) -> tuple[int, list[tuple[bytes, int]], bytes]:
    """(total pages, [(prefix, index)], engine batch) of a ``PAGES`` payload."""
    try:
        total, count = _PAGES_HEAD.unpack_from(payload)
        at = _PAGES_HEAD.size
        entries = []
        for _ in range(count):
            (plen,) = _PREFIX_LEN.unpack_from(payload, at)
            at += _PREFIX_LEN.size
            if at + plen > len(payload):
                raise FrameError("page prefix runs past the frame")
            prefix = payload[at : at + plen]
            at += plen
            (index,) = _INDEX.unpack_from(payload, at)
            at += _INDEX.size
            if index >= total:
                raise FrameError(f"page index {index} outside the guest's {total} pages")
            entries.append((prefix, index))
    except struct.error:
        raise FrameError("truncated PAGES frame") from None
    return total, entries, payload[at:]


def encode_abort(reason: str) -> bytes:
    return encode(ABORT, reason.encode()[:500])


def decode_abort(payload: bytes) -> str:
    return payload.decode("utf-8", "replace")[:200]


def encode_start(total_pages: int) -> bytes:
    return encode(START, _TOTAL.pack(total_pages))


def decode_start(payload: bytes) -> int:
    if len(payload) != _TOTAL.size:
        raise FrameError("START frame of the wrong size")
    (total,) = _TOTAL.unpack(payload)
    return int(total)


def encode_end(length: int, digest: bytes, kind: int = END) -> bytes:
    return encode(kind, _END.pack(length, digest))


def decode_end(payload: bytes) -> tuple[int, bytes]:
    """(length, sha256) of an ``END`` or ``CHECK`` payload."""
    if len(payload) != _END.size:
        raise FrameError("END/CHECK frame of the wrong size")
    length, digest = _END.unpack(payload)
    return int(length), bytes(digest)


class FrameDecoder:
    """Accumulates bytes; yields complete frames."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Frame]:
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
            out.append(Frame(kind, bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
