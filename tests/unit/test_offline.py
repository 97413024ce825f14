"""A stopped VM's offline move, in-process on libvirt's test driver: the destination's
side (prepare, recording once libvirt defined the VM, giving up at the source's word)
and the source's decision when libvirt's call fails (the test driver cannot migrate,
so every call here fails; the destination is a scripted peer). Real moves between two
libvirtds: tests/system/test_offline_migration.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from novacron import errors
from novacron.migration import offline
from novacron.migration.options import MigrateOptions
from novacron.migration.service import MigrationService
from novacron.migration.source_run import Run
from novacron.vm import domain_xml
from novacron.vm.spec import DiskSpec, VmSpec
from tests.migration_harness import source_xml
from tests.unit.conftest import unique


async def prepared(migrations: MigrationService, name: str) -> dict[str, Any]:
    """The destination's answer to a source's offline prepare of ``name``."""
    xml = source_xml(name, uuid=str(uuid.uuid4()))
    answer: dict[str, Any] = await offline.prepare(migrations, "node2", name, xml, {})
    return answer


def placed(svc: MigrationService, name: str) -> bool:
    return svc.vms.placement.placer.allocation(name) is not None


async def test_the_destination_records_the_vm_stopped_once_libvirt_defined_it(
    migrations: MigrationService,
) -> None:
    name = unique("cold")
    answer = await prepared(migrations, name)
    assert answer["offline"] is True and answer["node"] == migrations.config.node_name
    assert "token" not in answer and "channel_port" not in answer  # nothing streams
    assert placed(migrations, name) and await migrations.vms.records.get(name) is None
    # the same VM prepared twice at once: refused
    with pytest.raises(errors.AlreadyExists):
        await offline.prepare(migrations, "node2", name, source_xml(name), {})
    await trio.to_thread.run_sync(migrations.vms.hv.define, answer["dest_xml"])  # libvirt's Finish
    with trio.fail_after(10):
        ended = await migrations.result("node2", answer["op"])
    assert ended["state"] == "succeeded" and ended["result"]["state"] == "stopped", ended
    rec = await migrations.vms.records.get(name)
    assert rec is not None and rec.desired_state == "stopped" and placed(migrations, name)
    assert rec.uuid in answer["dest_xml"]
    doc = await migrations.ops.get(answer["op"])
    assert doc["params"]["offline"] is True and doc["kind"] == "migrate_in"
    await migrations.vms.delete(name, force=True, keep_disks=True)


async def test_the_source_giving_up_releases_everything_here(migrations: MigrationService) -> None:
    name = unique("cold")
    answer = await prepared(migrations, name)
    with pytest.raises(errors.NotFound):  # another source's word is not taken
        await migrations.abort_incoming("node3", answer["op"])
    await migrations.abort_incoming("node2", answer["op"])
    with trio.fail_after(10):
        ended = await migrations.result("node2", answer["op"])
    assert ended["state"] == "failed" and ended["error"]["message"] == "cancelled by the source"
    assert not placed(migrations, name) and await migrations.vms.records.get(name) is None
    assert migrations.vms.hv.lookup(name) is None
    again = await offline.prepare(migrations, "node2", name, source_xml(name), {})
    await migrations.abort_incoming("node2", again["op"])


async def test_a_live_prepare_still_needs_its_stream_socket(migrations: MigrationService) -> None:
    with pytest.raises(errors.InvalidParams, match="stream_socket"):
        await migrations.prepare("node2", "v", source_xml("v"), None, {})


class Destination:
    """The destination daemon as the source's ``peer`` sees it, saying how its side ended."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.calls: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.calls.append(method)
        if method == "migration.result":
            return {"state": self.state, "result": None, "error": None}
        return {"op": params["op"], "aborting": True}


async def stopped_vm(migrations: MigrationService) -> tuple[str, Run]:
    name = unique("cold")
    await migrations.vms.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    op = await migrations.ops.start("migrate_out", name, "default", "peer:9443", {"offline": True})
    return name, Run(migrations, op, MigrateOptions(), offline=True)


ANSWER = {"op": "op-dest", "libvirt_uri": "test:///default", "dest_xml": "<domain/>"}


async def test_libvirt_failing_leaves_the_vm_here_when_the_destination_did_not_record_it(
    migrations: MigrationService,
) -> None:
    name, run = await stopped_vm(migrations)
    dest = Destination("failed")
    assert await offline._libvirt_move(run, dest, ANSWER) is False
    assert dest.calls == ["migration.abort", "migration.result"]  # told first, then asked
    assert run.failure is not None and run.failure.code == "migration_failed"
    assert (
        migrations.vms.hv.lookup(name) is not None
        and await migrations.vms.records.get(name) is not None
    )
    await migrations.vms.delete(name, force=True, keep_disks=True)


async def test_libvirt_failing_after_the_destination_recorded_it_removes_the_copy_here(
    migrations: MigrationService,
) -> None:
    """libvirt defined the VM there and failed to undefine it here: the destination has
    it, so the copy here goes (and the operation succeeds: the VM moved)."""
    name, run = await stopped_vm(migrations)
    dest = Destination("succeeded")
    assert await offline._libvirt_move(run, dest, ANSWER) is True
    assert migrations.vms.hv.lookup(name) is None
    await migrations.vms.forget(name)


async def test_a_copy_here_that_runs_is_never_removed(migrations: MigrationService) -> None:
    name, run = await stopped_vm(migrations)
    await trio.to_thread.run_sync(migrations.vms.hv.start, name)  # behind the daemon's back
    assert await offline._libvirt_move(run, Destination("succeeded"), ANSWER) is False
    assert migrations.vms.hv.lookup(name) is not None
    await migrations.vms.delete(name, force=True, keep_disks=True)


async def test_only_the_source_gives_up_a_vm_libvirt_defined_here(
    migrations: MigrationService,
) -> None:
    """The source's word removes what libvirt defined here (the source still holds the
    VM). An operator cancels the move on its source: here, that is refused."""
    name = unique("cold")
    answer = await prepared(migrations, name)
    op = migrations.ops.running(answer["op"])
    assert op is not None
    with pytest.raises(errors.Conflict, match="cancel it on its source node"):
        migrations.cancel(op)
    assert not op.cancel_requested
    migrations.vms.hv.define(answer["dest_xml"])  # (no checkpoint: not seen yet)
    await migrations.abort_incoming("node2", answer["op"])
    with trio.fail_after(10):
        ended = await migrations.result("node2", answer["op"])
    assert ended["state"] == "failed", ended
    message = ended["error"]["message"]
    assert message == "cancelled by the source; the definition libvirt left here was removed"
    assert migrations.vms.hv.lookup(name) is None and not placed(migrations, name)
    assert answer["op"] not in migrations.arrivals


async def test_a_vm_with_pool_disks_gets_empty_volumes_here_to_copy_into(
    migrations: MigrationService,
) -> None:
    """prepare makes a volume in this node's pool for each pool disk (a path disk stays
    as it is), names them in the definition it answers with, and hands out a token for
    the copy; the source giving up deletes them. Without a TLS listener: refused."""
    name = unique("copy")
    disks = (DiskSpec(size_gib=1), DiskSpec(path="/dev/null", format="raw"), DiskSpec(size_gib=2))
    xml = source_xml(name, uuid=str(uuid.uuid4()), disks=disks)
    port = migrations.channel_port
    try:
        migrations.channel_port = 0
        with pytest.raises(errors.Unavailable, match="no TLS listener"):
            await offline.prepare(migrations, "node2", name, xml, {})
        assert not placed(migrations, name)
        migrations.channel_port = 7444
        answer = await offline.prepare(migrations, "node2", name, xml, {})
    finally:
        migrations.channel_port = port
    vms = migrations.vms
    copy = answer["copy"]
    assert copy["disks"] == ["vda", "vdc"] and copy["channel_port"] == 7444
    assert len(copy["token"]) == 32
    images = migrations.config.images_dir
    made = [str(images / f"{name}-vda.qcow2"), str(images / f"{name}-vdc.qcow2")]
    pool = await trio.to_thread.run_sync(vms.hv.pool_volumes, migrations.config.storage_pool)
    assert set(made) <= set(pool)
    sources = [d.path for d in domain_xml.parse_disks(answer["dest_xml"])]
    assert sources == [made[0], "/dev/null", made[1]]
    doc = await migrations.ops.get(answer["op"])
    assert doc["params"]["volumes"] == made  # (what a restart deletes)
    await migrations.abort_incoming("node2", answer["op"])
    with trio.fail_after(10):
        ended = await migrations.result("node2", answer["op"])
    assert ended["state"] == "failed" and ended["error"]["message"] == "cancelled by the source"
    pool = await trio.to_thread.run_sync(vms.hv.pool_volumes, migrations.config.storage_pool)
    assert not set(made) & set(pool) and not placed(migrations, name)


async def test_a_definition_whose_disks_differ_from_its_spec_is_refused(
    migrations: MigrationService,
) -> None:
    name = unique("copy")
    xml = source_xml(name, uuid=str(uuid.uuid4()), disks=(DiskSpec(size_gib=1),))
    without = domain_xml.without_disk(xml, "vda")
    migrations.channel_port, port = 7444, migrations.channel_port
    try:
        with pytest.raises(errors.InvalidParams, match="do not match its spec"):
            await offline.prepare(migrations, "node2", name, without, {})
    finally:
        migrations.channel_port = port
    pool = await trio.to_thread.run_sync(
        migrations.vms.hv.pool_volumes, migrations.config.storage_pool
    )
    assert not [p for p in pool if name in p] and not placed(migrations, name)


async def test_copies_this_pool_has_no_room_for_are_refused_before_anything_is_made(
    migrations: MigrationService,
) -> None:
    name = unique("copy")
    xml = source_xml(name, uuid=str(uuid.uuid4()), disks=(DiskSpec(size_gib=1),))
    migrations.channel_port, port = 7444, migrations.channel_port
    try:
        with pytest.raises(errors.InsufficientResources, match="GiB free"):
            await offline.prepare(migrations, "node2", name, xml, {}, disk_bytes=1 << 50)
    finally:
        migrations.channel_port = port
    pool = await trio.to_thread.run_sync(
        migrations.vms.hv.pool_volumes, migrations.config.storage_pool
    )
    assert not [p for p in pool if name in p] and not placed(migrations, name)
