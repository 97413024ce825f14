"""In-process publish/subscribe for events sent to subscribed connections.

Publishing never blocks: a subscriber whose buffer is full loses events, counts them,
and is told how many it lost (``{"topic": "events.lost", "count": n}``) when it drains.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio

Event = dict[str, Any]


class Subscription:
    def __init__(
        self,
        bus: EventBus,
        topics: frozenset[str] | None,
        buffer: int,
        tenants: frozenset[str] | None = None,
    ) -> None:
        self._bus = bus
        self.topics = topics
        self.tenants = tenants  # None: every event; else only events of these tenants
        self._send, self._recv = trio.open_memory_channel[Event](buffer)
        self.lost = 0

    def wants(self, event: Event) -> bool:
        if self.topics is not None and event.get("topic") not in self.topics:
            return False
        return self.tenants is None or event.get("tenant") in self.tenants

    def offer(self, event: Event) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.lost += 1
        except trio.ClosedResourceError:
            pass

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for event in self._recv:
            if self.lost:
                lost, self.lost = self.lost, 0
                yield {"topic": "events.lost", "count": lost}
            yield event

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        self._send.close()


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self.published = 0

    def subscribe(
        self,
        topics: frozenset[str] | None = None,
        buffer: int = 1024,
        tenants: frozenset[str] | None = None,
    ) -> Subscription:
        sub = Subscription(self, topics, buffer, tenants)
        self._subscribers.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        self.published += 1
        for sub in list(self._subscribers):
            if sub.wants(event):
                sub.offer(event)

    def statistics(self) -> dict[str, Any]:
        return {"subscribers": len(self._subscribers), "published": self.published}
