"""Type stubs for the native module built from ``rust/py`` (checked by mypy.stubtest)."""

from typing import Final, final

from typing_extensions import Buffer

__all__ = [
    "HASH_LEN",
    "PAGE_SIZE",
    "PageDecoder",
    "PageEncoder",
    "PageScan",
    "PageStore",
    "dirty_bitmap",
    "is_zero_page",
    "scan_pages",
]

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

@final
class PageEncoder:
    def __new__(
        cls,
        pages: int,
        compression: str = "lz4",
        zstd_level: int = 1,
        dedup: bool = True,
        delta_cache_pages: int = 8192,
        batch_pages: int = 1024,
        threads: int = 1,
    ) -> PageEncoder: ...
    def encode(self, image: Buffer, indices: list[int] | None = None) -> bytes: ...
    def encode_pages(self, indices: list[int], pages: Buffer) -> bytes: ...
    def announce(self, hashes: Buffer) -> int: ...
    def stats(self) -> dict[str, int]: ...

@final
class PageDecoder:
    def __new__(cls, pages: int) -> PageDecoder: ...
    def decode(self, stream: Buffer) -> int: ...
    def announce(self, store: PageStore) -> bytes: ...
    def image(self) -> bytes: ...
    @property
    def pages_written(self) -> int: ...

@final
class PageStore:
    def __new__(cls, capacity_pages: int) -> PageStore: ...
    def add_image(self, image: Buffer) -> int: ...
    def __len__(self) -> int: ...
