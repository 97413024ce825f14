"""Both ends of one migration's data path, sans-IO, over the Rust halves of the
channel (``novacron._core.ChannelSender`` / ``ChannelReceiver``; the engine's
``channel`` module).

:class:`StreamSender` (source daemon) takes the bytes the source QEMU writes, splits
them into RAM pages and everything else, sends the pages through the page engine in
batches and everything else verbatim, and after every group of frames a ``CHECK`` with
the length and xxh3-128 of the stream so far; ``END`` closes it.
:class:`StreamReceiver` (destination daemon) turns frames back into exactly those bytes
and releases them for the destination QEMU only when a ``CHECK`` (or ``END``) vouches
for them: a corrupted stream is refused before QEMU sees any of it. Each call is one
read's worth of work in Rust with the GIL released.

Byte order is kept exactly: each page travels with the verbatim bytes that precede it
in the stream (its record header), and a batch is cut before a page index repeats.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from novacron._core import PAGE_SIZE, ChannelReceiver, ChannelSender, PageStore
from novacron.migration import frames
from novacron.migration.frames import DigestMismatch

__all__ = ["DigestMismatch", "StreamReceiver", "StreamSender"]

DEFAULT_BATCH_PAGES = 1024
KEEP_CHUNK_PAGES = 8192  # 32 MiB of arrived memory added to the page store per step
MAX_UNCHECKED = 64 * 1024 * 1024  # receiver: bytes awaiting a CHECK (the sender checks far sooner)
# QEMU migrates RAM blocks besides the guest's memory (video memory, ROMs, ACPI tables):
# a stream may claim this much more than the guest has, and no more
EXTRA_RAM_MIB = 1024


def guest_page_limit(memory_mib: int) -> int:
    """The most pages a migration stream of a guest with ``memory_mib`` of memory may
    claim (all of QEMU's RAM blocks): its memory, plus a quarter of it or
    ``EXTRA_RAM_MIB``, whichever is more, for the blocks that are not guest memory."""
    extra = max(EXTRA_RAM_MIB, memory_mib // 4)
    return (memory_mib + extra) * (1024 * 1024 // PAGE_SIZE)


def _frames(blob: bytes) -> list[bytes]:
    return [blob] if blob else []


class StreamSender:
    """``wait_for_announce``: hold pages until the destination's ``ANNOUNCE`` (its page
    store's hashes) arrived, so they can go as references. ``store``: keep every page
    sent in this page store (for migrating back, or other VMs of the same image).

    ``gated``: the first bytes the splitter cannot delimit — in a QEMU stream, the
    device state that follows the last RAM, sent while the source VM is stopped — and
    everything after them are held (``at_gate`` turns true) until :meth:`open_gate`:
    the destination QEMU cannot complete the migration before that. The cluster's
    ownership switch happens in between.

    Every method returns the frames to send, as a list of buffers (possibly empty)."""

    def __init__(
        self,
        batch_pages: int = DEFAULT_BATCH_PAGES,
        wait_for_announce: bool = False,
        store: PageStore | None = None,
        gated: bool = False,
        **engine: Any,
    ) -> None:
        self._core = ChannelSender(
            batch_pages=batch_pages,
            wait_for_announce=wait_for_announce,
            store=store,
            gated=gated,
            **engine,
        )

    def feed(self, data: bytes) -> list[bytes]:
        """Frames for the next bytes from the source QEMU (possibly none yet)."""
        return _frames(self._core.feed(data))

    def announce(self, hashes: bytes) -> list[bytes]:
        """The destination's page-store hashes; returns the frames held back for them."""
        return _frames(self._core.announce(hashes))

    def flush(self) -> list[bytes]:
        """Everything held back that may go (call when the source goes quiet)."""
        return _frames(self._core.flush())

    def open_gate(self) -> list[bytes]:
        """Lets the held bytes (and everything after them) go."""
        return _frames(self._core.open_gate())

    def finish(self) -> list[bytes]:
        """The stream ended: the rest, then ``END`` (an ``ANNOUNCE`` that never came is
        not waited for any longer)."""
        return _frames(self._core.finish())

    @property
    def at_gate(self) -> bool:
        return self._core.at_gate

    def may_encode(self, data_bytes: int) -> bool:
        """Whether feeding that many bytes may encode a batch (milliseconds of work):
        the batch being filled could reach its size. (A page index that repeats also
        closes a batch early; that batch is smaller.)"""
        return self._core.may_encode(data_bytes)

    @property
    def length(self) -> int:
        return self._core.length

    @property
    def wire_bytes(self) -> int:
        return self._core.wire_bytes

    @property
    def announced(self) -> int:
        return self._core.announced

    @property
    def split_stats(self) -> dict[str, int]:
        """``bytes``, ``pages``, ``zero_pages``, ``verbatim_bytes`` split so far."""
        return self._core.split_stats

    @property
    def engine_stats(self) -> dict[str, int]:
        """The page engine's record counts (``Encoder.stats``'s keys; empty before the
        first page)."""
        return self._core.engine_stats

    @property
    def passthrough_reason(self) -> str | None:
        return self._core.passthrough_reason


class StreamReceiver:
    """``store``: a page store whose pages are announced to the source (and kept pinned
    for this stream) from the start; :meth:`keep` adds the arrived guest memory to it
    afterwards. ``threads``: the decoder's (the batches of one frame are read on all of
    them, applied in order on the caller's). ``max_pages``: the largest guest (in 4 KiB
    pages, all of QEMU's RAM blocks) the stream may claim; by default this host's
    physical memory."""

    def __init__(
        self,
        store: PageStore | None = None,
        max_unchecked: int = MAX_UNCHECKED,
        threads: int = 1,
        max_pages: int | None = None,
    ) -> None:
        self._core = ChannelReceiver(store, max_unchecked, threads, max_pages)

    def apply(self, frame: frames.Frame) -> memoryview:
        """The stream bytes now vouched for (released at ``CHECK`` and ``END``), lent
        without a copy as a read-only view (empty when none); raises
        :class:`~novacron.migration.frames.FrameError`, :class:`DigestMismatch` or
        :class:`~novacron.errors.EngineError` for a bad stream."""
        return self._core.apply(frame.kind, frame.payload)

    def take_replies(self) -> list[bytes]:
        """Frames for the source, once: the ``ANNOUNCE`` of the page store (pinned when
        this receiver was made), to be sent as soon as the channel is open."""
        return _frames(self._core.take_reply())

    @property
    def ended(self) -> bool:
        return self._core.ended

    @property
    def length(self) -> int:
        return self._core.length

    def keep(self, chunk_pages: int = KEEP_CHUNK_PAGES) -> Iterator[int]:
        """Adds the memory that arrived to the page store (for the next migration), one
        chunk per step; called once the stream was delivered, never in its way (the
        caller lets other work run between steps)."""
        if not self._core.ended:
            return
        for start in range(0, self._core.total_pages, chunk_pages):
            yield self._core.keep(start, chunk_pages)
