"""New volumes copied from a base image: a disk of ``vm.create`` or ``vm.disk.attach``
given as ``{"image": "/srv/images/debian-12.qcow2", "size_gib"?: N}``.

The VM gets a volume of its own in the daemon's pool holding the image's bytes (a
standalone copy, not an overlay: nothing ties the VM to the base afterwards, so it
migrates, clones and outlives the base like any volume the daemon made), grown to
``size_gib`` when that is larger than the image. The base is only read.

The image's file is copied as it is, in its own format, ``qcow2`` or ``raw`` (a file
that begins with qcow2's magic is qcow2, anything else raw); nothing converts it, so
nothing but the daemon reads it. The daemon refuses what would let a copy reach other
files of the host or fail in QEMU later: a qcow2 image with a backing file (the copy
would read through it) or an external data file, an encrypted one, one marked corrupt,
one with incompatible features QEMU 7 does not know, and anything not a regular file.

The file is opened once (never blocking on a FIFO, the last link not followed) and,
for callers without ``admin``, the directory check is made again on the file that is
open, so a link swapped in after the request's check changes nothing. The header is
checked again on the bytes actually copied: a file rewritten meanwhile cannot slip a
different header into the copy.

Blocking (files and libvirt): :meth:`ImageSource.open` and each
:meth:`ImageCopy.step` run on a worker thread.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import trio

from novacron.errors import InvalidParams
from novacron.logs import kv
from novacron.vm import qcow2
from novacron.vm.spec import MAX_DISK_GIB, DiskSpec

if TYPE_CHECKING:
    from novacron.vm.service import VmService

log = logging.getLogger("novacron.vm")

GIB = 1 << 30
PIECE = 1 << 20  # bytes read and sent at a time
HEAD = 4096  # the first bytes read for the header (the first piece holds at least these)
ZEROS = bytes(PIECE)
# how an image is opened: read only, never waiting on a FIFO, the last link not followed
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
SIZE_CRYPT = struct.Struct(">QI")  # the virtual size (at 24) and the encryption method
SIZE_AT = 24
CORRUPT = 1 << 1  # incompatible features: QEMU marked the image corrupt
# dirty, corrupt, external data file, compression type, extended L2: what QEMU 7 knows
KNOWN_INCOMPATIBLE = 0b11111


class ImageRefused(ValueError):
    """A file that cannot be copied into a volume (its reason, for the caller)."""


@dataclass(frozen=True)
class ImageHead:
    """What a volume copied from the image needs: its format and the disk size a
    guest sees (bytes)."""

    format: str
    virtual_size: int

    @property
    def size_gib(self) -> int:
        """The smallest whole GiB that holds the image's disk."""
        return max(1, -(-self.virtual_size // GIB))


def inspect(head: bytes, file_size: int) -> ImageHead:
    """The format and disk size of an image of ``file_size`` bytes whose first bytes are
    ``head`` (at least :data:`HEAD` of them, or the whole file). Raises
    :class:`ImageRefused` for an image whose copy the daemon will not make."""
    if not head.startswith(qcow2.MAGIC):
        return ImageHead("raw", file_size)
    if len(head) < qcow2.V3_AT:
        raise ImageRefused("a qcow2 header cut short")
    _, version, backing, _ = qcow2.HEADER.unpack_from(head)
    if version not in (2, 3):
        raise ImageRefused(f"qcow2 version {version} (QEMU writes 2 and 3)")
    if backing:
        raise ImageRefused(
            "it has a backing file; make a standalone image first (qemu-img convert -O qcow2)"
        )
    size, crypt = SIZE_CRYPT.unpack_from(head, SIZE_AT)
    if crypt:
        raise ImageRefused("it is encrypted")
    if version == 3:
        if len(head) < qcow2.V3_AT + qcow2.V3_FIELDS.size:
            raise ImageRefused("a qcow2 header cut short")
        incompatible = qcow2.V3_FIELDS.unpack_from(head, qcow2.V3_AT)[0]
        if incompatible & qcow2.EXTERNAL_DATA:
            raise ImageRefused("it keeps its data in an external data file")
        if incompatible & CORRUPT:
            raise ImageRefused("QEMU marked it corrupt (qemu-img check -r all)")
        if incompatible & ~KNOWN_INCOMPATIBLE:
            raise ImageRefused(f"incompatible features QEMU does not know ({incompatible:#x})")
    if size == 0:
        raise ImageRefused("a qcow2 image of no size")
    return ImageHead("qcow2", size)


class ImageSource:
    """An image file, open for copying (:meth:`open`); :meth:`close` when done."""

    def __init__(self, fd: int, path: str, real: str, head: ImageHead, length: int) -> None:
        self.fd = fd
        self.path = path  # as the caller named it
        self.real = real  # the file that is open
        self.head = head
        self.length = length  # the file's bytes when it was opened: what is copied

    @property
    def allocated(self) -> int:
        """The host space the image's file takes (what its copy, which keeps its holes,
        takes at most)."""
        return os.fstat(self.fd).st_blocks * 512

    @classmethod
    def open(cls, path: str, param: str, check: Callable[[str], None] | None) -> ImageSource:
        """The image at ``path`` (``param``: its name in the call), open; ``check`` is
        called with the real path of the file opened (it raises to refuse it).

        Raises ``invalid_params`` (``details`` ``{"param", "path"}``) for a file that
        cannot be opened or copied."""
        fd = -1
        try:
            fd = os.open(os.path.realpath(path), OPEN_FLAGS)
            opened = os.readlink(f"/proc/self/fd/{fd}")
            if check is not None:
                check(opened)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ImageRefused("not a regular file")
            head = inspect(os.pread(fd, HEAD, 0), info.st_size)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            if isinstance(exc, ImageRefused | OSError):
                raise _refused(param, path, why(exc)) from None
            raise
        return cls(fd, path, opened, head, info.st_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def why(exc: ImageRefused | OSError) -> str:
    """Why a file cannot be copied, in words (an OS error's own, without its number)."""
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _refused(param: str, path: str, reason: str) -> InvalidParams:
    return InvalidParams(
        f"{param} {path!r} cannot be copied: {reason}", {"param": param, "path": path}
    )


def sized(param: str, source: ImageSource, size_gib: int | None, fmt: str | None) -> int:
    """The size (GiB) of the volume copied from ``source``: ``size_gib``, or the image's
    own size rounded up; ``invalid_params`` when ``size_gib`` is smaller than the
    image or ``fmt`` is not the image's format."""
    head = source.head
    if fmt is not None and fmt != head.format:
        raise InvalidParams(
            f"{param} {source.path!r} is a {head.format} image; its copy keeps that format",
            {"param": param, "path": source.path, "format": head.format},
        )
    if size_gib is None:
        if head.size_gib > MAX_DISK_GIB:
            raise InvalidParams(
                f"{param} {source.path!r} holds a disk of {head.size_gib} GiB, more than a"
                f" volume's {MAX_DISK_GIB}",
                {"param": param, "path": source.path},
            )
        return head.size_gib
    if size_gib * GIB < head.virtual_size:
        raise InvalidParams(
            f"{param} {source.path!r} holds a disk of {head.virtual_size} bytes, more than"
            f" {size_gib} GiB",
            {"param": param, "path": source.path, "size_gib": head.size_gib},
        )
    return size_gib


class Sink(Protocol):
    """Where a copy goes: a new volume's file from its start
    (:class:`~novacron.vm.volume_stream.VolumeWriter`)."""

    def write(self, data: bytes) -> None: ...

    def skip(self, length: int) -> None: ...


class ImageCopy:
    """The file of ``source`` written into the new, empty volume behind ``writer``, from
    its start: :meth:`step` until it answers False, then close the writer. Holes in the
    file and pieces of zeros travel as holes. ``most`` bounds the disk size the copied
    header may claim (the volume's size)."""

    def __init__(self, source: ImageSource, writer: Sink, most: int) -> None:
        self.source = source
        self.writer = writer
        self.most = most
        self.offset = 0
        self.data = 0  # bytes sent as data
        self.holes = 0  # bytes sent as holes

    def step(self) -> bool:
        """Copies the next piece (data or a hole); False once the whole file is copied.

        Raises :class:`ImageRefused` when the bytes read differ from what was checked
        (the file shrank, or its header changed)."""
        end, at, fd = self.source.length, self.offset, self.source.fd
        if at >= end:
            return False
        if at == 0:
            length = min(end, max(HEAD, _data_length(fd, 0, end)))
        else:
            start = _next_data(fd, at, end)
            if start > at:
                self.writer.skip(start - at)
                self.holes += start - at
                self.offset = start
                return True
            length = _data_length(fd, at, end)
        data = os.pread(fd, length, at)
        if len(data) != length:
            raise ImageRefused("the file shrank while it was copied")
        if at == 0:
            self._check_head(data)
        if data == ZEROS[:length]:
            self.writer.skip(length)
            self.holes += length
        else:
            self.writer.write(data)
            self.data += length
        self.offset = at + length
        return True

    def _check_head(self, head: bytes) -> None:
        found = inspect(head, self.source.length)
        if found.format != self.source.head.format or found.virtual_size > self.most:
            raise ImageRefused("its header changed while it was copied")


def _next_data(fd: int, at: int, end: int) -> int:
    """Where the file's next data starts at or after ``at`` (``end`` if none)."""
    try:
        return min(os.lseek(fd, at, os.SEEK_DATA), end)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
    # only a hole is left: or the file's end (it was cut)
    if os.fstat(fd).st_size < end:
        raise ImageRefused("the file shrank while it was copied")
    return end


def _data_length(fd: int, at: int, end: int) -> int:
    """How many bytes from ``at`` to read as one piece: up to the next hole, at most
    :data:`PIECE`."""
    try:
        hole = os.lseek(fd, at, os.SEEK_HOLE)
    except OSError:
        hole = end
    run = hole - at if hole > at else PIECE
    return min(PIECE, run, end - at)


def open_images(
    disks: tuple[DiskSpec, ...], param: Callable[[int], str], check: Callable[[str, str], None]
) -> tuple[tuple[DiskSpec, ...], dict[str, ImageSource]]:
    """``disks`` with each one given by ``image`` sized and formatted as its image (see
    :func:`sized`), and those images open (by the path named: one file for disks that
    name the same). ``param(i)`` names disk ``i``'s image in the call; ``check(param, real)``
    refuses a file by raising. Blocking; on an error, nothing is left open."""
    sources: dict[str, ImageSource] = {}
    done: list[DiskSpec] = []
    try:
        for i, disk in enumerate(disks):
            if disk.image is None:
                done.append(disk)
                continue
            name = param(i)
            source = sources.get(disk.image)
            if source is None:
                source = ImageSource.open(disk.image, name, functools.partial(check, name))
                sources[disk.image] = source
            size = sized(name, source, disk.size_gib, disk.format or None)
            done.append(replace(disk, size_gib=size, format=source.head.format))
    except BaseException:
        close_all(sources)
        raise
    return tuple(done), sources


def close_all(sources: dict[str, ImageSource]) -> None:
    for source in sources.values():
        source.close()


async def make_volume(
    vms: VmService, name: str, target: str, disk: DiskSpec, source: ImageSource
) -> str:
    """A new volume in the daemon's pool for VM ``name``'s disk ``target``, holding a
    copy of ``source`` grown to ``disk.size_gib``; its path. A failure deletes it."""
    assert disk.size_gib is not None
    pool, size = vms.config.storage_pool, disk.size_gib * GIB
    volume = vms.managed_volume_name(name, target, disk.format)
    started = time.monotonic()
    # an empty file, written whole by the upload (libvirt then sees the image's format)
    path: str = await vms.hv_pool.run(vms.hv.create_volume, pool, volume, 0, "raw")
    try:
        writer = await vms.hv_pool.run(vms.hv.volume_writer, path)
        copy = ImageCopy(source, writer, size)
        complete = False
        try:
            while await vms.hv_pool.run(copy.step):
                pass
            complete = True
        except (ImageRefused, OSError) as exc:
            raise InvalidParams(
                f"image {source.path!r} cannot be copied: {why(exc)}", {"path": source.path}
            ) from None
        finally:
            with trio.CancelScope(shield=True):
                await vms.hv_pool.run(writer.close, complete)
        await vms.refresh_pool()
        if size > source.head.virtual_size:
            await vms.hv_pool.run(vms.hv.grow_volume, path, size)
    except BaseException:
        with trio.CancelScope(shield=True):
            await vms.hv_pool.run(vms.hv.delete_volume, path)
        raise
    log.info(
        "vm.volume_copied",
        extra=kv(
            vm=name,
            target=target,
            image=source.real,
            format=source.head.format,
            data_bytes=copy.data,
            hole_bytes=copy.holes,
            seconds=round(time.monotonic() - started, 3),
        ),
    )
    return path
