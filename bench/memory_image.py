"""Guest memory images for ``bench/pagebench.py``, from a file of either kind:

- a raw image: the guest's memory byte for byte (``bench.guest_images``, QMP
  ``pmemsave``);
- an ELF core dump of the guest's memory: ``virsh dump --memory-only DOMAIN FILE``
  (libvirt's default format for it) or QEMU's ``dump-guest-memory`` without paging.
  Its RAM is in ``PT_LOAD`` segments, one per block of guest-physical memory; the
  image is those segments in order of physical address, each padded with zeros to
  whole 4 KiB pages (the holes between them, MMIO and the like, are not RAM and are
  left out, as a migration stream leaves them out). ELF32 and ELF64, either byte
  order, and more than 65,535 program headers (``PN_XNUM``) are read.

kdump-compressed dumps (``virsh dump --format kdump-*``) are refused with a clear
error, as is a dump with paging (virtual mappings that overlap).
"""

from __future__ import annotations

import itertools
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PAGE = 4096
ELF_MAGIC = b"\x7fELF"
KDUMP_MAGIC = b"KDUMP   "
ET_CORE = 4
PT_LOAD = 1
PN_XNUM = 0xFFFF


class ImageError(Exception):
    """The file is not a memory image this module can read (the message says why)."""


@dataclass(frozen=True)
class Segment:
    """A ``PT_LOAD`` segment: guest-physical address, where its bytes are in the file,
    how many there are and how many it covers (the rest are zero)."""

    paddr: int
    offset: int
    filesz: int
    memsz: int

    @property
    def padded(self) -> int:
        """Bytes it takes in the image: ``memsz`` rounded up to whole pages."""
        return -(-self.memsz // PAGE) * PAGE


@dataclass(frozen=True)
class _Layout:
    """Where the fields of an ELF class are (byte order prefix included)."""

    order: str
    header: struct.Struct  # e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize
    header_at: int
    phdr: struct.Struct  # p_type, p_offset, p_paddr, p_filesz, p_memsz
    shdr_info: struct.Struct  # sh_info
    shdr_info_at: int


def _layout(ident: bytes, path: Path) -> _Layout:
    elf_class, data = ident[4], ident[5]
    if data not in (1, 2):
        raise ImageError(f"{path}: ELF byte order {data} is neither little nor big endian")
    order = "<" if data == 1 else ">"
    if elf_class == 2:  # ELF64
        return _Layout(
            order,
            struct.Struct(order + "QQ6xHHH"),
            32,
            # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz
            struct.Struct(order + "I4xQ8xQQQ"),
            struct.Struct(order + "I"),
            44,
        )
    if elf_class == 1:  # ELF32
        return _Layout(
            order,
            struct.Struct(order + "II6xHHH"),
            28,
            # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz
            struct.Struct(order + "II4xIII"),
            struct.Struct(order + "I"),
            28,
        )
    raise ImageError(f"{path}: ELF class {elf_class} is neither ELF32 nor ELF64")


def _file_size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


def _read_at(f: BinaryIO, offset: int, size: int, path: Path, what: str) -> bytes:
    # (checked before reading: a count the file claims is not memory to allocate)
    if offset + size > _file_size(f):
        raise ImageError(f"{path}: truncated ({what} at byte {offset} runs past the end)")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ImageError(f"{path}: truncated ({what} at byte {offset} runs past the end)")
    return data


def segments(f: BinaryIO, path: Path) -> list[Segment] | None:
    """The RAM segments of an ELF core dump in order of physical address, or ``None``
    for a raw image."""
    f.seek(0)
    start = f.read(64)
    if start.startswith(KDUMP_MAGIC):
        raise ImageError(
            f"{path}: a kdump-compressed dump; take an ELF one "
            "(virsh dump --memory-only without --format) or a raw image"
        )
    if not start.startswith(ELF_MAGIC):
        return None
    if len(start) < 52:
        raise ImageError(f"{path}: truncated ELF header")
    layout = _layout(start, path)
    (e_type,) = struct.unpack_from(layout.order + "H", start, 16)
    if e_type != ET_CORE:
        raise ImageError(f"{path}: an ELF file of type {e_type}, not a core dump")
    if len(start) < layout.header_at + layout.header.size:
        raise ImageError(f"{path}: truncated ELF header")
    phoff, shoff, phentsize, phnum, shentsize = layout.header.unpack_from(start, layout.header_at)
    if phnum == PN_XNUM:  # the count is in section header 0's sh_info
        if not shoff or shentsize < layout.shdr_info_at + 4:
            raise ImageError(f"{path}: PN_XNUM without a section header to hold the count")
        raw = _read_at(f, shoff + layout.shdr_info_at, 4, path, "section header 0")
        (phnum,) = layout.shdr_info.unpack(raw)
    if phentsize < layout.phdr.size:
        raise ImageError(f"{path}: program headers of {phentsize} bytes are too short")
    table = _read_at(f, phoff, phentsize * phnum, path, "the program headers")
    size = _file_size(f)
    found = []
    for i in range(phnum):
        p_type, offset, paddr, filesz, memsz = layout.phdr.unpack_from(table, i * phentsize)
        if p_type != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz:
            raise ImageError(f"{path}: segment {i} has more bytes in the file than it covers")
        if offset + filesz > size:
            raise ImageError(f"{path}: truncated (segment {i} runs past the end)")
        found.append(Segment(paddr, offset, filesz, memsz))
    if not found:
        raise ImageError(f"{path}: a core dump with no memory (no PT_LOAD segment)")
    found.sort(key=lambda s: s.paddr)
    for before, after in itertools.pairwise(found):
        if before.paddr + before.memsz > after.paddr:
            raise ImageError(
                f"{path}: segments overlap at physical address {after.paddr:#x}: a dump "
                "with paging (virtual mappings) is not an image of the guest's RAM"
            )
    return found


def ram_size(found: list[Segment]) -> int:
    """Bytes of the image a dump's segments make (each padded to whole pages)."""
    return sum(s.padded for s in found)


def image_size(path: Path) -> int:
    """Bytes of the image ``path`` gives (a raw file's size; an ELF dump's RAM)."""
    try:
        with path.open("rb") as f:
            found = segments(f, path)
            return _file_size(f) if found is None else ram_size(found)
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror}") from e


def load(path: Path) -> bytes:
    """The image ``path`` holds: a raw file as it is, an ELF dump's RAM laid end to end."""
    try:
        with path.open("rb") as f:
            found = segments(f, path)
            if found is None:
                f.seek(0)
                return f.read()
            size = ram_size(found)
            try:
                out = bytearray(size)
            except MemoryError:
                raise ImageError(f"{path}: no memory for its {size}-byte image") from None
            view, at = memoryview(out), 0
            for s in found:
                f.seek(s.offset)
                if f.readinto(view[at : at + s.filesz]) != s.filesz:
                    raise ImageError(f"{path}: truncated (changed while read?)")
                at += s.padded
            return bytes(out)
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror}") from e
