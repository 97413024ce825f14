from __future__ import annotations

import trio

from novacron.eventbus import EventBus


async def test_publish_reaches_matching_subscribers_only() -> None:
    bus = EventBus()
    everything = bus.subscribe()
    vm_only = bus.subscribe(frozenset({"vm.state"}))
    bus.publish({"topic": "vm.state", "vm": "a"})
    bus.publish({"topic": "net.changed"})
    everything.close()
    vm_only.close()
    assert [e["topic"] async for e in everything] == ["vm.state", "net.changed"]
    assert [e["topic"] async for e in vm_only] == ["vm.state"]
    assert bus.statistics() == {"subscribers": 0, "published": 2}


async def test_slow_subscriber_loses_and_is_told() -> None:
    bus = EventBus()
    sub = bus.subscribe(buffer=2)
    for i in range(5):
        bus.publish({"topic": "vm.state", "n": i})
    got = []
    with trio.move_on_after(0.1):
        async for event in sub:
            got.append(event)
    assert got[0] == {"topic": "events.lost", "count": 3}
    assert [e["n"] for e in got[1:]] == [0, 1]


async def test_publish_after_close_is_harmless() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    sub.close()
    bus.publish({"topic": "vm.state"})
    assert bus.statistics()["subscribers"] == 0
