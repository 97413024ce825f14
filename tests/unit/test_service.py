"""VmService and reconcile in-process on libvirt's test driver (shared per process)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import libvirt
import pytest
import trio

from novacron import errors
from novacron.vm import domain_xml
from novacron.vm.reconcile import reconcile
from novacron.vm.service import VmService
from novacron.vm.spec import DiskSpec, VmSpec
from tests.unit.conftest import unique


@pytest.fixture
def svc(vm_service: VmService) -> VmService:
    return vm_service


async def test_create_start_pause_and_state_machine(svc: VmService) -> None:
    name = unique("vm")
    vm = await svc.create(
        VmSpec(name=name, vcpus=1, memory_mib=64, disks=(DiskSpec(size_gib=1),)), start=True
    )
    assert vm["state"] == "running"
    assert vm["disks"][0]["managed"]
    with pytest.raises(errors.Conflict):
        await svc.resume(name)
    assert (await svc.pause(name))["desired_state"] == "paused"
    with pytest.raises(errors.Conflict):
        await svc.delete(name, force=False, keep_disks=False)
    result = await svc.delete(name, force=True, keep_disks=False)
    assert len(result["volumes_deleted"]) == 1
    with pytest.raises(errors.NotFound):
        await svc.get(name)


async def test_per_vm_lock_serialises_and_is_dropped_when_idle(svc: VmService) -> None:
    name = unique("vm")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    results: list[str] = []

    async def op(action: str) -> None:
        try:
            await getattr(svc, action)(name)
            results.append(action)
        except errors.Conflict:
            results.append(f"{action}!")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(op, "start")
        nursery.start_soon(op, "start")
    assert sorted(results) == ["start", "start!"]  # exactly one start took effect
    assert svc._locks == {}


async def test_reconcile_adopts_redefines_and_finishes_deletes(svc: VmService) -> None:
    adopt, redefine, gone = unique("adopt"), unique("redefine"), unique("gone")
    for name in (adopt, redefine, gone):
        await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64, tenant="t"), start=False)
    # crash between define and commit: the record is missing
    await svc.db_pool.run(svc.store.delete_vm, adopt)
    # the domain vanished behind our back
    conn = libvirt.open("test:///default")
    conn.lookupByName(redefine).undefine()
    # a delete interrupted after it was marked
    await svc.db_pool.run(svc.store.set_desired_state, gone, "deleting")
    conn.close()
    found = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
    assert {(adopt, "adopted"), (redefine, "redefined"), (gone, "deleted")} <= found
    assert (await svc.get(adopt))["tenant"] == "t"
    assert (await svc.get(redefine))["state"] == "stopped"
    with pytest.raises(errors.NotFound):
        await svc.get(gone)
    # a second pass finds nothing more to repair
    again = {f["finding"] for f in await reconcile(svc)}
    assert not again & {"adopted", "redefined", "deleted", "failed"}
    for name in (adopt, redefine):
        await svc.delete(name, force=True, keep_disks=False)


async def test_reconcile_adopts_a_domain_with_the_state_it_is_in(svc: VmService) -> None:
    """A record lost while its VM ran (a state store lost or restored from an older
    backup): the adopted record wants the state the domain is in, so no drift is
    reported for it, now or at the next start."""
    running, paused = unique("running"), unique("paused")
    for name in (running, paused):
        await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=True)
    await svc.pause(paused)
    for name in (running, paused):
        await svc.db_pool.run(svc.store.delete_vm, name)
    # (the placements these VMs still hold in this process are reported as conflicts:
    # a restarted daemon's are empty; only the state findings matter here)
    found = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
    assert {(running, "adopted"), (paused, "adopted")} <= found
    assert not {(running, "state_drift"), (paused, "state_drift")} & found
    assert (await svc.get(running))["desired_state"] == "running"
    assert (await svc.get(paused))["desired_state"] == "paused"
    again = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
    assert not {(n, k) for n in (running, paused) for k in ("adopted", "state_drift")} & again
    for name in (running, paused):
        await svc.delete(name, force=True, keep_disks=False)


async def test_reconcile_leaves_an_interrupted_arrivals_domain_to_the_migration(
    svc: VmService,
) -> None:
    """The domain of an incoming migration a restart interrupted may still be arriving
    (and fail) or be what a failed Finish left: it is not adopted (the migration
    service records it once libvirt says it arrived)."""
    arriving = unique("arriving")
    await svc.create(VmSpec(name=arriving, vcpus=1, memory_mib=64), start=False)
    await svc.db_pool.run(svc.store.delete_vm, arriving)  # a domain with no record
    found = await reconcile(svc, migrating_in=frozenset({arriving}))
    assert arriving not in {f["vm"] for f in found}
    with pytest.raises(errors.NotFound):
        await svc.get(arriving)
    # once no migration claims it, it is adopted as any other
    found = await reconcile(svc)
    assert (arriving, "adopted") in {(f["vm"], f["finding"]) for f in found}
    await svc.delete(arriving, force=True, keep_disks=False)


async def test_update_changes_the_restart_policy_in_record_and_metadata(svc: VmService) -> None:
    """Both copies change (the metadata is what a lost store is rebuilt from)."""
    name = unique("upd")
    made = await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=True)
    assert made["restart"] == "on-failure"
    doc = await svc.update(name, "never")
    assert doc["restart"] == "never" and doc["state"] == "running"  # no restart of the VM
    rec = await svc.records.get(name)
    assert rec is not None and rec.spec["restart"] == "never"
    managed = domain_xml.parse_managed(await svc.hv_pool.run(svc.hv.xml, name))
    assert managed is not None and managed.spec["restart"] == "never"
    assert (await svc.update(name, "never"))["restart"] == "never"  # (nothing to change)
    with pytest.raises(errors.NotFound):
        await svc.update(unique("ghost"), "never")
    await svc.delete(name, force=True, keep_disks=False)


async def test_a_snapshot_needs_every_writable_disk_in_qcow2(svc: VmService) -> None:
    """QEMU keeps an internal snapshot inside each writable disk's qcow2 image: a VM with a
    raw disk is refused before libvirt is asked, and nothing is made."""
    raw = unique("snap")
    disks = (DiskSpec(size_gib=1), DiskSpec(path="/var/lib/images/data.raw", format="raw"))
    await svc.create(VmSpec(name=raw, vcpus=1, memory_mib=64, disks=disks), start=False)
    with pytest.raises(errors.Conflict, match=r"vdb \(raw file\) is not one") as refused:
        await svc.snapshot_create(raw, "s1", "")
    assert refused.value.details == {"vm": raw, "disks": ["vdb"]}
    assert await svc.snapshot_list(raw) == []
    await svc.delete(raw, force=True, keep_disks=False)

    fine = unique("snap")
    await svc.create(VmSpec(name=fine, vcpus=1, memory_mib=64, disks=disks[:1]), start=False)
    assert (await svc.snapshot_create(fine, "s1", "qcow2 only"))["name"] == "s1"
    await svc.delete(fine, force=True, keep_disks=False)


def test_snapshot_blockers_leave_out_read_only_and_empty_drives() -> None:
    xml = """<domain><devices>
      <disk type='file' device='disk'><driver type='qcow2'/><source file='/a.qcow2'/>
        <target dev='vda'/></disk>
      <disk type='file' device='disk'><driver type='raw'/><source file='/b.raw'/>
        <target dev='vdb'/><readonly/></disk>
      <disk type='file' device='cdrom'><driver type='raw'/><target dev='sda'/></disk>
      <disk type='network' device='disk'><driver type='qcow2'/>
        <source protocol='nbd' name='x'><host name='h'/></source><target dev='vdc'/></disk>
      <disk type='block' device='disk'><driver type='raw'/><source dev='/dev/sdz'/>
        <target dev='vdd'/></disk>
    </devices></domain>"""
    assert [(d.target, d.format, d.kind) for d in domain_xml.snapshot_blockers(xml)] == [
        ("vdc", "qcow2", "network"),
        ("vdd", "raw", "block"),
    ]


async def test_reconcile_makes_an_old_file_console_a_pty_for_the_next_start(
    svc: VmService,
) -> None:
    """A VM defined before consoles were pseudo-terminals (its serial port a file) gets a
    pty logging to the same file in its definition at the daemon's start, running or
    not, so its next start gives it one however it is started (``virsh start`` too)."""
    name = unique("oldcon")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    serial = (
        "<serial type='file'><source path='/state/consoles/old.log' append='on'/>"
        "<target port='0'/></serial>"
    )
    conn = libvirt.open("test:///default")
    try:
        inactive = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        conn.defineXML(inactive.replace("</devices>", serial + "</devices>"))
        conn.lookupByName(name).create()  # running with it, as an older release started it
        found = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
        assert (name, "console_upgraded") in found
        upgraded = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert "<serial type='pty'>" in upgraded and "/state/consoles/old.log" in upgraded
        assert (await svc.get(name))["state"] == "running"  # (the running VM is left be)
        again = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
        assert (name, "console_upgraded") not in again
    finally:
        conn.close()
    await svc.delete(name, force=True, keep_disks=False)


async def test_disks_discard_as_configured_and_an_older_vms_disks_follow(
    svc: VmService,
) -> None:
    """A new VM's disks pass the guest's discards down as ``[hypervisor] disk_discard``
    says (unmap: a thin volume gets its space back); a VM defined without it (an earlier
    release, or before the setting changed) gets it at the daemon's start, once."""
    assert svc.config.disk_discard == "unmap"
    name = unique("discard")
    await svc.create(
        VmSpec(name=name, vcpus=1, memory_mib=64, disks=(DiskSpec(size_gib=1),)), start=False
    )
    conn = libvirt.open("test:///default")
    config = svc.config  # (the service is shared: its config is put back)
    try:

        def drivers() -> list[str | None]:
            xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            return [d.get("discard") for d in ET.fromstring(xml).iter("driver")]

        assert drivers() == ["unmap"]
        inactive = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        conn.defineXML(inactive.replace(" discard='unmap'", ""))
        assert drivers() == [None]
        found = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
        assert (name, "disk_discard_set") in found
        assert drivers() == ["unmap"]
        again = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
        assert (name, "disk_discard_set") not in again
        # the setting changed: every VM's disks follow it at the next daemon start
        svc.config = replace(config, disk_discard="ignore")
        found = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
        assert (name, "disk_discard_set") in found
        assert drivers() == ["ignore"]
    finally:
        svc.config = config
        conn.close()
    await svc.delete(name, force=True, keep_disks=False)


async def test_reconcile_gives_an_old_vm_the_guest_agents_port(svc: VmService) -> None:
    """A VM defined before every domain had the guest agent's port gets it in its
    definition at the daemon's start (there from its next start on), once. (A domain of
    type qemu in libvirt's test driver stands for one an earlier release defined.)"""
    name = unique("oldagent")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    conn = libvirt.open("test:///default")
    try:
        inactive = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        conn.defineXML(inactive.replace("<domain type='test'", "<domain type='qemu'", 1))
        assert (await svc.get(name))["agent"] == "none"
        found = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
        assert (name, "agent_channel_added") in found
        assert (await svc.get(name))["agent"] == "disconnected"
        again = {(f["vm"], f["finding"]) for f in await reconcile(svc)}
        assert (name, "agent_channel_added") not in again
    finally:
        conn.close()
    await svc.delete(name, force=True, keep_disks=False)
