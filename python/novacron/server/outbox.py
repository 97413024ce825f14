"""Ordered, coalescing writes to one stream without a dedicated writer task.

Whoever queues a message while no write is in progress becomes the flusher: it sends
everything queued (its own message and any that arrive meanwhile) in as few
``send_all`` calls as possible. An idle connection thus answers with no extra task
switch, and a busy one batches many responses into one syscall.
"""

from __future__ import annotations

import trio

HIGH_WATER = 1 << 20  # bytes queued before event senders wait for the peer to read


class Outbox:
    def __init__(self, stream: trio.abc.SendStream) -> None:
        self._stream = stream
        self._queue: list[bytes] = []
        self._queued = 0
        self._flushing = False
        self._drained = trio.Event()
        self.closed = False
        self.sent_bytes = 0
        self.writes = 0

    async def send(self, payload: bytes) -> None:
        """Queues ``payload``; flushes if nobody else is. Raises ClosedResourceError
        once the peer is gone."""
        if self.closed:
            raise trio.ClosedResourceError("connection closed")
        self._queue.append(payload)
        self._queued += len(payload)
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._queue:
                batch = b"".join(self._queue) if len(self._queue) > 1 else self._queue[0]
                self._queue.clear()
                self._queued = 0
                await self._stream.send_all(batch)
                self.sent_bytes += len(batch)
                self.writes += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            self._queue.clear()
            raise
        finally:
            self._flushing = False
            self._drained.set()
            self._drained = trio.Event()

    async def wait_writable(self) -> None:
        """Waits while more than :data:`HIGH_WATER` bytes are queued (a slow reader)."""
        while self._queued > HIGH_WATER and not self.closed:
            await self._drained.wait()
