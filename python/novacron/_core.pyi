"""Type stubs for the native module built from ``rust/py`` (checked by mypy.stubtest)."""

from typing import Final, final

from typing_extensions import Buffer

__all__ = ["HASH_LEN", "PAGE_SIZE", "PageScan", "dirty_bitmap", "is_zero_page", "scan_pages"]

PAGE_SIZE: Final[int]
HASH_LEN: Final[int]

@final
class PageScan:
    @property
    def pages(self) -> int: ...
    @property
    def zero_pages(self) -> int: ...
    @property
    def zero_bitmap(self) -> bytes: ...
    @property
    def hashes(self) -> bytes: ...

def is_zero_page(page: Buffer) -> bool: ...
def scan_pages(image: Buffer) -> PageScan: ...
def dirty_bitmap(previous_hashes: Buffer, image: Buffer) -> bytes: ...
