"""The files a qcow2 image needs, read from the images' headers: its backing chain and
each image's external data file.

A destination checks, before a migration starts, that every file a disk needs is
reachable there: the overlay on shared storage is not enough when its backing file (or
its data file) lies on the source's local disk. QEMU would find out only when the
destination's QEMU opens the disk, with the migration under way.

The header (QEMU's ``docs/interop/qcow2.txt``), big-endian: the magic ``QFI\\xfb`` at 0,
the version (2 or 3) at 4, the backing file name's offset (8 bytes) at 8 and its length
(4 bytes) at 16; no backing file when the offset is 0. QEMU refuses names over 1,023
bytes. A relative name is relative to the directory of the image that names it. A name
with a colon before any slash is a protocol (``nbd:``, ``json:``, ...), not a local file.

The number of internal snapshots (4 bytes) is at 60. QEMU cannot grow a version 2 image
that holds one ("Can't resize a v2 image which has snapshots").

A version 3 image whose incompatible features (8 bytes at 72) have bit 2 set keeps its
data in an external data file, named by the header extension of type ``0x44415441``.
Header extensions start at the header's length (4 bytes at 100), each a type and a
length (4 bytes each) and the data, padded to 8 bytes; type 0 ends them. QEMU opens a
relative data file name from its own working directory, not the image's: only absolute
names are checked here.

Only a chain that certainly names a missing local file is reported: a header this module
cannot read is left to QEMU, which reads the image either way.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"QFI\xfb"
HEADER = struct.Struct(">4sIQI")  # magic, version, backing file offset, its length
MAX_NAME = 1023
# a chain longer than this is not followed further (a loop, or a chain no one keeps)
MAX_DEPTH = 1000
SNAPSHOT_COUNT = struct.Struct(">I")
SNAPSHOT_COUNT_AT = 60
V3_FIELDS = struct.Struct(">QQQII")  # features: incompatible, compatible, autoclear; ...
V3_AT = 72  # ... refcount order, header length
EXTENSION = struct.Struct(">II")  # type, length
DATA_FILE = 0x44415441
EXTERNAL_DATA = 1 << 2  # the incompatible feature bit
# an image's first bytes, read once for both names (the header, its extensions and,
# as qemu-img writes images, the backing file name)
HEAD_READ = 4096
# the most of an image's start read for its header extensions (QEMU keeps them in the
# first cluster, which is at most 2 MiB)
EXTENSIONS_READ = 2 << 20


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
        return _backing_name(f, f.read(HEAD_READ))


def _backing_name(f: BinaryIO, head: bytes) -> str | None:
    """:func:`backing_name` of the open image ``f`` whose first bytes are ``head`` (the
    name is read from ``head`` when it lies there)."""
    field = backing_field(head)
    if field is None:
        return None
    offset, length = field
    if offset + length <= len(head):
        raw = head[offset : offset + length]
    else:
        f.seek(offset)
        raw = f.read(length)
    if len(raw) != length:
        raise UnreadableImage("the backing file name runs past the image's end")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise UnreadableImage("a backing file name that is not UTF-8") from None


def v2_snapshots(head: bytes) -> int:
    """How many internal snapshots an image whose first bytes are ``head`` holds when it
    is a qcow2 image of version 2 (such an image cannot grow while it holds one); 0 for
    any other image, or a header too short to say."""
    if len(head) < SNAPSHOT_COUNT_AT + SNAPSHOT_COUNT.size or not head.startswith(MAGIC):
        return 0
    if HEADER.unpack_from(head)[1] != 2:
        return 0
    count: int = SNAPSHOT_COUNT.unpack_from(head, SNAPSHOT_COUNT_AT)[0]
    return count


def v2_snapshots_of(path: str) -> int:
    """:func:`v2_snapshots` of the image at ``path``. Blocking (reads the file).

    Raises ``OSError`` when the file cannot be read."""
    with open(path, "rb") as f:
        return v2_snapshots(f.read(HEAD_READ))


def _has_data_file(head: bytes) -> bool:
    """Whether ``head`` begins a version 3 qcow2 image with an external data file."""
    if len(head) < V3_AT + V3_FIELDS.size or not head.startswith(MAGIC):
        return False
    if HEADER.unpack_from(head)[1] != 3:
        return False
    return bool(V3_FIELDS.unpack_from(head, V3_AT)[0] & EXTERNAL_DATA)


def data_file_field(head: bytes) -> str | None:
    """The external data file name held by an image whose first bytes are ``head``
    (its first cluster, or as much of it as the image has); None when it is not a
    qcow2 image of version 3 with an external data file.

    Raises :class:`UnreadableImage` for header extensions it cannot use."""
    if not _has_data_file(head):
        return None
    at = length = V3_FIELDS.unpack_from(head, V3_AT)[4]
    if at < V3_AT + V3_FIELDS.size:
        raise UnreadableImage(f"a header length of {length} bytes")
    while at + EXTENSION.size <= len(head):
        kind, size = EXTENSION.unpack_from(head, at)
        if kind == 0:
            break
        start = at + EXTENSION.size
        if start + size > len(head):
            break
        if kind == DATA_FILE:
            if not 0 < size <= MAX_NAME:
                raise UnreadableImage(f"a data file name of {size} bytes")
            try:
                return head[start : start + size].decode()
            except UnicodeDecodeError:
                raise UnreadableImage("a data file name that is not UTF-8") from None
        at = start + (size + 7) // 8 * 8
    raise UnreadableImage("an external data file the header extensions do not name")


def data_file_name(path: str) -> str | None:
    """The external data file name the image at ``path`` holds, as written; None when it
    has none (or is not qcow2). Blocking (reads the file).

    Raises :class:`UnreadableImage` (and ``OSError`` when the file cannot be read)."""
    with open(path, "rb") as f:
        return _data_file_name(f, f.read(HEAD_READ))


def _data_file_name(f: BinaryIO, head: bytes) -> str | None:
    """:func:`data_file_name` of the open image ``f`` whose first bytes are ``head``:
    the rest of its first cluster is read only when it has a data file."""
    if not _has_data_file(head):
        return None
    # the extensions lie within the first cluster (cluster bits: 4 bytes at 20)
    (bits,) = struct.unpack_from(">I", head, 20)
    more = min(1 << min(bits, 32), EXTENSIONS_READ) - len(head)
    if more > 0 and len(head) == HEAD_READ:
        f.seek(len(head))
        head += f.read(more)
    return data_file_field(head)


def is_protocol(name: str) -> bool:
    """True when QEMU reads ``name`` as a protocol (``nbd:...``, ``json:{...}``): a colon
    before any slash."""
    colon = name.find(":")
    slash = name.find("/")
    return colon > 0 and (slash < 0 or colon < slash)


@dataclass(frozen=True)
class Needed:
    """A file a disk needs: ``role`` is ``"backing"`` or ``"data_file"``; ``path`` as QEMU
    looks for it (a relative backing name joined to its image's directory; a data file
    name, or a protocol, as written)."""

    path: str
    role: str


def open_image(path: str) -> BinaryIO:
    """The image at ``path``, open for reading: never waiting on a FIFO, and only a
    regular file or a block device (else :class:`UnreadableImage`)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise UnreadableImage(f"{path!r} is not a regular file or a block device")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def chain(path: str) -> Iterator[Needed]:
    """Every file QEMU opens for the image at ``path`` besides it, in the order it looks
    for them: each image's external data file, then its backing file, down the chain. It
    stops at a protocol (yielded), a file that does not exist (yielded: not read), a
    raw image and a loop. Each file is opened only once the caller asks for what comes
    after it (one it may not read is not opened if it stops there). Blocking (reads the
    images).

    Raises :class:`UnreadableImage` for a header it cannot use and ``OSError`` for an
    image it cannot read."""
    seen = {os.path.realpath(path)}
    current = path
    for _ in range(MAX_DEPTH):
        with open_image(current) as f:
            head = f.read(HEAD_READ)
            data = _data_file_name(f, head)
            name = _backing_name(f, head)
        if data is not None:
            yield Needed(data, "data_file")
        if name is None:
            return
        if is_protocol(name):
            yield Needed(name, "backing")
            return
        found = os.path.join(os.path.dirname(current), name)
        yield Needed(found, "backing")
        real = os.path.realpath(found)
        if real in seen or not os.path.exists(found):
            return  # (a loop: QEMU refuses it with its own message)
        seen.add(real)
        current = found


def first_missing(path: str) -> Needed | None:
    """The first file ``path`` needs that does not exist, as QEMU would look for it: each
    image's external data file (absolute names only), then its backing file; None when
    every one does (or the chain leaves local files, or a header cannot be read: QEMU
    judges those). Blocking (reads the images)."""
    try:
        for needed in chain(path):
            if needed.role == "data_file" and not os.path.isabs(needed.path):
                continue
            if is_protocol(needed.path) and needed.role == "backing":
                return None
            if not os.path.exists(needed.path):
                return needed
    except (OSError, UnreadableImage):
        return None
    return None
