"""Snapshots that move with their VM (``vm.migrate``, offline or live).

QEMU keeps each internal snapshot inside the VM's qcow2 images; libvirt keeps its
description (name, parent, state, the domain as it was) on the host, and refuses to
migrate a domain that has any. So a move carries the descriptions itself, and the images
carry the snapshots: a stopped VM's volumes copied byte for byte, or disks on storage
both nodes see. (A running VM's volumes in its node's pool cannot: QEMU's mirror copies
what the guest sees; such a VM is refused.)

1. The source exports every description, parents first (:func:`export`), and offers
   them with ``migration.prepare`` (``snapshots``, :func:`offer`).
2. The destination checks them (:func:`offered`: the VM's own, internal, one tree) and
   fits the domain each describes to this host exactly as it fits the VM's definition
   (:func:`fitted`: its placement, console log and emulator; the volumes it made for the
   copies in place of the source's files); its operation keeps them for a restart.
3. Just before libvirt's call, libvirt on the source forgets the descriptions, never the
   snapshots in the images (:func:`hold`); the operation keeps them
   (``params.snapshots_held``) for as long as only the source knows them.
4. libvirt moves the VM.
5. The destination redefines the descriptions once it recorded the VM
   (:func:`redefine`). When the VM did not move, the source redefines them
   (:func:`give_back`), and a restart in between does so at the daemon's start.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.vm import domain_xml

if TYPE_CHECKING:
    from novacron.migration.source_run import Run
    from novacron.vm.service import VmService

log = logging.getLogger("novacron.migration")

MAX_SNAPSHOTS = 256  # what one migration.prepare carries (an array's limit)
MAX_NAME = 255
MAX_XML = 1 << 20  # one description, as a domain's XML (migration.prepare's xml)
HELD = "snapshots_held"  # the source's operation's parameter while only it knows them
CARRIED = "snapshots"  # the destination's: the descriptions to define (after a restart too)


def _internal_only(doc: ET.Element) -> bool:
    """Whether every part of the snapshot lives inside the images (no external file)."""
    memory = doc.find("memory")
    if memory is not None and memory.get("snapshot") not in (None, "internal", "no"):
        return False
    return all(d.get("snapshot") in (None, "internal", "no") for d in doc.findall("disks/disk"))


async def export(vms: VmService, name: str) -> list[dict[str, Any]]:
    """The VM's snapshots as the move carries them (:meth:`Hypervisor.snapshot_export`);
    ``conflict`` for what cannot move: a snapshot kept in files of its own (external),
    or more than ``MAX_SNAPSHOTS``."""
    snaps = await vms.hv_pool.run(vms.hv.snapshot_export, name)
    if len(snaps) > MAX_SNAPSHOTS:
        raise errors.Conflict(
            f"vm {name!r} has {len(snaps)} snapshots; at most {MAX_SNAPSHOTS} move with it",
            {"vm": name, "snapshots": len(snaps)},
        )
    external = [
        s["name"]
        for s in snaps
        if not _internal_only(ET.fromstring(s["xml"]))  # noqa: S314 - from libvirtd
    ]
    if external:
        raise errors.Conflict(
            f"vm {name!r} has snapshots kept in files of their own ({', '.join(external)}), "
            "which do not move with it; delete them first",
            {"vm": name, "snapshots": external},
        )
    return snaps


def _bad(message: str, index: int) -> errors.InvalidParams:
    return errors.InvalidParams(f"snapshots[{index}]: {message}", {"param": f"snapshots[{index}]"})


def offered(raw: list[Any], uuid: str, max_xml: int) -> list[tuple[ET.Element, bool]]:
    """The destination's check of ``migration.prepare``'s ``snapshots``: each a map
    ``{"xml": str, "current": bool}``, a ``<domainsnapshot>`` of the VM ``uuid`` kept
    inside its images, named uniquely, its parent one given before it; at most one
    current. Their parsed descriptions and current flags; ``invalid_params`` otherwise."""
    if len(raw) > MAX_SNAPSHOTS:
        raise errors.InvalidParams(
            f"at most {MAX_SNAPSHOTS} snapshots move with a vm", {"param": "snapshots"}
        )
    seen: set[str] = set()
    found = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"xml", "current"}:
            raise _bad('must be a map of "xml" and "current"', i)
        xml, current = item["xml"], item["current"]
        if not isinstance(xml, str) or len(xml) > max_xml or not isinstance(current, bool):
            raise _bad(f"xml must be a string of at most {max_xml} bytes, current a bool", i)
        try:
            doc = ET.fromstring(xml)  # noqa: S314 - a peer node's libvirt XML, re-checked by libvirt
        except ET.ParseError as exc:
            raise _bad(f"not XML ({exc})", i) from None
        name = (doc.findtext("name") or "").strip()
        if doc.tag != "domainsnapshot" or not name or len(name) > MAX_NAME or name in seen:
            raise _bad("not a <domainsnapshot> with a name of its own", i)
        if not name.isprintable() or "/" in name:
            raise _bad("a snapshot's name must be printable and have no '/'", i)
        parent = doc.findtext("parent/name")
        if parent is not None and parent not in seen:
            raise _bad(f"its parent {parent!r} must come before it", i)
        if not _internal_only(doc):
            raise _bad("a snapshot kept in files of its own does not move", i)
        domains = [d for tag in domain_xml.SNAPSHOT_DOMAIN_TAGS for d in doc.findall(tag)]
        if doc.find("domain") is None or any(d.findtext("uuid") != uuid for d in domains):
            raise _bad("it must describe this vm (its <domain> with the vm's uuid)", i)
        seen.add(name)
        found.append((doc, current))
    if sum(current for _, current in found) > 1:
        raise errors.InvalidParams("at most one snapshot is current", {"param": "snapshots"})
    return found


def files_moved(xml: str, targets: list[str], paths: list[str]) -> dict[str, str]:
    """``{source's file: this node's}`` of the disks ``targets`` of the domain ``xml``,
    whose copies are at ``paths`` here."""
    dom = ET.fromstring(xml)  # noqa: S314 - checked by incoming.admit already
    where = dict(zip(targets, paths, strict=True))
    moves = {}
    for el in dom.findall("devices/disk"):
        target, source = el.find("target"), el.find("source")
        dev = target.get("dev") if target is not None else None
        if dev in where and source is not None and "file" in source.attrib:
            moves[source.attrib["file"]] = where[dev]
    return moves


def fitted(
    snapshots: list[tuple[ET.Element, bool]],
    vm_xml: str,
    fit: Callable[[str, bool], str],
    moves: dict[str, str],
) -> list[dict[str, Any]]:
    """The descriptions with each domain they hold fitted to this node: ``fit(xml,
    same_size)`` (``same_size``: it has the vCPUs and memory of the VM's definition
    ``vm_xml``, so the VM's placement here fits it too), then its disks' files at
    ``moves``. As :func:`redefine` takes them; ``invalid_params`` when one does not fit."""
    vm = ET.fromstring(vm_xml)  # noqa: S314 - checked by incoming.admit already
    size = (vm.findtext("vcpu"), vm.findtext("memory"))
    out = []
    for doc, current in snapshots:
        name = doc.findtext("name") or ""

        def fitted_here(el: ET.Element, name: str = name) -> ET.Element:
            same = (el.findtext("vcpu"), el.findtext("memory")) == size
            try:
                text = fit(ET.tostring(el, encoding="unicode"), same)
            except ValueError as exc:
                raise errors.InvalidParams(
                    f"snapshot {name!r} does not fit this node: {exc}", {"param": "snapshots"}
                ) from None
            new = ET.fromstring(text)  # noqa: S314 - domain_xml's own output
            for disk in new.findall("devices/disk/source"):
                if disk.get("file") in moves:
                    disk.set("file", moves[disk.attrib["file"]])
            return new

        domain_xml.replace_snapshot_domains(doc, fitted_here)
        xml = ET.tostring(doc, encoding="unicode")
        out.append({"name": name, "xml": xml, "current": current})
    return out


def fit_for(
    placement: dict[str, Any] | None, console_log: str | None, emulator: str | None
) -> Callable[[str, bool], str]:
    """:func:`fitted`'s ``fit``: a domain retargeted as the VM's own definition is, the
    placement only where it fits (its pins and cells name the VM's vCPUs and memory)."""

    def fit(xml: str, same_size: bool) -> str:
        return domain_xml.retarget(xml, placement if same_size else None, console_log, emulator)

    return fit


def prepared(
    raw: list[Any] | None,
    uuid: str,
    vm_xml: str,
    fit: Callable[[str, bool], str],
    moves: dict[str, str],
) -> list[dict[str, Any]]:
    """The destination's part of ``migration.prepare``: the descriptions offered
    (:func:`offered`, each at most ``MAX_XML``), each fitted to this node
    (:func:`fitted`)."""
    if not raw:
        return []
    return fitted(offered(raw, uuid, MAX_XML), vm_xml, fit, moves)


def offer(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """``migration.prepare``'s ``snapshots`` for :func:`export`'s (none: not named, so
    that a destination of an earlier release takes a VM without snapshots)."""
    if not snaps:
        return {}
    return {"snapshots": [{"xml": s["xml"], "current": s["current"]} for s in snaps]}


async def hold_or_abort(run: Run, abort: Callable[[], Awaitable[None]]) -> None:
    """:func:`hold`; when libvirt fails part way, those it forgot are given back, the
    destination is told to stop waiting (``abort``) and the error goes on."""
    try:
        await hold(run)
    except BaseException:
        await give_back(run)
        with trio.CancelScope(shield=True):
            await abort()
        raise


async def settle(run: Run, moved: bool) -> None:
    """After libvirt's move: the destination has them (``moved``), or this node takes
    them back."""
    if moved:
        run.op.params.pop(HELD, None)
    else:
        await give_back(run)


async def hold(run: Run) -> None:
    """libvirt here forgets the run's descriptions (the images keep the snapshots); the
    operation keeps them until the move ends (what a restart gives back). ``conflict``
    when the VM has a snapshot the run did not export (made since): libvirt would refuse
    the move, or the images would travel without it."""
    svc, op, snaps = run.svc, run.op, run.snapshots
    if snaps:
        await svc.ops.note(op, **{HELD: snaps})
    await svc.vms.hv_pool.run(svc.vms.hv.snapshot_forget, op.vm, [s["name"] for s in snaps])
    if snaps:
        log.info("migration.snapshots_held", extra=kv(vm=op.vm, snapshots=len(snaps)))


async def give_back(run: Run) -> None:
    """The VM did not move: libvirt here takes the run's descriptions back."""
    if not run.snapshots:
        return
    with trio.CancelScope(shield=True):
        refused = await redefine(run.svc.vms, run.op.vm, run.snapshots)
        run.op.params.pop(HELD, None)
        if refused:
            run.fail(
                errors.MigrationFailed(
                    f"the vm stayed here but libvirt refused to take back "
                    f"{len(refused)} snapshot(s): {refused[0]['error']}",
                    {"vm": run.op.vm, "snapshots": [r["name"] for r in refused]},
                )
            )


async def redefine(vms: VmService, name: str, snaps: list[dict[str, Any]]) -> list[dict[str, str]]:
    """libvirt here takes the descriptions ``snaps`` (parents first) of the VM's
    snapshots; those it refused (logged): ``{"name", "error"}``. A VM no longer defined
    here has none refused (it is elsewhere)."""
    refused: list[dict[str, str]]
    try:
        if await vms.hv_pool.run(vms.hv.lookup, name) is None:
            return []
        refused = await vms.hv_pool.run(vms.hv.snapshot_redefine, name, snaps)
    except errors.NovaCronError as exc:  # (libvirt gone meanwhile: none of them)
        refused = [{"name": s["name"], "error": exc.message} for s in snaps]
    for r in refused:
        log.warning("migration.snapshot_refused", extra=kv(vm=name, **r))
    if len(refused) < len(snaps):
        log.info("migration.snapshots_defined", extra=kv(vm=name, snapshots=len(snaps)))
    return refused


def defined(snaps: list[dict[str, Any]], refused: list[dict[str, str]]) -> dict[str, Any]:
    """A move's result's ``snapshots``: how many the destination defined, which not."""
    return {"defined": len(snaps) - len(refused), "refused": refused}
