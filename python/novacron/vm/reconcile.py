"""Start-up reconciliation of the state store (desired) with libvirt (actual).

Findings, each logged and returned so ``node.info`` can report them:

* ``redefined`` — a record whose domain vanished: defined again from the stored spec.
* ``adopted`` — a domain carrying NovaCron metadata but no record (a crash between
  define and commit, or a state store lost or restored from an older backup): its
  record is restored from the metadata, its desired state the one it is in (running
  or paused; stopped otherwise). Not the domain of an incoming migration a restart
  interrupted: that one is the migration service's.
* ``deleted`` — a record marked ``deleting`` (a crash mid-delete): the delete is finished.
* ``uuid_changed`` — the domain's UUID differs from the record: the record follows libvirt.
* ``state_drift`` — the VM is not in the state the operator last asked for (reported only).
* ``stale_volume`` — a volume in the daemon's pool that no VM uses (reported only).
* ``placement_conflict`` — a stored NUMA placement that no longer fits this host (its
  threads or memory are gone or taken, or the partition changed); the VM keeps its
  pins but its resources are not accounted (reported only).
* ``resized`` — a record whose vCPUs or memory the domain does not have yet (a crash
  in the middle of a resize): the stopped domain is given them.
* ``size_changed`` — a running VM's record (or metadata) has vCPUs or memory (within its
  ``max_vcpus``, ``max_memory_mib``) its definition lacks (a crash in the middle of a
  change while it ran): the record and metadata follow libvirt's definition.
* ``migrated_away`` — a record whose domain is gone while an outgoing migration of it
  was interrupted by a restart: libvirt finished moving it; the record is dropped.
* ``failed`` — a repair that did not work; the message says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from novacron import errors
from novacron.logs import kv
from novacron.state.db import VmRecord
from novacron.vm import domain_xml
from novacron.vm.driver import RuntimeState
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec

log = logging.getLogger("novacron.vm.reconcile")

Finding = dict[str, Any]


async def _redefine(
    svc: VmService, name: str, uuid: str, spec: VmSpec, placement: dict[str, Any] | None
) -> None:
    xml = await svc.domain_xml(spec, uuid, svc.disk_paths(spec), placement)
    await svc.hv_pool.run(svc.hv.define, xml)


def _shape(spec: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("vcpus", "memory_mib", "max_vcpus", "max_memory_mib")
    return tuple(spec.get(k) for k in keys)


def _said(shape: tuple[Any, ...]) -> str:
    vcpus, mib, most, most_mib = shape
    return (
        f"{vcpus} vCPU(s){f' (max {most})' if most else ''},"
        f" {mib} MiB{f' (max {most_mib})' if most_mib else ''}"
    )


async def _finish_resize(
    svc: VmService,
    rec: VmRecord,
    xml: str,
    was: tuple[Any, ...],
    actual: RuntimeState | None,
    note: Callable[[str, str, str], None],
) -> None:
    """The record has a resize the domain lacks (a crash between the two writes)."""
    now = _shape(rec.spec)
    if actual is None or actual.state != "stopped":
        note(rec.name, "failed", f"resize to {_said(now)} not finished: the VM runs")
        return
    try:
        resized = domain_xml.resized(xml, VmSpec.from_dict(rec.spec), rec.placement)
        await svc.hv_pool.run(svc.hv.define, resized)
    except (ValueError, errors.NovaCronError) as exc:
        note(rec.name, "failed", f"resize not finished: {exc}")
        return
    note(
        rec.name,
        "resized",
        f"finished a resize interrupted by a crash: {_said(was)} -> {_said(now)}",
    )


async def _follow_live_change(
    svc: VmService, rec: VmRecord, stale_metadata: bool, note: Callable[[str, str, str], None]
) -> None:
    """The record (or the domain's metadata: ``stale_metadata``) differs from the vCPUs
    or memory libvirt defines the VM with, within its room: a running VM's change a
    crash cut short (the record is written before libvirt changes). Both follow libvirt."""
    vcpus, mib = await svc.hv_pool.run(svc.hv.defined_size, rec.name)
    spec = VmSpec.from_dict(rec.spec)
    if not 1 <= vcpus <= spec.vcpu_slots or not 16 <= mib <= spec.memory_ceiling_mib:
        note(rec.name, "failed", f"libvirt defines {vcpus} vCPU(s), {mib} MiB: beyond its room")
        return
    now = replace(spec, vcpus=vcpus, memory_mib=mib)
    if now == spec and not stale_metadata:
        return
    await svc.save_spec(rec.name, now, rec.placement)
    note(
        rec.name,
        "size_changed",
        f"record {spec.vcpus} vCPU(s), {spec.memory_mib} MiB -> libvirt {vcpus} vCPU(s),"
        f" {mib} MiB: a change of the running VM cut short by a crash",
    )


async def reconcile(
    svc: VmService,
    migrating_out: frozenset[str] = frozenset(),
    migrating_in: frozenset[str] = frozenset(),
) -> list[Finding]:
    """``migrating_out``/``migrating_in``: VMs whose outgoing or incoming migration a
    restart interrupted. The domain of one coming in is not adopted: it may still be
    arriving (and fail), or be what a failed migration left; the migration service
    records it once libvirt says it arrived."""
    findings: list[Finding] = []

    def note(vm: str, finding: str, detail: str) -> None:
        findings.append({"vm": vm, "finding": finding, "detail": detail})
        level = logging.ERROR if finding == "failed" else logging.WARNING
        log.log(level, "reconcile." + finding, extra=kv(vm=vm, detail=detail))

    records = dict(await svc.records.reload())
    domains = await svc.hv_pool.run(svc.hv.managed_domains)
    runtimes = await svc.hv_pool.run(svc.hv.all_states)

    for name, xml in sorted(domains.items()):
        managed = domain_xml.parse_managed(xml)
        if managed is None or name in records or name in migrating_in:
            continue
        runtime = runtimes.get(name)
        # the domain's own state is the only evidence of what was asked of it
        found = runtime.state if runtime is not None else "stopped"
        desired = found if found in ("running", "paused") else "stopped"
        try:
            rec = await svc.adopt(managed, desired)
        except (TypeError, ValueError, errors.NovaCronError) as exc:
            note(name, "failed", f"cannot adopt domain: {exc}")
            continue
        records[name] = rec
        note(name, "adopted", f"domain with NovaCron metadata had no record; desired {desired}")

    for name, rec in sorted(records.items()):
        if rec.desired_state == "deleting":
            await svc.finish_delete(rec)
            note(name, "deleted", "finished a delete interrupted by a crash")
            continue
        if name not in domains and name in migrating_out:
            await svc.forget(name)
            note(name, "migrated_away", "an interrupted outgoing migration finished: not here")
            continue
        svc.managed.add(name, rec.tenant)
        if rec.placement is not None:
            try:
                svc.placement.restore(name, rec.placement)
            except errors.NovaCronError as exc:
                note(name, "placement_conflict", f"stored placement not restored: {exc.message}")
        if name not in domains:
            try:
                await _redefine(svc, name, rec.uuid, VmSpec.from_dict(rec.spec), rec.placement)
            except errors.NovaCronError as exc:
                note(name, "failed", f"domain vanished and could not be redefined: {exc.message}")
                continue
            note(name, "redefined", "libvirt domain was missing; defined again from the record")
            continue
        managed = domain_xml.parse_managed(domains[name])
        if managed is not None and managed.uuid != rec.uuid:
            await svc.records.set_uuid(name, managed.uuid)
            note(name, "uuid_changed", f"record {rec.uuid} -> libvirt {managed.uuid}")
        # (the XML read above shows a file console; its definition is looked at only then)
        if domain_xml.with_pty_console(domains[name]) is not None:
            try:
                if await svc.hv_pool.run(svc.hv.upgrade_console, name):
                    note(
                        name, "console_upgraded", "its serial port is a pty from its next start on"
                    )
            except errors.NovaCronError as exc:
                note(name, "failed", f"console not made a pty: {exc.message}")
        if domain_xml.with_agent_channel(domains[name]) is not None:
            try:
                if await svc.hv_pool.run(svc.hv.add_agent_channel, name):
                    note(
                        name,
                        "agent_channel_added",
                        "the guest agent's port is there from its next start on",
                    )
            except errors.NovaCronError as exc:
                note(name, "failed", f"guest agent port not added: {exc.message}")
        discard = svc.config.disk_discard
        if domain_xml.with_disk_discard(domains[name], discard) is not None:
            try:
                if await svc.hv_pool.run(svc.hv.set_disk_discard, name, discard):
                    note(
                        name,
                        "disk_discard_set",
                        f"its disks' discard is {discard} from its next start on",
                    )
            except errors.NovaCronError as exc:
                note(name, "failed", f"disks' discard not set: {exc.message}")
        actual = runtimes.get(name)
        roomy = bool(rec.spec.get("max_vcpus") or rec.spec.get("max_memory_mib"))
        stale = managed is not None and _shape(managed.spec) != _shape(rec.spec)
        if stale and roomy and actual is not None and actual.state != "stopped":
            await _follow_live_change(svc, rec, True, note)  # (a stopped one's is a resize)
        elif stale:
            assert managed is not None
            await _finish_resize(svc, rec, domains[name], _shape(managed.spec), actual, note)
        elif roomy:
            await _follow_live_change(svc, rec, False, note)
        if actual is not None and actual.state != rec.desired_state:
            note(name, "state_drift", f"desired {rec.desired_state}, actual {actual.state}")

    if not svc.hv.is_test_driver:
        used: set[str] = set()
        for rec in records.values():
            used.update(str(p) for p in svc.managed_volume_paths(rec))
        for path in await svc.hv_pool.run(svc.hv.pool_volumes, svc.config.storage_pool):
            if path not in used:
                note(path.rsplit("/", 1)[-1], "stale_volume", f"{path} belongs to no VM")
    log.info("reconcile.done", extra=kv(vms=len(svc.managed), findings=len(findings)))
    return findings
