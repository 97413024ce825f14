"""Reverting a VM to one of its snapshots (``vm.snapshot.revert``).

libvirt gives the VM back the definition it had when the snapshot was taken, with its
disks' contents (and, for a snapshot of a running VM, its memory and state). NovaCron's
view of the VM follows, so that its record, its placement and its tenant's quota say
what the guest has:

- The VM's spec becomes the one the snapshot's definition carries in NovaCron's
  metadata: its vCPUs, memory, their maxima, CPU and memory policy, huge pages, disks
  (their sizes and limits) and NICs as they were. Only the restart policy stays the
  VM's (it is the daemon's, not libvirt's).
- A size or policy other than the VM's is checked as a resize is (the tenant's quota
  without the VM's current share, a NUMA placement, hugepage multiples) and placed anew.
- The snapshot's definition is fitted to the VM's placement (pins, NUMA tuning, huge
  pages) before libvirt reverts, by libvirt's redefinition of the snapshot: the guest
  never runs on CPUs the placement has since given to another VM (a snapshot from
  before a resize, or one that arrived unpinned with a migration).
- A snapshot whose devices differ from the VM's (disks by device name, NICs by MAC) is
  refused with ``conflict`` naming them, before anything changes: a disk or NIC added
  since would vanish from the guest (a volume of the pool left unaccounted), one
  removed since may be gone. Attach or detach them to match, then revert.
- A snapshot without NovaCron's metadata (taken of a domain NovaCron did not make) is
  reverted as libvirt has it; the VM's record is left as it is.

Order: placement, record, the snapshot's description (carrying the record's spec and
placement, so the reverted domain's metadata says what the record does), the revert. A
refusal or failure puts back the placement, the record and the description.
A crash between the record and the revert leaves the record with the snapshot's spec
over a domain that was not reverted; reconciliation finds it as it finds a resize cut in
half (a stopped domain is given the record's size; for a running one the record follows
libvirt within the VM's room, or it is reported), and asking for the revert again
completes it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.state.db import VmRecord
from novacron.vm import domain_xml
from novacron.vm.resize import check_room, placed_anew
from novacron.vm.service import VmService, log
from novacron.vm.spec import VmSpec

# what a placement is made from: when one of them changes, the VM is placed anew
PLACED_BY = (
    "vcpus",
    "memory_mib",
    "max_vcpus",
    "max_memory_mib",
    "cpu_policy",
    "memory_policy",
    "hugepage_kib",
)


def spec_then(described: str, now: VmSpec) -> VmSpec | None:
    """The VM's spec as the snapshot description ``described`` holds it (its
    ``<domain>``'s NovaCron metadata), with ``now``'s restart policy; None without
    metadata (or with metadata no release reads)."""
    dom = ET.fromstring(described).find("domain")  # noqa: S314 - from libvirtd
    if dom is None:
        return None
    managed = domain_xml.parse_managed(ET.tostring(dom, encoding="unicode"))
    if managed is None:
        return None
    try:
        then = VmSpec.from_dict(managed.spec)
    except (TypeError, ValueError, KeyError):
        return None
    return replace(then, name=now.name, tenant=now.tenant, restart=now.restart)


def device_changes(now: VmSpec, then: VmSpec) -> list[str]:
    """How the VM's devices differ from the snapshot's: ``"disk vdb added since"``,
    ``"nic 52:54:00:.. removed since"``; empty when they are the same."""
    found = []
    for kind, had, has in (
        ("disk", set(then.disk_targets()), set(now.disk_targets())),
        ("nic", {n.mac for n in then.nics}, {n.mac for n in now.nics}),
    ):
        found += [f"{kind} {d} added since" for d in sorted(has - had)]
        found += [f"{kind} {d} removed since" for d in sorted(had - has)]
    return found


def fitted(described: str, spec: VmSpec, placement: dict[str, Any] | None) -> str:
    """The snapshot description with each definition it holds carrying ``spec`` in its
    metadata and placed as ``placement`` says (``domain_xml.retarget``: pins, NUMA
    tuning, huge pages, the metadata's): the reverted domain says what the record does."""
    doc = ET.fromstring(described)  # noqa: S314 - from libvirtd

    def placed(el: ET.Element) -> ET.Element:
        domain_xml.set_spec(el, spec)
        text = domain_xml.retarget(ET.tostring(el, encoding="unicode"), placement, None)
        return ET.fromstring(text)  # noqa: S314 - domain_xml's own output

    domain_xml.replace_snapshot_domains(doc, placed)
    return ET.tostring(doc, encoding="unicode")


def _placed_by(spec: VmSpec) -> tuple[Any, ...]:
    return tuple(getattr(spec, f) for f in PLACED_BY)


async def revert(vms: VmService, name: str, snapshot: str) -> None:
    tenant = (await vms.record(name)).tenant
    # the tenant's lock first, as vm.create and a resize take them
    async with vms.tenant_lock(tenant), vms.changing(name):
        rec = await vms.record(name)
        now = VmSpec.from_dict(rec.spec)
        described, current = await vms.hv_pool.run(vms.hv.snapshot_description, name, snapshot)
        then = spec_then(described, now)
        if then is None:
            await vms.hv_pool.run(vms.hv.snapshot_revert, name, snapshot)
        else:
            changed = device_changes(now, then)
            if changed:
                raise errors.Conflict(
                    f"snapshot {snapshot!r} of vm {name!r} has other devices than the vm"
                    f" ({', '.join(changed)}): attach or detach them to match, then revert",
                    {"vm": name, "snapshot": snapshot, "devices": changed},
                )
            resized = _placed_by(then) != _placed_by(now)
            if resized:
                await check_room(vms, name, then)
            with trio.CancelScope(shield=True):
                await _revert_as(vms, rec, snapshot, then, resized, (described, current))
        runtime = await vms.hv_pool.run(vms.hv.state, name)
        desired = runtime.state if runtime.state in ("running", "paused") else "stopped"
        await vms.records.set_desired_state(name, desired)
    log.info(
        "vm.snapshot_reverted",
        extra=kv(
            vm=name,
            snapshot=snapshot,
            vcpus=None if then is None else f"{now.vcpus}->{then.vcpus}",
            memory_mib=None if then is None else f"{now.memory_mib}->{then.memory_mib}",
        ),
    )


async def _revert_as(
    vms: VmService,
    rec: VmRecord,
    snapshot: str,
    then: VmSpec,
    resized: bool,
    description: tuple[str, bool],
) -> None:
    """The revert, with the record at ``then`` and the snapshot placed as the VM is
    (anew when ``resized``); everything put back on failure."""
    name, was, old = rec.name, rec.spec, rec.placement
    described, current = description
    placing = placed_anew(vms, name, then, old) if resized else nullcontext(old)
    with placing as placement:
        await vms.records.set_spec(name, then.to_dict(), placement)
        try:
            fitted_now = fitted(described, then, placement)
            await vms.hv_pool.run(vms.hv.snapshot_describe_again, name, fitted_now, current)
            try:
                await vms.hv_pool.run(vms.hv.snapshot_revert, name, snapshot)
            except BaseException:
                await vms.hv_pool.run(vms.hv.snapshot_describe_again, name, described, current)
                raise
        except BaseException:
            await vms.records.set_spec(name, was, old)
            raise
