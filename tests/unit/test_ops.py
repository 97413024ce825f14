"""Operations: rows in the store, events on the bus, recovery after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from novacron import errors
from novacron.blocking import Pool
from novacron.eventbus import EventBus
from novacron.migration.ops import KEEP_IN_MEMORY, Operations
from novacron.state.db import StateStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "s.db")
    yield s
    s.close()


async def test_lifecycle_persists_and_publishes(store: StateStore) -> None:
    bus = EventBus()
    sub = bus.subscribe(frozenset({"op.progress", "op.finished"}))
    ops = Operations(store, Pool("sqlite", 1), bus)
    op = await ops.start("migrate_out", "vm1", "acme", "node2:7443", {"compression": "lz4"})
    assert store.get_operation(op.id)["state"] == "running"  # type: ignore[index]
    with pytest.raises(errors.Conflict):
        await ops.start("migrate_out", "vm1", "acme", "node3:7443", {})
    ops.report(op, "migrating", {"round": 2, "bytes_wire": 10})
    await ops.finish(op, "succeeded", {"total_s": 1.5})
    assert op.ended.is_set() and ops.active_for("vm1") is None
    row = store.get_operation(op.id)
    assert row is not None and row["state"] == "succeeded" and row["result"] == {"total_s": 1.5}
    events = []
    with trio.move_on_after(0.1):
        async for event in sub:
            events.append(event)
    assert [e["topic"] for e in events] == ["op.progress", "op.finished"]
    assert events[0]["round"] == 2 and events[0]["tenant"] == "acme"
    assert events[1]["state"] == "succeeded"
    doc = await ops.get(op.id)
    assert doc["progress"] == {"round": 2, "bytes_wire": 10}


async def test_failure_keeps_the_error_code(store: StateStore) -> None:
    ops = Operations(store, Pool("sqlite", 1), EventBus())
    op = await ops.start("migrate_in", "vm2", "t", "node1", {})
    await ops.finish(op, "failed", None, errors.MigrationFailed("link cut", {"vm": "vm2"}))
    row = store.get_operation(op.id)
    assert row is not None and row["error"]["code"] == "migration_failed"


async def test_recover_closes_what_a_restart_interrupted(store: StateStore) -> None:
    first = Operations(store, Pool("sqlite", 1), EventBus())
    running = await first.start("migrate_out", "vm3", "t", "n2:1", {})
    done = await first.start("migrate_out", "vm4", "t", "n2:1", {})
    await first.finish(done, "succeeded", {})
    again = Operations(store, Pool("sqlite", 1), EventBus())  # the daemon restarted
    rows = await again.recover()
    assert [r["id"] for r in rows] == [running.id]
    doc = await again.get(running.id)
    assert doc["state"] == "failed" and "restarted" in doc["error"]["message"]
    await again.amend(rows[0], "succeeded", {"restarted": True})
    assert (await again.get(running.id))["state"] == "succeeded"
    assert await again.recover() == []


async def test_list_running_first_then_newest(store: StateStore) -> None:
    ops = Operations(store, Pool("sqlite", 1), EventBus())
    old = await ops.start("migrate_out", "a", "t", "p:1", {})
    await ops.finish(old, "failed", None, errors.MigrationFailed("x"))
    new = await ops.start("migrate_out", "b", "t", "p:1", {})
    await ops.finish(new, "cancelled", None, errors.Cancelled("x"))
    live = await ops.start("migrate_out", "c", "t", "p:1", {})
    assert [d["id"] for d in await ops.list(10)] == [live.id, new.id, old.id]
    assert [d["id"] for d in await ops.list(1)] == [live.id]
    with pytest.raises(errors.NotFound):
        await ops.get("op-missing")


async def test_memory_is_bounded(store: StateStore) -> None:
    ops = Operations(store, Pool("sqlite", 1), EventBus())
    ids = []
    for n in range(KEEP_IN_MEMORY + 5):
        op = await ops.start("migrate_out", f"v{n}", "t", "p:1", {})
        await ops.finish(op, "succeeded", {"n": n})
        ids.append(op.id)
    assert len(ops._ended) == KEEP_IN_MEMORY
    assert (await ops.get(ids[0]))["result"] == {"n": 0}  # read back from the store


async def test_cancel_calls_the_operations_hook(store: StateStore) -> None:
    ops = Operations(store, Pool("sqlite", 1), EventBus())
    op = await ops.start("migrate_out", "v", "t", "p:1", {})
    called: list[bool] = []
    op.on_cancel = lambda: called.append(True)
    ops.cancel(op)
    assert op.cancel_requested and called == [True]


async def test_a_note_survives_a_restart(store: StateStore) -> None:
    """What a restart needs to undo (the switch-over's destination) is stored."""
    first = Operations(store, Pool("sqlite", 1), EventBus())
    op = await first.start("migrate_out", "vm9", "t", "n2:1", {"compression": "lz4"}, "op-fixed")
    assert op.id == "op-fixed"
    await first.note(op, destination_node="n2")
    (row,) = await Operations(store, Pool("sqlite", 1), EventBus()).recover()
    assert row["params"] == {"compression": "lz4", "destination_node": "n2"}
