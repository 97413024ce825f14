from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.blocking import Pool
from novacron.state.db import StateStore, VmRecord
from novacron.vm.records import Records


async def vm(records: Records, name: str) -> VmRecord:
    got = await records.get(name)
    assert got is not None, name
    return got


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "s.db")
    yield s
    s.close()


async def test_reads_match_the_database_after_every_write(store: StateStore) -> None:
    records = Records(store, Pool("sqlite", 1))
    await records.insert("b", "u1", "t", {"vcpus": 1})
    await records.insert("a", "u2", "t", {"vcpus": 2})
    await records.insert("c", "u3", "t", {}, desired_state="running")
    assert (await vm(records, "c")).desired_state == "running"
    await records.set_desired_state("a", "running")
    await records.set_uuid("b", "u9")
    assert await records.all() == store.list_vms()
    await records.delete("a")
    assert await records.all() == store.list_vms()
    assert await records.get("a") is None


async def test_failed_write_leaves_the_copy_unchanged(store: StateStore) -> None:
    records = Records(store, Pool("sqlite", 1))
    await records.insert("a", "u1", "t", {})
    with pytest.raises(Exception, match="UNIQUE"):
        await records.insert("a", "u2", "t", {})
    assert (await vm(records, "a")).uuid == "u1"


async def test_reload_sees_changes_made_behind_its_back(store: StateStore) -> None:
    records = Records(store, Pool("sqlite", 1))
    assert await records.all() == []
    store.insert_vm("x", "u", "t", {})
    assert await records.get("x") is None  # the copy is the daemon's view...
    await records.reload()
    assert (await vm(records, "x")).uuid == "u"  # ...until reconcile reloads it
