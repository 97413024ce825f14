"""Type stubs for the native module built from ``rust/py`` (checked by mypy.stubtest)."""

from collections.abc import Mapping, Sequence
from typing import Any, Final, final

from typing_extensions import Buffer

__all__ = [
    "HASH_LEN",
    "OLDEST_WIRE_VERSION",
    "PAGE_SIZE",
    "WIRE_VERSION",
    "ChannelReceiver",
    "ChannelSender",
    "PageDecoder",
    "PageEncoder",
    "PageScan",
    "PageStore",
    "Placement",
    "Placer",
    "QemuStreamSplitter",
    "StreamDigest",
    "dirty_bitmap",
    "format_cpuset",
    "is_zero_page",
    "pack_extent",
    "parse_cpuset",
    "scan_pages",
    "unpack_piece",
]

PAGE_SIZE: Final[int]
HASH_LEN: Final[int]
WIRE_VERSION: Final[int]  # the page engine's record stream version (docs/migration-wire.md)
OLDEST_WIRE_VERSION: Final[int]  # the oldest version it still reads and writes

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
    def dirty_since(self, previous_hashes: Buffer) -> bytes: ...

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
        wire_version: int = ...,
    ) -> PageEncoder: ...
    def encode(
        self, image: Buffer, indices: list[int] | None = None, scan: PageScan | None = None
    ) -> memoryview:
        """The call's batches: a read-only view of the buffer the engine wrote them in
        (no copy into a ``bytes``); ``bytes(view)`` makes one."""
    def encode_pages(self, indices: list[int], pages: Buffer) -> memoryview: ...
    def announce(self, hashes: Buffer) -> int: ...
    def stats(self) -> dict[str, int]: ...

@final
class PageDecoder:
    def __new__(cls, pages: int, threads: int = 1) -> PageDecoder: ...
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

@final
class ChannelSender:
    """The source's half of the migration channel: QEMU's stream in, frames out."""

    def __new__(
        cls,
        batch_pages: int = 1024,
        wait_for_announce: bool = False,
        store: PageStore | None = None,
        gated: bool = False,
        packed_heads: bool = True,
        compression: str = "lz4",
        zstd_level: int = 1,
        dedup: bool = True,
        delta_cache_pages: int = 8192,
        threads: int = 1,
        wire_version: int = ...,
    ) -> ChannelSender: ...
    def feed(self, data: Buffer) -> bytes: ...
    def announce(self, hashes: Buffer) -> bytes: ...
    def flush(self) -> bytes: ...
    def open_gate(self) -> bytes: ...
    def finish(self) -> bytes: ...
    @property
    def at_gate(self) -> bool: ...
    def may_encode(self, len: int) -> bool: ...
    @property
    def length(self) -> int: ...
    @property
    def wire_bytes(self) -> int: ...
    @property
    def announced(self) -> int: ...
    @property
    def passthrough_reason(self) -> str | None: ...
    @property
    def total_pages(self) -> int: ...
    @property
    def split_stats(self) -> dict[str, int]: ...
    @property
    def engine_stats(self) -> dict[str, int]: ...

@final
class ChannelReceiver:
    """The destination's half: frames in, vouched-for stream bytes out."""

    def __new__(
        cls,
        store: PageStore | None = None,
        max_unchecked: int = 67108864,
        threads: int = 1,
        max_pages: int | None = None,
    ) -> ChannelReceiver: ...
    def apply(self, kind: int, payload: Buffer) -> memoryview: ...
    def take_reply(self) -> bytes: ...
    def keep(self, start: int, count: int) -> int: ...
    @property
    def ended(self) -> bool: ...
    @property
    def length(self) -> int: ...
    @property
    def total_pages(self) -> int: ...

# -- a storage copy's extents (the engine's disk module) -------------------------------

def pack_extent(data: Buffer, codec: int = 1) -> list[tuple[int, int, int, bytes]]: ...
def unpack_piece(codec: int, payload: Buffer, length: int) -> bytes: ...

@final
class StreamDigest:
    """xxh3-128 over everything given to ``update``, as if it were one input."""

    def __new__(cls) -> StreamDigest: ...
    def update(self, data: Buffer) -> None: ...
    def digest(self) -> bytes: ...
