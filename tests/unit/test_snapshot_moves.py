"""Snapshots moving with a stopped VM: the destination's check of the descriptions a
source offers, their domains fitted to this node, and the whole destination's side on
libvirt's test driver (the descriptions defined once the VM arrived). libvirt's test
driver cannot forget a description alone (metadata only), so the source's side runs
between two real libvirtds: tests/system/test_snapshot_moves.py."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from novacron import errors
from novacron.migration import offline, snapshot_moves
from novacron.migration.options import MigrateOptions
from novacron.migration.service import MigrationService
from novacron.migration.source_run import Run
from novacron.vm import domain_xml
from novacron.vm.spec import DiskSpec, VmSpec
from tests.migration_harness import source_xml
from tests.unit.conftest import unique

UUID = "0b5c2b0e-4a8e-4c1e-9f53-7d1d1b7a6a10"
MAX_XML = 1 << 20


def description(
    name: str, domain: str, parent: str | None = None, state: str = "shutoff", disk: str = "vda"
) -> str:
    """A snapshot's description as libvirt writes it: internal, of the domain ``domain``."""
    parent_el = f"<parent><name>{parent}</name></parent>" if parent else ""
    return (
        f"<domainsnapshot><name>{name}</name><state>{state}</state>{parent_el}"
        "<creationTime>1796524767</creationTime><memory snapshot='no'/>"
        f"<disks><disk name='{disk}' snapshot='internal'/></disks>{domain}</domainsnapshot>"
    )


def offer(*xmls: str, current: int = -1) -> list[dict[str, Any]]:
    return [{"xml": x, "current": i == len(xmls) + current} for i, x in enumerate(xmls)]


def test_a_tree_of_the_vms_own_internal_snapshots_is_taken_in_order() -> None:
    dom = source_xml("sm", uuid=UUID)
    got = snapshot_moves.offered(
        offer(description("a", dom), description("b", dom, "a"), description("c", dom, "a")),
        UUID,
        MAX_XML,
    )
    assert [(d.findtext("name"), cur) for d, cur in got] == [
        ("a", False),
        ("b", False),
        ("c", True),
    ]


@pytest.mark.parametrize(
    ("items", "why"),
    [
        ([{"xml": "<domainsnapshot/>"}], 'a map of "xml" and "current"'),
        (["<domainsnapshot/>"], 'a map of "xml" and "current"'),
        ([{"xml": b"<x/>", "current": False}], "xml must be a string"),
        ([{"xml": "<a>", "current": False}], "not XML"),
        ([{"xml": "<domain/>", "current": False}], "with a name of its own"),
        ([{"xml": "<domainsnapshot><name/></domainsnapshot>", "current": 0}], "current a bool"),
    ],
)
def test_what_is_not_a_snapshots_description_is_refused(items: list[Any], why: str) -> None:
    with pytest.raises(errors.InvalidParams, match=why) as caught:
        snapshot_moves.offered(items, UUID, MAX_XML)
    assert caught.value.details == {"param": "snapshots[0]"}


def test_descriptions_that_do_not_fit_together_or_this_vm_are_refused() -> None:
    dom = source_xml("sm", uuid=UUID)
    other = source_xml("sm", uuid=str(uuid.uuid4()))
    cases = [
        (offer(description("a", dom), description("a", dom)), "a name of its own"),
        (offer(description("b", dom, "a"), description("a", dom)), "must come before it"),
        (offer(description("a", other)), "with the vm's uuid"),
        (offer(description("a", "")), "with the vm's uuid"),
        (offer(description("a/b", dom)), "no '/'"),
        (offer(description("a\tb", dom)), "printable"),
        (
            offer(description("a", dom).replace("snapshot='internal'", "snapshot='external'")),
            "files of its own",
        ),
        (
            offer(
                description("a", dom).replace(
                    "<memory snapshot='no'/>", "<memory snapshot='external' file='/m'/>"
                )
            ),
            "files of its own",
        ),
        (
            [{"xml": description("a", dom), "current": True}] * 1
            + [{"xml": description("b", dom), "current": True}],
            "at most one",
        ),
        ([{"xml": description("a", dom), "current": False}] * 257, "at most 256"),
        ([{"xml": description("a", dom) + " " * MAX_XML, "current": False}], "at most 1048576"),
    ]
    for items, why in cases:
        with pytest.raises(errors.InvalidParams, match=why):
            snapshot_moves.offered(items, UUID, MAX_XML)


@given(st.text(max_size=300))
def test_any_text_is_taken_or_refused_with_invalid_params(text: str) -> None:
    try:
        got = snapshot_moves.offered([{"xml": text, "current": False}], UUID, MAX_XML)
    except errors.InvalidParams:
        return
    assert len(got) == 1 and got[0][0].tag == "domainsnapshot"


def test_each_domain_a_description_holds_is_fitted_to_this_node() -> None:
    """Pins and console as for the VM's own definition (the placement only where the
    domain has the VM's size), the copied volumes' files in place of the source's."""
    here = {
        "cpu": "shared",
        "memory": "strict",
        "hugepage_kib": None,
        "cells": [{"node": 0, "first_vcpu": 0, "vcpus": 1, "memory_kib": 65536, "cpus": [2, 3]}],
        "emulator_cpus": [2, 3],
    }
    vm = source_xml("sm", uuid=UUID, disks=(DiskSpec(size_gib=1), DiskSpec(path="/shared/x")))
    smaller = source_xml("sm", uuid=UUID, memory_mib=32, disks=(DiskSpec(size_gib=1),))
    inactive = f"<inactiveDomain{vm.strip()[len('<domain') : -len('</domain>')]}</inactiveDomain>"
    running = description("b", vm, "a", state="running").replace(
        "</domainsnapshot>", inactive + "</domainsnapshot>"
    )
    offered = snapshot_moves.offered(offer(description("a", smaller), running), UUID, MAX_XML)
    moves = snapshot_moves.files_moved(vm, ["vda"], ["/b/images/sm-vda.qcow2"])
    assert moves == {"/var/lib/novacron/images/sm-vda.qcow2": "/b/images/sm-vda.qcow2"}
    fit = snapshot_moves.fit_for(here, "/b/consoles/sm.log", "/usr/bin/qemu-b")
    a, b = snapshot_moves.fitted(offered, vm, fit, moves)
    assert (a["name"], a["current"], b["name"], b["current"]) == ("a", False, "b", True)
    for snap, pinned in ((a, False), (b, True)):
        doc = ET.fromstring(snap["xml"])
        domains = doc.findall("domain") + doc.findall("inactiveDomain")
        assert len(domains) == (2 if pinned else 1)
        assert doc.findtext("name") == snap["name"] and doc.find("disks/disk") is not None
        for dom in domains:
            text = ET.tostring(dom, encoding="unicode")
            files = [d.path for d in domain_xml.parse_disks(text.replace(dom.tag, "domain"))]
            assert files[0] == "/b/images/sm-vda.qcow2" and files[1:] in ([], ["/shared/x"])
            assert dom.find("devices/serial/log").get("file") == "/b/consoles/sm.log"  # type: ignore[union-attr]
            assert dom.find("devices/emulator") is None  # (none to replace in these)
            pins = [p.get("cpuset") for p in dom.findall("cputune/vcpupin")]
            assert pins == (["2-3"] if pinned else []), pins


def test_a_domain_this_node_cannot_fit_is_refused() -> None:
    """A description whose domain is not NovaCron's (no metadata to place it by)."""
    dom = source_xml("sm", uuid=UUID)
    bare = ET.fromstring(dom)
    bare.remove(bare.find("metadata"))  # type: ignore[arg-type]
    alien = description("a", ET.tostring(bare, encoding="unicode"))
    offered = snapshot_moves.offered(offer(alien), UUID, MAX_XML)
    fit = snapshot_moves.fit_for(None, None, None)
    with pytest.raises(errors.InvalidParams, match="snapshot 'a' does not fit this node"):
        snapshot_moves.fitted(offered, dom, fit, {})


async def test_the_destination_defines_the_snapshots_once_the_vm_arrived(
    migrations: MigrationService,
) -> None:
    name = unique("snaps")
    vm_uuid = str(uuid.uuid4())
    xml = source_xml(name, uuid=vm_uuid, disks=(DiskSpec(path="/dev/null", format="raw"),))
    snaps = offer(description("first", xml), description("second", xml, "first"), current=-2)
    with pytest.raises(errors.InvalidParams, match="must come before it"):
        await offline.prepare(migrations, "node2", name, xml, {}, snapshots=snaps[::-1])
    answer = await offline.prepare(migrations, "node2", name, xml, {}, snapshots=snaps)
    hv = migrations.vms.hv
    await trio.to_thread.run_sync(hv.define, answer["dest_xml"])  # (libvirt's Finish)
    with trio.fail_after(10):
        ended = await migrations.result("node2", answer["op"])
    assert ended["state"] == "succeeded", ended
    assert ended["result"]["snapshots"] == {"defined": 2, "refused": []}
    listed = await trio.to_thread.run_sync(hv.snapshot_list, name)
    assert [(s["name"], s["current"]) for s in listed] == [("first", True), ("second", False)]
    exported = await trio.to_thread.run_sync(hv.snapshot_export, name)
    assert [s["name"] for s in exported] == ["first", "second"]
    log = str(migrations.vms.console_log(name))
    for snap in exported:
        dom = ET.fromstring(snap["xml"]).find("domain")
        assert dom is not None and dom.find("devices/serial/log").get("file") == log  # type: ignore[union-attr]
    # what libvirt has already is left alone; a refused one is named
    assert await trio.to_thread.run_sync(hv.snapshot_redefine, name, exported) == []
    await trio.to_thread.run_sync(hv.snapshot_delete, name, "second")
    bad = [{**exported[1], "xml": exported[1]["xml"].replace(vm_uuid, str(uuid.uuid4()))}]
    refused = await trio.to_thread.run_sync(hv.snapshot_redefine, name, bad)
    assert [r["name"] for r in refused] == ["second"] and refused[0]["error"]
    await migrations.vms.delete(name, force=True, keep_disks=True)


async def test_a_restart_gives_back_the_snapshots_an_interrupted_move_held(
    migration_service: MigrationService,
) -> None:
    """The source daemon restarted after libvirt forgot the descriptions and before the
    move ended, the VM still here: at its start it redefines those its operation held
    and drops them from the operation."""
    svc, hv = migration_service, migration_service.vms.hv
    name = unique("held")
    await svc.vms.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    await svc.vms.snapshot_create(name, "one", "")
    await svc.vms.snapshot_create(name, "two", "")
    held = await trio.to_thread.run_sync(hv.snapshot_export, name)
    for snap in ("two", "one"):  # (what the move's hold leaves; the test driver has no images)
        await trio.to_thread.run_sync(hv.snapshot_delete, name, snap)
    params = {"offline": True, snapshot_moves.HELD: held}
    op = await svc.ops.start("migrate_out", name, "default", "peer:9443", params)
    svc.interrupted = await svc.ops.recover()
    await svc.settle_outgoing([])
    listed = await trio.to_thread.run_sync(hv.snapshot_list, name)
    assert [(s["name"], s["current"]) for s in listed] == [("one", False), ("two", True)]
    row = await trio.to_thread.run_sync(svc.vms.store.get_operation, op.id)
    assert row is not None and row["state"] == "failed"
    assert row["params"] == {"offline": True}
    await svc.vms.delete(name, force=True, keep_disks=False)


async def test_a_snapshot_made_after_the_export_stops_the_move_and_none_is_forgotten(
    migrations: MigrationService,
) -> None:
    """A snapshot made after ``vm.migrate`` exported the others (while a stopped VM's
    volumes were copied, say) would not travel: the hold refuses with ``conflict``
    before libvirt forgets any, and the destination is told to stop waiting."""
    vms, hv = migrations.vms, migrations.vms.hv
    name = unique("newer")
    await vms.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    await vms.snapshot_create(name, "one", "")
    op = await migrations.ops.start("migrate_out", name, "default", "peer:9443", {})
    run = Run(migrations, op, MigrateOptions(), offline=True)
    run.snapshots = await snapshot_moves.export(vms, name)
    await vms.snapshot_create(name, "two", "")
    told: list[bool] = []

    async def abort() -> None:
        told.append(True)

    with pytest.raises(errors.Conflict, match=r"made after its move began \(two\)") as caught:
        await snapshot_moves.hold_or_abort(run, abort)
    assert caught.value.details == {"vm": name, "snapshots": ["two"]}
    assert told == [True]
    listed = await trio.to_thread.run_sync(hv.snapshot_list, name)
    assert sorted(s["name"] for s in listed) == ["one", "two"]
    assert snapshot_moves.HELD not in op.params
    # a VM that had none when the move began is refused alike
    run.snapshots = []
    with pytest.raises(errors.Conflict, match=r"\(one, two\)"):
        await snapshot_moves.hold_or_abort(run, abort)
    await vms.delete(name, force=True, keep_disks=False)


async def test_a_restarted_destination_defines_the_snapshots_of_a_vm_that_arrived(
    migration_service: MigrationService,
) -> None:
    """The destination daemon stopped after prepare (its operation keeps the fitted
    descriptions) and libvirt defined the VM meanwhile: at its start it records the VM
    and defines them."""
    svc, hv = migration_service, migration_service.vms.hv
    name = unique("back")
    vm_uuid = str(uuid.uuid4())
    xml = source_xml(name, uuid=vm_uuid, disks=(DiskSpec(path="/dev/null", format="raw"),))
    fit = snapshot_moves.fit_for(None, str(svc.vms.console_log(name)), None)
    carried = snapshot_moves.prepared(offer(description("only", xml)), vm_uuid, xml, fit, {})
    assert [s["name"] for s in carried] == ["only"]
    params = {"uuid": vm_uuid, "offline": True, snapshot_moves.CARRIED: carried}
    op = await svc.ops.start("migrate_in", name, "default", "node2", params)
    assert (await svc.ops.get(op.id))["params"][snapshot_moves.CARRIED] == ["only"]
    [row] = await svc.ops.recover()
    await trio.to_thread.run_sync(hv.define, xml)  # (libvirt defined it while the daemon was down)
    with trio.fail_after(10):
        await svc._resume_incoming(row)
    stored = await trio.to_thread.run_sync(svc.vms.store.get_operation, op.id)
    assert stored is not None and stored["state"] == "succeeded", stored
    assert stored["result"]["snapshots"] == {"defined": 1, "refused": []}
    listed = await trio.to_thread.run_sync(hv.snapshot_list, name)
    assert [(s["name"], s["current"]) for s in listed] == [("only", True)]
    await svc.vms.delete(name, force=True, keep_disks=True)
