"""Type stubs for the native module built from ``rust/py`` (checked by mypy.stubtest)."""

from collections.abc import Mapping, Sequence
from typing import Any, Final, final

from typing_extensions import Buffer

__all__ = [
    "HASH_LEN",
    "PAGE_SIZE",
    "PageDecoder",
    "PageEncoder",
    "PageScan",
    "PageStore",
    "Placement",
    "Placer",
    "QemuStreamSplitter",
    "dirty_bitmap",
    "format_cpuset",
    "is_zero_page",
    "parse_cpuset",
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
    def pages(self, indices: Sequence[int]) -> bytes: ...
    def image(self) -> bytes: ...
    @property
    def pages_written(self) -> int: ...

@final
class PageStore:
    def __new__(cls, capacity_pages: int) -> PageStore: ...
    def add_image(self, image: Buffer) -> int: ...
    def __len__(self) -> int: ...

@final
class Placement:
    """One decision of the placement engine (``to_dict`` gives the stored form)."""

    @property
    def cpu(self) -> str: ...
    @property
    def nodes(self) -> list[int]: ...
    def vcpu_cpus(self, vcpu: int) -> list[int] | None: ...
    def to_dict(self) -> dict[str, Any]: ...
    def __eq__(self, value: object, /) -> bool: ...

@final
class Placer:
    """NUMA placement state of one host (see ``novacron.placement``)."""

    def __new__(
        cls,
        nodes: Sequence[Mapping[str, Any]],
        dedicated_cpus: Sequence[int] = ...,
        shared_cpus: Sequence[int] = ...,
        reserved_memory_mib: int = 0,
        shared_overcommit: float = 4.0,
    ) -> Placer: ...
    def place(
        self,
        vcpus: int,
        memory_mib: int,
        cpu: str = "shared",
        memory: str = "strict",
        hugepage_kib: int | None = None,
    ) -> Placement: ...
    def place_many(
        self, requests: Sequence[tuple[int, int, str, str, int | None]]
    ) -> list[Placement | None]: ...
    def allocate(
        self,
        vm: str,
        vcpus: int,
        memory_mib: int,
        cpu: str = "shared",
        memory: str = "strict",
        hugepage_kib: int | None = None,
    ) -> Placement: ...
    def commit(self, vm: str, placement: Mapping[str, Any]) -> None: ...
    def release(self, vm: str) -> bool: ...
    def allocation(self, vm: str) -> Placement | None: ...
    def score(
        self,
        vcpus: int,
        memory_mib: int,
        cpu: str = "shared",
        memory: str = "strict",
        hugepage_kib: int | None = None,
    ) -> float | None: ...
    def free(self) -> list[dict[str, Any]]: ...
    def __len__(self) -> int: ...

def parse_cpuset(text: str) -> list[int]: ...
def format_cpuset(cpus: Sequence[int]) -> str: ...

@final
class QemuStreamSplitter:
    """QEMU's migration stream split into RAM pages and verbatim bytes."""

    def __new__(cls) -> QemuStreamSplitter: ...
    def feed(self, data: Buffer) -> list[tuple[int | None, bytes]]: ...
    def finish(self) -> list[tuple[int | None, bytes]]: ...
    @property
    def passthrough_reason(self) -> str | None: ...
    @property
    def total_pages(self) -> int: ...
    @property
    def blocks(self) -> list[tuple[bytes, int, int]]: ...
    @property
    def stats(self) -> dict[str, int]: ...
