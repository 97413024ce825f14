"""The native module: novacron._core (Rust page scan)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron import _core
from novacron.errors import EngineError

PAGE = _core.PAGE_SIZE


def bit(bitmap: bytes, i: int) -> bool:
    return bool(bitmap[i // 8] >> (i % 8) & 1)


@given(st.lists(st.sampled_from(["zero", "one", "random"]), max_size=40))
def test_scan_matches_python(kinds: list[str]) -> None:
    pages = []
    for k in kinds:
        if k == "zero":
            pages.append(bytes(PAGE))
        elif k == "one":
            pages.append(bytes(PAGE - 1) + b"\x01")
        else:
            pages.append(os.urandom(PAGE))
    image = b"".join(pages)
    scan = _core.scan_pages(image)
    assert scan.pages == len(pages)
    assert scan.zero_pages == kinds.count("zero")
    assert len(scan.hashes) == 16 * len(pages)
    for i, k in enumerate(kinds):
        assert bit(scan.zero_bitmap, i) == (k == "zero")


def test_same_content_same_hash_and_buffers_without_copy() -> None:
    page = os.urandom(PAGE)
    scan = _core.scan_pages(memoryview(bytearray(page * 3)))
    h = scan.hashes
    assert h[0:16] == h[16:32] == h[32:48]
    assert _core.is_zero_page(bytes(PAGE))
    assert not _core.is_zero_page(page)


def test_dirty_bitmap() -> None:
    image = bytearray(os.urandom(PAGE * 10))
    before = _core.scan_pages(bytes(image))
    image[3 * PAGE + 5] ^= 1
    image[9 * PAGE] ^= 1
    bitmap = _core.dirty_bitmap(before.hashes, bytes(image))
    assert [i for i in range(10) if bit(bitmap, i)] == [3, 9]


def test_engine_errors_are_python_exceptions() -> None:
    with pytest.raises(EngineError, match="multiple of the page size"):
        _core.scan_pages(b"x" * 100)
    with pytest.raises(EngineError, match="previous hashes describe"):
        _core.dirty_bitmap(b"\0" * 16, bytes(PAGE * 2))


def test_non_contiguous_buffer_is_refused() -> None:
    view = memoryview(bytes(PAGE * 2)).cast("B")[::2]
    with pytest.raises(ValueError, match="contiguous"):
        _core.scan_pages(view)
