"""node.drain in-process on libvirt's test driver (which migrates nothing): what is
refused before anything changes, one drain at a time, a cancel before the first VM,
and the result of VMs that cannot leave."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from novacron import errors
from novacron.migration import drain
from novacron.migration.options import MigrateOptions
from novacron.migration.service import MigrationService
from novacron.vm.spec import VmSpec
from tests.unit.conftest import unique


async def test_without_a_cluster_a_destination_is_needed(migrations: MigrationService) -> None:
    with pytest.raises(errors.InvalidParams, match="name a destination"):
        await drain.start(migrations, None, MigrateOptions(), False, "drain", "unix:root")
    assert migrations.vms.cordon.state is None
    assert migrations.ops._running == {}


async def test_one_drain_at_a_time_and_a_cancel_before_the_first_vm(
    migrations: MigrationService,
) -> None:
    vms = migrations.vms
    names = sorted(unique("d") for _ in range(3))
    for name in names:
        await vms.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    started = await drain.start(migrations, "hostb", MigrateOptions(), False, "maint", "unix:a")
    assert started["vms"] == names
    with pytest.raises(errors.Conflict, match="already running") as second:
        await drain.start(migrations, "hostc", MigrateOptions(), False, "x", "unix:b")
    assert second.value.details == {"op": started["op"]}
    op = migrations.ops.running(started["op"])
    assert op is not None
    migrations.ops.cancel(op)  # before its task took the first VM
    with trio.fail_after(10):
        await op.ended.wait()
    doc = await migrations.ops.get(started["op"])
    assert doc["state"] == "cancelled" and doc["error"]["code"] == "cancelled"
    assert doc["result"]["left"] == names and doc["result"]["failed"] == []
    assert vms.cordon.state is not None and vms.cordon.state.reason == "maint"
    assert vms.cordon.state.by == "unix:a"  # (the refused second drain changed nothing)


async def test_vms_that_cannot_leave_are_reported_and_stay(migrations: MigrationService) -> None:
    vms = migrations.vms
    run, cold = unique("run"), unique("cold")
    await vms.create(VmSpec(name=run, vcpus=1, memory_mib=64), start=True)
    await vms.create(VmSpec(name=cold, vcpus=1, memory_mib=64), start=False)
    started = await drain.start(migrations, "hostb", MigrateOptions(), False, "drain", "unix:a")
    op = migrations.ops.running(started["op"])
    assert op is not None
    progress: list[dict[str, object]] = []
    with trio.fail_after(30):
        await op.ended.wait()
    progress.append(dict(op.progress))
    doc = await migrations.ops.get(started["op"])
    assert doc["state"] == "failed"
    assert sorted(doc["error"]["details"]["vms"]) == sorted([run, cold])
    assert {f["vm"] for f in doc["result"]["failed"]} == {run, cold}
    assert progress == [{"current": None, "done": 2, "total": 2, "moved": 0, "failed": 2}]
    assert (await vms.get(run))["state"] == "running"
    assert (await vms.get(cold))["state"] == "stopped"


async def test_a_vm_that_arrives_while_draining_is_taken_too(
    migrations: MigrationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create that passed the cordon's check just before it records its VM after the
    drain listed the node's VMs: the drain lists them again and tries that one too."""
    vms = migrations.vms
    first, late = unique("first"), unique("late")
    await vms.create(VmSpec(name=first, vcpus=1, memory_mib=64), start=False)
    created = trio.Event()
    move = drain._move

    async def move_when_created(d: drain.Drain, name: str) -> None:
        if name == first:  # the drain's first pass ends only after the late create
            await created.wait()
        await move(d, name)

    monkeypatch.setattr(drain, "_move", move_when_created)
    async with trio.open_nursery() as nursery, vms.locked(late):
        nursery.start_soon(vms.create, VmSpec(name=late, vcpus=1, memory_mib=64), False)
        await trio.testing.wait_all_tasks_blocked(0.05)  # past the check, at the lock
        started = await drain.start(migrations, "hostb", MigrateOptions(), False, "maint", "unix:a")
    created.set()
    assert started["vms"] == [first]
    assert await vms.records.get(late) is not None
    op = migrations.ops.running(started["op"])
    assert op is not None
    with trio.fail_after(30):
        await op.ended.wait()
    doc = await migrations.ops.get(started["op"])
    # the test driver migrates nothing: both were tried, both stay, none is left out
    assert [f["vm"] for f in doc["result"]["failed"]] == [first, late]
    assert doc["result"]["left"] == []
    assert doc["state"] == "failed" and doc["error"]["details"]["vms"] == [first, late]
    assert op.progress["total"] == 2 and op.progress["done"] == 2


async def test_a_vm_already_migrating_is_waited_for(migrations: MigrationService) -> None:
    """vm.migrate operations started before the drain (recorded as outgoing.start records
    them): one moves its VM away, which counts as moved with that operation; the other
    fails, and the drain then tries the VM itself (the test driver refuses)."""
    vms, ops = migrations.vms, migrations.ops
    gone, stays = unique("gone"), unique("stays")
    for name in (gone, stays):
        await vms.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    away = await ops.start("migrate_out", gone, "default", "hostc:7443", {"offline": True})
    back = await ops.start("migrate_out", stays, "default", "hostc:7443", {})
    started = await drain.start(migrations, "hostb", MigrateOptions(), False, "drain", "unix:a")
    op = ops.running(started["op"])
    assert op is not None
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert op.progress["current"] in (gone, stays) and op.progress["done"] == 0  # waiting
    await vms.forget(gone)  # (what the end of a migration does on the source)
    await ops.finish(away, "succeeded", {"offline": True})
    await ops.finish(back, "failed", None, errors.MigrationFailed("the destination refused"))
    with trio.fail_after(30):
        await op.ended.wait()
    doc = await ops.get(started["op"])
    assert doc["result"]["moved"] == [
        {"vm": gone, "op": away.id, "destination": "hostc:7443", "offline": True}
    ]
    [failed] = doc["result"]["failed"]
    assert failed["vm"] == stays and failed["op"] is None  # the drain's own try, refused
    assert failed["error"]["code"] == "unavailable"  # (no node certificate here)
    assert doc["state"] == "failed" and doc["error"]["details"]["vms"] == [stays]


async def test_a_cancel_while_waiting_for_an_earlier_migration(
    migrations: MigrationService,
) -> None:
    vms, ops = migrations.vms, migrations.ops
    name = unique("busy")
    await vms.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    earlier = await ops.start("migrate_out", name, "default", "hostc:7443", {})
    started = await drain.start(migrations, "hostb", MigrateOptions(), False, "drain", "unix:a")
    op = ops.running(started["op"])
    assert op is not None
    await trio.testing.wait_all_tasks_blocked(0.05)
    ops.cancel(op)
    with trio.fail_after(10):
        await op.ended.wait()
    doc = await ops.get(started["op"])
    assert doc["state"] == "cancelled" and doc["result"]["left"] == [name]
    assert earlier.state == "running"  # the earlier migration is its own operator's
    await ops.finish(earlier, "failed", None, errors.MigrationFailed("x"))
