"""Both ends of one migration's data path, sans-IO.

:class:`StreamSender` (source daemon) takes the bytes the source QEMU writes, splits
them (:class:`novacron._core.QemuStreamSplitter`), sends RAM pages through the page
engine in batches and everything else verbatim, and after every group of frames a
``CHECK`` with the length and sha256 of the stream so far; ``END`` closes it.
:class:`StreamReceiver` (destination daemon) turns frames back into exactly those bytes
and releases them for the destination QEMU only when a ``CHECK`` (or ``END``) vouches
for them: a corrupted or tampered stream is refused before QEMU sees any of it.

Byte order is kept exactly: each page travels with the verbatim bytes that precede it
in the stream (its record header), and a batch is cut before a page index repeats
(the receiver rebuilds a batch's pages from the decoder's image after the whole batch
is applied, which holds only a page's latest content).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from itertools import chain
from typing import Any

from novacron._core import PAGE_SIZE, PageDecoder, PageEncoder, PageStore, QemuStreamSplitter
from novacron.migration import frames

DEFAULT_BATCH_PAGES = 1024
MAX_VERBATIM = 1024 * 1024
KEEP_CHUNK_PAGES = 8192  # 32 MiB of arrived memory added to the page store per step
MAX_UNCHECKED = 64 * 1024 * 1024  # receiver: bytes awaiting a CHECK (the sender checks far sooner)


class DigestMismatch(Exception):
    """The rebuilt stream differs from the source's: the migration must be aborted."""


class StreamSender:
    """``wait_for_announce``: hold pages until the destination's ``ANNOUNCE`` (its page
    store's hashes) arrived, so they can go as references. ``store``: keep every page
    sent in this page store (for migrating back, or other VMs of the same image).

    ``gated``: the first bytes the splitter cannot delimit — in a QEMU stream, the
    device state that follows the last RAM, sent while the source VM is stopped — and
    everything after them are held (``at_gate`` turns true) until :meth:`open_gate`:
    the destination QEMU cannot complete the migration before that. The cluster's
    ownership switch happens in between."""

    def __init__(
        self,
        batch_pages: int = DEFAULT_BATCH_PAGES,
        wait_for_announce: bool = False,
        store: PageStore | None = None,
        gated: bool = False,
        **engine: Any,
    ) -> None:
        self.splitter = QemuStreamSplitter()
        self._engine = engine
        self.encoder: PageEncoder | None = None
        self._waiting = wait_for_announce
        self._started = False
        self._store = store
        self.announced = 0
        self._batch_pages = batch_pages
        self._entries: list[tuple[bytes, int]] = []
        self._pages: list[bytes] = []
        self._in_batch: set[int] = set()
        self._held: list[tuple[list[tuple[bytes, int]], list[bytes]]] = []
        self._prefix = bytearray()
        self._sent = hashlib.sha256()  # over the stream bytes the frames so far stand for
        self._sent_length = 0
        self.length = 0
        self.wire_bytes = 0
        self._gated = gated

    @property
    def at_gate(self) -> bool:
        """The stream reached what the gate holds back (and the gate is closed)."""
        return self._gated and self.splitter.passthrough_reason is not None

    def open_gate(self) -> list[bytes]:
        """Lets the held bytes (and everything after them) go."""
        self._gated = False
        return self.flush()

    def feed(self, data: bytes) -> list[bytes]:
        """Frames for the next bytes from the source QEMU (possibly none yet)."""
        self.length += len(data)
        out: list[bytes] = []
        pieces = self.splitter.feed(data)
        if not self._started and self.splitter.total_pages:
            self._started = True
            out.append(frames.encode_start(self.splitter.total_pages))
        for index, piece in pieces:
            self._piece(index, piece, out)
        big = len(self._prefix) >= MAX_VERBATIM
        if big and not self._entries and not self._held and not self.at_gate:
            out.append(self._verbatim())
        return self._checked(out)

    def announce(self, hashes: bytes) -> list[bytes]:
        """The destination's page-store hashes; returns the frames held back for them."""
        self.announced = self._encoder().announce(hashes)
        self._waiting = False
        out: list[bytes] = []
        self._flush_pages(out)
        return out

    def _encoder(self) -> PageEncoder:
        if self.encoder is None:
            self.encoder = PageEncoder(self.splitter.total_pages, **self._engine)
        return self.encoder

    def flush(self) -> list[bytes]:
        """Everything held back (call when the source goes quiet, and at the end);
        pages wait for ``ANNOUNCE`` if asked to, and so does what follows them."""
        out: list[bytes] = []
        self._flush_pages(out)
        if self._prefix and not self._entries and not self._held and not self.at_gate:
            out += self._checked([self._verbatim()])
        return out

    def finish(self) -> list[bytes]:
        """The stream ended: the rest, then ``END`` with length and digest (an
        ``ANNOUNCE`` that never came is not waited for any longer; a closed gate must
        have been opened first)."""
        self._waiting = False
        self._gated = False
        out: list[bytes] = []
        for index, piece in self.splitter.finish():
            self._piece(index, piece, out)
        out = self._checked(out)
        out += self.flush()
        end = frames.encode_end(self._sent_length, self._sent.digest())
        self.wire_bytes += len(end)
        return [*out, end]

    def _piece(self, index: int | None, piece: bytes, out: list[bytes]) -> None:
        if index is None:
            self._prefix += piece
            return
        if index in self._in_batch or len(self._entries) >= self._batch_pages:
            self._cut(out)
        self._entries.append((bytes(self._prefix), index))
        self._prefix.clear()
        self._pages.append(piece)
        self._in_batch.add(index)

    def _cut(self, out: list[bytes]) -> None:
        """Closes the open batch: encoded now, or held until ``ANNOUNCE``."""
        if not self._entries:
            return
        if self._waiting:
            self._held.append((self._entries, self._pages))
        else:
            self._encode(self._entries, self._pages, out)
        self._entries, self._pages, self._in_batch = [], [], set()

    def _flush_pages(self, out: list[bytes]) -> None:
        """Encodes what was held and the open batch, each batch with its own ``CHECK``
        (the receiver holds at most one batch unvouched, however much was held here)."""
        if self._waiting:
            return
        for entries, pages in self._held:
            group: list[bytes] = []
            self._encode(entries, pages, group)
            out += self._checked(group)
        self._held = []
        group = []
        self._cut(group)
        out += self._checked(group)

    def _encode(
        self, entries: list[tuple[bytes, int]], pages: list[bytes], out: list[bytes]
    ) -> None:
        total = self.splitter.total_pages
        packed = b"".join(pages)
        batch = self._encoder().encode_pages([i for _, i in entries], packed)
        if self._store is not None:
            self._store.add_image(packed)
        # the stream span these pages stand for, digested in one call
        prefixes = [p for p, _ in entries]
        self._account(b"".join(chain.from_iterable(zip(prefixes, pages, strict=True))))
        out.append(frames.encode_pages(total, entries, batch))

    def _verbatim(self) -> bytes:
        data = bytes(self._prefix)
        self._prefix.clear()
        self._account(data)
        return frames.encode(frames.VERBATIM, data)

    def _account(self, data: bytes) -> None:
        self._sent.update(data)
        self._sent_length += len(data)

    def _checked(self, out: list[bytes]) -> list[bytes]:
        if out:
            out.append(
                frames.encode_end(self._sent_length, self._sent.copy().digest(), frames.CHECK)
            )
        self.wire_bytes += sum(len(f) for f in out)
        return out


class StreamReceiver:
    """``store``: a page store whose pages are announced to the source (and kept pinned
    for this stream); :meth:`keep` adds the arrived guest memory to it afterwards."""

    def __init__(self, store: PageStore | None = None, max_unchecked: int = MAX_UNCHECKED) -> None:
        self.decoder: PageDecoder | None = None
        self._max_unchecked = max_unchecked
        self._total = 0
        self._store = store
        self.reply: list[bytes] = []  # frames for the source (ANNOUNCE)
        self._digest = hashlib.sha256()
        self.length = 0
        self._unchecked: list[bytes] = []
        self._unchecked_size = 0
        self.ended = False

    def apply(self, frame: frames.Frame) -> bytes:
        """The stream bytes now vouched for (released at ``CHECK`` and ``END``)."""
        if self.ended:
            raise frames.FrameError("frame after END")
        if frame.kind == frames.VERBATIM:
            self._hold(frame.payload)
            return b""
        if frame.kind == frames.START:
            if self.decoder is not None:
                raise frames.FrameError("a second START")
            self._total = frames.decode_start(frame.payload)
            self.decoder = PageDecoder(self._total)
            hashes = self.decoder.announce(self._store) if self._store is not None else b""
            self.reply.append(frames.encode(frames.ANNOUNCE, hashes))
            return b""
        if frame.kind == frames.PAGES:
            total, entries, batch = frames.decode_pages(frame.payload)
            if self.decoder is None:
                self._total = total
                self.decoder = PageDecoder(total)
            self.decoder.decode(batch)  # EngineError on a corrupt batch
            packed = memoryview(self.decoder.pages([i for _, i in entries]))
            span: list[bytes | memoryview] = []
            for n, (prefix, _) in enumerate(entries):
                span += (prefix, packed[n * PAGE_SIZE : (n + 1) * PAGE_SIZE])
            self._hold(b"".join(span))
            return b""
        if frame.kind in (frames.CHECK, frames.END):
            length, digest = frames.decode_end(frame.payload)
            if length != self.length or digest != self._digest.copy().digest():
                raise DigestMismatch(
                    f"rebuilt stream has {self.length} bytes where the source had {length}"
                    if length != self.length
                    else f"rebuilt stream's sha256 differs from the source's at byte {length}"
                )
            self.ended = frame.kind == frames.END
            out = b"".join(self._unchecked)
            self._unchecked, self._unchecked_size = [], 0
            return out
        if frame.kind == frames.ABORT:
            raise frames.FrameError(f"source aborted: {frames.decode_abort(frame.payload)}")
        raise frames.FrameError(f"unexpected frame type {frame.kind} from the source")

    def keep(self, chunk_pages: int = KEEP_CHUNK_PAGES) -> Iterator[int]:
        """Adds the memory that arrived to the page store (for the next migration), one
        chunk per step; called once the stream was delivered, never in its way (the
        caller lets other work run between steps)."""
        if self._store is None or self.decoder is None or not self.ended:
            return
        total = self._total
        for start in range(0, total, chunk_pages):
            pages = range(start, min(total, start + chunk_pages))
            yield self._store.add_image(self.decoder.pages(pages))

    def _hold(self, data: bytes) -> None:
        self._digest.update(data)
        self.length += len(data)
        self._unchecked.append(data)
        self._unchecked_size += len(data)
        if self._unchecked_size > self._max_unchecked:
            raise frames.FrameError("too much of the stream without a CHECK")
