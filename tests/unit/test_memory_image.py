"""bench.memory_image: raw images and ELF core dumps of guest memory (as `virsh dump
--memory-only` writes them), read into the flat image bench/pagebench.py encodes. The
dumps here are written from the ELF specification by `core_dump` below; a real one of a
running guest is read in tests/system/test_page_engine_guest.py."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from bench import memory_image
from bench.memory_image import ImageError, image_size, load
from hypothesis import given, settings
from hypothesis import strategies as st

PAGE = 4096


@dataclass
class Load:
    paddr: int
    data: bytes  # the bytes in the file
    memsz: int  # >= len(data): the rest are zero


def core_dump(
    loads: list[Load],
    *,
    bits: int = 64,
    order: str = "<",
    xnum: bool = False,
    e_type: int = 4,
    shuffle: random.Random | None = None,
) -> bytes:
    """An ELF core file: a PT_NOTE, then one PT_LOAD per `loads` entry (in the order
    given, or shuffled), their bytes after the headers; with `xnum`, e_phnum is PN_XNUM
    and section header 0 holds the count."""
    ehsize, phentsize, shentsize = (64, 56, 64) if bits == 64 else (52, 32, 40)
    headers = [(4, 0, b"CORE\x00notes", 0)] + [(1, ld.paddr, ld.data, ld.memsz) for ld in loads]
    if shuffle:
        shuffle.shuffle(headers)
    phoff = ehsize
    shoff = phoff + phentsize * len(headers) if xnum else 0
    data_at = phoff + phentsize * len(headers) + (shentsize if xnum else 0)
    body, table = bytearray(), bytearray()
    for header in headers:
        p_type, paddr, data, memsz = header
        offset = data_at + len(body)
        body += data
        if bits == 64:
            table += struct.pack(
                order + "IIQQQQQQ", p_type, 6, offset, 0xFFFF0000, paddr, len(data), memsz, PAGE
            )
        else:
            table += struct.pack(
                order + "IIIIIIII", p_type, offset, 0, paddr, len(data), memsz, 6, PAGE
            )
    phnum = 0xFFFF if xnum else len(headers)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    if bits == 64:
        rest = struct.pack(
            order + "HHIQQQIHHHHHH", e_type, 62, 1, 0, phoff, shoff, 0, ehsize, phentsize,
            phnum, shentsize, 1 if xnum else 0, 0,
        )  # fmt: skip
    else:
        rest = struct.pack(
            order + "HHIIIIIHHHHHH", e_type, 3, 1, 0, phoff, shoff, 0, ehsize, phentsize,
            phnum, shentsize, 1 if xnum else 0, 0,
        )  # fmt: skip
    section = b""
    if xnum:
        info = len(headers)
        if bits == 64:
            section = struct.pack(order + "IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, info, 0, 0)
        else:
            section = struct.pack(order + "IIIIIIIIII", 0, 0, 0, 0, 0, 0, 0, info, 0, 0)
    return ident + rest + bytes(table) + section + bytes(body)


def expected(loads: list[Load]) -> bytes:
    """The flat image: segments by address, each zero-padded to whole pages."""
    out = bytearray()
    for ld in sorted(loads, key=lambda x: x.paddr):
        segment = ld.data + bytes(ld.memsz - len(ld.data))
        out += segment + bytes(-len(segment) % PAGE)
    return bytes(out)


@st.composite
def layouts(draw: st.DrawFn) -> list[Load]:
    count = draw(st.integers(1, 6))
    loads, paddr = [], draw(st.integers(0, 1 << 20)) * PAGE
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(count):
        memsz = draw(st.integers(1, 3 * PAGE + 7))
        filesz = draw(st.integers(0, memsz))
        loads.append(Load(paddr, rng.randbytes(filesz), memsz))
        paddr += memsz + draw(st.integers(0, 4)) * PAGE  # a hole, or none
    return loads


@settings(max_examples=150, deadline=None)
@given(
    layouts(),
    st.sampled_from([32, 64]),
    st.sampled_from(["<", ">"]),
    st.booleans(),
    st.integers(0, 2**32),
)
def test_a_core_dump_reads_as_its_segments_in_address_order(
    tmp_path_factory: pytest.TempPathFactory,
    loads: list[Load],
    bits: int,
    order: str,
    xnum: bool,
    seed: int,
) -> None:
    if bits == 32:
        for ld in loads:
            ld.paddr %= 1 << 31
        loads.sort(key=lambda x: x.paddr)
        end = 0
        for ld in loads:  # keep them apart after the wrap
            ld.paddr = max(ld.paddr, end)
            end = ld.paddr + ld.memsz
    path = tmp_path_factory.mktemp("dump") / "core"
    path.write_bytes(
        core_dump(loads, bits=bits, order=order, xnum=xnum, shuffle=random.Random(seed))
    )
    image = load(path)
    assert image == expected(loads)
    assert image_size(path) == len(image)
    assert len(image) % PAGE == 0


def test_a_raw_image_is_read_as_it_is(tmp_path: Path) -> None:
    raw = random.Random(3).randbytes(3 * PAGE)
    path = tmp_path / "image.raw"
    path.write_bytes(raw)
    assert load(path) == raw
    assert image_size(path) == len(raw)


def bad(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(ImageError) as size_error:
        image_size(path)
    with pytest.raises(ImageError) as load_error:
        load(path)
    assert str(size_error.value) == str(load_error.value)
    assert str(path) in str(load_error.value)
    return str(load_error.value)


def test_dumps_that_are_not_ram_images_are_refused_clearly(tmp_path: Path) -> None:
    one = [Load(0, b"x" * PAGE, PAGE)]
    assert "kdump-compressed" in bad(tmp_path, b"KDUMP   " + bytes(PAGE))
    assert "not a core dump" in bad(tmp_path, core_dump(one, e_type=2))
    assert "no PT_LOAD" in bad(tmp_path, core_dump([]))
    overlapping = [Load(0, b"a" * PAGE, PAGE), Load(PAGE // 2, b"b" * PAGE, PAGE)]
    assert "overlap" in bad(tmp_path, core_dump(overlapping))
    whole = core_dump(one)
    assert "truncated" in bad(tmp_path, whole[:-1])  # the segment runs past the end
    assert "truncated" in bad(tmp_path, whole[:40])  # the header
    assert "truncated" in bad(tmp_path, whole[:80])  # the program headers
    assert "ELF class" in bad(tmp_path, whole[:4] + b"\x03" + whole[5:])
    assert "byte order" in bad(tmp_path, whole[:5] + b"\x07" + whole[6:])


def test_a_huge_program_header_count_is_refused_without_reading_it(tmp_path: Path) -> None:
    dump = bytearray(core_dump([Load(0, b"z" * PAGE, PAGE)], xnum=True))
    # section header 0's sh_info (the count under PN_XNUM): 2**32 - 1 headers of 56 bytes
    shoff = struct.unpack_from("<Q", dump, 40)[0]
    struct.pack_into("<I", dump, shoff + 44, 2**32 - 1)
    assert "truncated (the program headers" in bad(tmp_path, bytes(dump))


def test_a_segment_claiming_more_memory_than_there_is_is_refused_on_loading(
    tmp_path: Path,
) -> None:
    path = tmp_path / "core"
    path.write_bytes(core_dump([Load(0, b"z" * PAGE, 2**62)]))
    assert image_size(path) == 2**62
    with pytest.raises(ImageError, match="no memory for its"):
        load(path)


def test_a_segment_claiming_more_file_bytes_than_it_covers_is_refused(tmp_path: Path) -> None:
    dump = bytearray(core_dump([Load(0, b"z" * PAGE, PAGE)]))
    # the PT_LOAD's p_memsz (after the PT_NOTE header): 1 byte, under its p_filesz
    struct.pack_into("<Q", dump, 64 + 56 + 40, 1)
    assert "more bytes in the file" in bad(tmp_path, bytes(dump))


def test_pagebench_reads_dumps_through_it(tmp_path: Path) -> None:
    from bench.pagebench import load as bench_load

    loads = [Load(PAGE * 10, b"q" * PAGE, 2 * PAGE), Load(0, b"p" * 100, PAGE)]
    path = tmp_path / "core"
    path.write_bytes(core_dump(loads))
    assert bench_load(path) == expected(loads)
    assert memory_image.PAGE == PAGE
