"""The backing chain of a qcow2 image, read from the images' headers.

A destination checks, before a migration starts, that every image a disk needs is
reachable there: the overlay on shared storage is not enough when its backing file lies
on the source's local disk. QEMU would find out only when the destination's QEMU opens
the disk, with the migration under way.

The header (QEMU's ``docs/interop/qcow2.txt``), big-endian: the magic ``QFI\\xfb`` at 0,
the version (2 or 3) at 4, the backing file name's offset (8 bytes) at 8 and its length
(4 bytes) at 16; no backing file when the offset is 0. QEMU refuses names over 1,023
bytes. A relative name is relative to the directory of the image that names it. A name
with a colon before any slash is a protocol (``nbd:``, ``json:``, ...), not a local file.

Only a chain that certainly names a missing local file is reported: a header this module
cannot read is left to QEMU, which reads the image either way.
"""

from __future__ import annotations

import os
import struct

MAGIC = b"QFI\xfb"
HEADER = struct.Struct(">4sIQI")  # magic, version, backing file offset, its length
MAX_NAME = 1023
# a chain longer than this is not followed further (a loop, or a chain no one keeps)
MAX_DEPTH = 1000


class UnreadableImage(ValueError):
    """A qcow2 header this module does not understand (QEMU may still)."""


def backing_field(head: bytes) -> tuple[int, int] | None:
    """The backing file name's offset and length in an image whose first bytes are
    ``head``; None when it is not a qcow2 image or has no backing file.

    Raises :class:`UnreadableImage` for a qcow2 header it cannot use."""
    if len(head) < HEADER.size or not head.startswith(MAGIC):
        return None
    _, version, offset, length = HEADER.unpack_from(head)
    if version not in (2, 3):
        raise UnreadableImage(f"qcow2 version {version}")
    if offset == 0:
        return None
    if not 0 < length <= MAX_NAME or offset < HEADER.size:
        raise UnreadableImage(f"a backing file name of {length} bytes at {offset}")
    return offset, length


def backing_name(path: str) -> str | None:
    """The backing file name the image at ``path`` holds, as written; None when it is not
    a qcow2 image or has none. Blocking (reads the file).

    Raises :class:`UnreadableImage` (and ``OSError`` when the file cannot be read)."""
    with open(path, "rb") as f:
        field = backing_field(f.read(HEADER.size))
        if field is None:
            return None
        offset, length = field
        f.seek(offset)
        raw = f.read(length)
    if len(raw) != length:
        raise UnreadableImage("the backing file name runs past the image's end")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise UnreadableImage("a backing file name that is not UTF-8") from None


def is_protocol(name: str) -> bool:
    """True when QEMU reads ``name`` as a protocol (``nbd:...``, ``json:{...}``): a colon
    before any slash."""
    colon = name.find(":")
    slash = name.find("/")
    return colon > 0 and (slash < 0 or colon < slash)


def first_missing(path: str) -> str | None:
    """The first local file of ``path``'s backing chain that does not exist, as QEMU
    would look for it; None when every one does (or the chain leaves local files, or a
    header cannot be read: QEMU judges those). Blocking (reads the images)."""
    seen = {os.path.realpath(path)}
    current = path
    for _ in range(MAX_DEPTH):
        try:
            name = backing_name(current)
        except (OSError, UnreadableImage):
            return None
        if name is None or is_protocol(name):
            return None
        found = os.path.join(os.path.dirname(current), name)
        if not os.path.exists(found):
            return found
        real = os.path.realpath(found)
        if real in seen:
            return None  # a loop: QEMU refuses it with its own message
        seen.add(real)
        current = found
    return None
