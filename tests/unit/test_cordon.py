"""The cordon: kept in the state store, refusing new VMs and incoming migrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from novacron import errors
from novacron.blocking import Pool
from novacron.migration.service import MigrationService
from novacron.state.db import StateStore
from novacron.vm.cordon import KEY, Cordon
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec
from tests.unit.conftest import unique


async def test_set_keeps_the_first_since_clear_and_reload(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    changes: list[int] = []
    cordon = Cordon(store, Pool("sqlite", 1), "node1")
    cordon.on_change = lambda: changes.append(1)
    await cordon.load()
    assert cordon.state is None and cordon.to_wire() is None
    cordon.refuse("new VMs")  # not cordoned: nothing refused
    first = await cordon.set("disk swap", "unix:root")
    second = await cordon.set("and firmware", "tls:ops")
    assert second.since == first.since and second.reason == "and firmware"
    assert cordon.to_wire() == {"since": first.since, "reason": "and firmware", "by": "tls:ops"}
    with pytest.raises(errors.Conflict) as refused:
        cordon.refuse("new VMs")
    assert refused.value.details == {"node": "node1", "cordoned": True, "reason": "and firmware"}
    assert "node 'node1' is cordoned (and firmware): it takes no new VMs" in refused.value.message
    again = Cordon(store, Pool("sqlite", 1), "node1")  # as after a restart
    await again.load()
    loaded = again.state  # (a name of its own: mypy would keep it narrowed past the reload)
    assert loaded == second
    assert await cordon.clear() is True
    assert await cordon.clear() is False
    assert changes == [1, 1, 1]  # two sets and the one clear that changed something
    await again.load()
    assert again.state is None
    store.close()


async def test_an_unreadable_record_counts_as_cordoned(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    store.set_setting(KEY, "garbage")
    cordon = Cordon(store, Pool("sqlite", 1), "n")
    await cordon.load()
    assert cordon.state is not None and cordon.state.reason == "unreadable cordon record"
    store.set_setting(KEY, {"since": "x", "reason": None, "by": 7})
    await cordon.load()
    assert cordon.to_wire() == {"since": 0.0, "reason": "", "by": "7"}
    store.close()


async def test_a_cordoned_node_creates_nothing_and_takes_no_migration(
    vm_service: VmService, migration_service: MigrationService
) -> None:
    kept = unique("kept")
    await vm_service.create(VmSpec(name=kept, vcpus=1, memory_mib=64), start=False)
    await vm_service.cordon.set("", "unix:root")
    name = unique("new")
    with pytest.raises(errors.Conflict, match="it takes no new VMs"):
        await vm_service.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    assert await vm_service.records.get(name) is None
    assert await vm_service.hv_pool.run(vm_service.hv.lookup, name) is None
    for offline in (False, True):
        with pytest.raises(errors.Conflict, match="no incoming migrations"):
            await migration_service.prepare("hostb", name, "<domain/>", "/run/x.sock", {}, offline)
    assert migration_service.ops._running == {}
    assert (await vm_service.start(kept))["state"] == "running"  # its own VMs still run
    await vm_service.cordon.clear()
    made = await vm_service.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    assert made["name"] == name
