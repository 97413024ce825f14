"""Moving a stopped VM to another node (``vm.migrate`` of a VM that is not running).

No memory moves and no QEMU runs: libvirt moves the definition peer to peer
(:func:`~novacron.migration.libvirt_job.migrate_offline`) and the daemons move the
record, the placement and, in a cluster, the name's ownership. Disks given by path
must be on storage both nodes reach, as for a live migration (the destination checks
that it finds every disk and every file a qcow2 image needs before anything moves);
volumes in the source's pool are copied into volumes the destination makes for them
before the definition moves (:mod:`~novacron.migration.disk_copy`), and the source's
are deleted once the destination recorded the VM.

1. The source calls ``migration.prepare`` with ``offline: true``: the destination runs
   the same checks as for a live migration (quota, networks, disks), places the VM and
   answers with the domain XML retargeted to it; it then waits for libvirt to define
   the VM there.
2. In a cluster the source commits the name's ownership to the destination (the
   switch-over's transaction of a live migration), then lets libvirt move the VM.
3. The destination records the VM, stopped, once libvirt defined it there; the source
   forgets it once libvirt undefined it here.

Failures leave the VM defined on exactly one node. libvirt refusing before it defined
the VM on the destination: the source tells the destination, which releases the
placement. libvirt defining it there but failing to undefine it here (its last step):
the source asks how the destination ended; if it recorded the VM, the source
undefines its own copy, else the destination has removed the copy libvirt left there
(:func:`~novacron.migration.libvirt_job.remove_offline_arrival`).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from novacron import errors
from novacron.client import connect_tls
from novacron.logs import kv
from novacron.migration import disk_copy, incoming, libvirt_job, snapshot_moves, volume_copies
from novacron.migration.ops import Operation
from novacron.migration.source_run import (
    Run,
    channel_to,
    conclude,
    failures,
    peer_of,
    prepare_there,
    tell_abort,
)
from novacron.vm.spec import VmSpec

if TYPE_CHECKING:
    from novacron.migration.service import MigrationService

log = logging.getLogger("novacron.migration")

ARRIVAL_WAIT_S = 300.0  # from prepare to libvirt defining the VM here (or the source's word)
RESULT_WAIT_S = 60.0  # for the destination's word on how its side ended


@dataclass
class Arrival:
    """A stopped VM on its way here."""

    op: Operation
    spec: VmSpec
    uuid: str
    placement: dict[str, Any] | None
    source: str  # the source's certificate name
    copy: disk_copy.Incoming | None = None  # the volumes copied here first, if any
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # fitted to this node
    # cancelled only by the source's word (migration.abort: it still holds the VM); an
    # operator's op.cancel of this side is refused (MigrationService.cancel)
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)


async def prepare(
    svc: MigrationService,
    source: str,
    name: str,
    xml: str,
    options: dict[str, Any],
    disk_bytes: int = 0,
    snapshots: list[Any] | None = None,
) -> dict[str, Any]:
    """The destination's ``migration.prepare`` of a stopped VM: placed here and, when
    it has disks in its node's pool, an empty volume made here for each, for the
    source to copy into (the definition then names these). ``snapshots``: the
    descriptions of its snapshots, defined here once it arrived
    (:mod:`~novacron.migration.snapshot_moves`)."""
    managed, spec = await incoming.admit(svc, name, xml)
    copies = volume_copies.pool_disks(spec)
    if copies and not svc.channel_port:
        raise errors.Unavailable("this node does not accept volume copies (no TLS listener)")
    async with incoming.placing(svc, spec, xml) as (placement, placed_xml):
        await volume_copies.check_room(svc.vms, name, copies, disk_bytes)
        paths = await volume_copies.make(svc.vms, name, copies, empty=True)
        try:
            targets = [t for t, _ in copies]
            dest_xml = volume_copies.named_in(placed_xml, targets, paths)
            fit = incoming.fit_here(svc, name, placement)
            moves = snapshot_moves.files_moved(xml, targets, paths)
            fitted = snapshot_moves.prepared(snapshots, managed.uuid, xml, fit, moves)
            params = {**options, "uuid": managed.uuid, "offline": True}
            if paths:  # (what a restart deletes if the VM never arrives)
                params["volumes"] = paths
            if fitted:  # (what a restart defines if the VM arrives)
                params[snapshot_moves.CARRIED] = fitted
            op = await svc.ops.start("migrate_in", name, spec.tenant, source, params)
        except BaseException:
            with trio.CancelScope(shield=True):
                await volume_copies.delete(svc.vms, paths)
            raise
    copy = None
    if paths:
        limits = [disk_copy.limit_of(d.size_gib or 0) for _, d in copies]
        copy = disk_copy.Incoming(token=secrets.token_bytes(32), paths=paths, limits=limits)
    arrival = Arrival(
        op=op,
        spec=spec,
        uuid=managed.uuid,
        placement=placement,
        source=source,
        copy=copy,
        snapshots=fitted,
    )
    op.on_cancel = arrival.cancel.cancel
    svc.arrivals[op.id] = arrival
    svc.spawn(receive, svc, arrival, op=op)
    answer = {
        "op": op.id,
        "libvirt_uri": svc.config.libvirt_peer_uri,
        "dest_xml": dest_xml,
        "node": svc.config.node_name,
        "offline": True,
    }
    if copy is not None:
        answer["copy"] = {
            "token": copy.token,
            "channel_port": svc.channel_port,
            "disks": [t for t, _ in copies],
        }
    return answer


def arrived(state: str) -> bool:
    return state not in ("arriving", "absent")


async def wait_defined(svc: MigrationService, name: str, uuid: str, wait_s: float) -> str:
    """:func:`~novacron.migration.libvirt_job.offline_arrival`'s word once the VM is
    defined here, or its last word after ``wait_s``."""
    return await incoming.poll_libvirt(
        svc,
        arrived,
        wait_s,
        incoming.POLL_S,
        "absent",
        libvirt_job.offline_arrival,
        name,
        uuid,
    )


async def receive(svc: MigrationService, arrival: Arrival) -> None:
    """Waits for libvirt to define the VM here, or for the source to give up; then
    records the VM, or releases its placement. Only the source's word ends the wait
    early (an operator cancels the move on its source:
    :meth:`~novacron.migration.service.MigrationService.cancel`), and only the source's
    word removes a definition libvirt made here: the source gives up only while it still
    holds the VM (libvirt failed before defining it here, or failed to undefine it
    there)."""
    vms, op = svc.vms, arrival.op
    state = "absent"
    copy_failure: str | None = None
    with arrival.cancel:
        if arrival.copy is not None:
            svc.ops.report(op, "copying")
            try:
                await disk_copy.receive(vms, arrival.copy)
            except errors.NovaCronError as exc:
                copy_failure = exc.message
            svc.ops.report(op, "waiting")
        if copy_failure is None:
            state = await wait_defined(svc, op.vm, arrival.uuid, ARRIVAL_WAIT_S)
    svc.arrivals.pop(op.id, None)
    given_up = arrival.cancel.cancel_called  # (also when it came as the wait ended)
    with trio.CancelScope(shield=True):
        if given_up:  # the wait was cut short: what libvirt holds here now
            state = await vms.hv_pool.run(libvirt_job.offline_arrival, vms.hv, op.vm, arrival.uuid)
        if arrived(state) and not given_up:
            async with vms.locked(op.vm):
                await vms.records.insert(
                    op.vm, arrival.uuid, op.tenant, arrival.spec.to_dict(), arrival.placement, state
                )
                await vms.arrived(op.vm, op.tenant, arrival.source)
                refused = await snapshot_moves.redefine(vms, op.vm, arrival.snapshots)
            log.info("migration.offline_arrived", extra=kv(vm=op.vm, op=op.id, state=state))
            result: dict[str, Any] = {"node": svc.config.node_name, "state": state}
            if arrival.copy is not None:
                result["storage"] = arrival.copy.stats.to_dict()
            if arrival.snapshots:
                result["snapshots"] = snapshot_moves.defined(arrival.snapshots, refused)
            await svc.ops.finish(op, "succeeded", result)
            return
        if given_up:
            why = "cancelled by the source"
        elif copy_failure is not None:
            why = copy_failure
        else:
            why = f"libvirt did not define the vm here within {ARRIVAL_WAIT_S:g} s"
        if given_up and arrived(state):
            removed = await vms.hv_pool.run(
                libvirt_job.remove_offline_arrival, vms.hv, op.vm, arrival.uuid
            )
            if removed:
                why += "; the definition libvirt left here was removed"
                state = "absent"
        if state == "absent":  # (what libvirt defines here later, reconciliation adopts)
            vms.placement.release(op.vm)
            if arrival.copy is not None:
                await volume_copies.delete(svc.vms, arrival.copy.paths)
        log.warning("migration.offline_not_arrived", extra=kv(vm=op.vm, op=op.id, why=why))
        await svc.ops.finish(op, "failed", None, errors.MigrationFailed(why, {"vm": op.vm}))


# -- the source ----------------------------------------------------------------------


async def move(run: Run, address: str) -> bool:
    """The source's side: prepare there, switch the ownership over (in a cluster), let
    libvirt move the definition, settle. True when the VM moved."""
    svc, op = run.svc, run.op
    files, host = peer_of(run, address)
    began = trio.current_time()
    moved = False
    answer: dict[str, Any] = {}
    dest: dict[str, Any] = {}
    rec = await svc.vms.record(op.vm)
    sources = volume_copies.sources(svc.vms, VmSpec.from_dict(rec.spec))
    run.copied_from = [path for _, path in sources]
    with failures(run, address):
        async with connect_tls(address, files, server_name=host) as peer:
            try:
                with run.prep:
                    _, answer = await prepare_there(run, peer, offline=True)
                    if sources or answer.get("copy"):
                        await _copy_out(run, host, answer, sources)
                    if run.lock is not None and svc.locks is not None:
                        svc.ops.report(op, "switching")
                        await svc.locks.commit(run.lock)
                if run.prep.cancelled_caught:
                    raise errors.Cancelled("cancelled before the migration started")
            except errors.NovaCronError:
                if answer:
                    await tell_abort(peer, answer)
                raise
            svc.ops.report(op, "moving")
            await snapshot_moves.hold_or_abort(run, partial(tell_abort, peer, answer))
            try:
                moved = await _libvirt_move(run, peer, answer)
            finally:
                await snapshot_moves.settle(run, moved)
            if moved:
                dest = await _result(peer, answer)
    return await conclude(run, moved, answer, dest, began)


async def _copy_out(
    run: Run, host: str, answer: dict[str, Any], sources: list[tuple[str, str]]
) -> None:
    """Copies the VM's volumes into those the destination made for them."""
    svc, op = run.svc, run.op
    copy = volume_copies.agreed(answer.get("copy"), [t for t, _ in sources], op.vm)
    stats = run.storage = disk_copy.CopyStats()

    def report(stats: disk_copy.CopyStats) -> None:
        svc.ops.report(op, "copying", {"disks": len(sources), **stats.to_dict()})

    report(stats)
    log.info("migration.copying_volumes", extra=kv(vm=op.vm, op=op.id, disks=len(sources)))
    channel = await channel_to(run, host, copy["channel_port"], copy["token"])()
    async with channel:
        await disk_copy.send(svc.vms, channel, run.copied_from, stats, report)


async def _result(peer: Any, answer: dict[str, Any]) -> dict[str, Any]:
    """How the destination's side ended (empty when it does not say in time)."""
    with trio.move_on_after(RESULT_WAIT_S):
        try:
            got = await peer.call("migration.result", op=answer["op"])
        except (errors.NovaCronError, trio.BrokenResourceError, OSError) as exc:
            log.warning("migration.offline_result_unknown", extra=kv(error=str(exc)))
            return {}
        return got if isinstance(got, dict) else {}
    return {}


async def _libvirt_move(run: Run, peer: Any, answer: dict[str, Any]) -> bool:
    """libvirt moves the definition. When it fails, the VM moved anyway if libvirt
    undefined it here, or if the destination recorded it (libvirt failed only to
    undefine it here: that copy goes now). Otherwise the destination is told, and
    removes whatever libvirt left there."""
    op, vms = run.op, run.svc.vms
    try:
        log.info("migration.offline_started", extra=kv(vm=op.vm, op=op.id))
        await vms.hv_pool.run(
            libvirt_job.migrate_offline,
            vms.hv,
            op.vm,
            str(answer["libvirt_uri"]),
            str(answer["dest_xml"]),
        )
        return True
    except errors.NovaCronError as exc:
        log.warning("migration.libvirt_failed", extra=kv(vm=op.vm, op=op.id, error=exc.message))
        run.fail(errors.MigrationFailed(exc.message, {"vm": op.vm, "cause": exc.code}))
    rec = await vms.record(op.vm)
    if await vms.hv_pool.run(libvirt_job.offline_arrival, vms.hv, op.vm, rec.uuid) == "absent":
        return True  # libvirt undefined it here: its last step was done
    await tell_abort(peer, answer)
    dest = await _result(peer, answer)
    if dest.get("state") != "succeeded":
        return False
    removed = await vms.hv_pool.run(libvirt_job.remove_offline_arrival, vms.hv, op.vm, rec.uuid)
    log.warning("migration.offline_source_removed", extra=kv(vm=op.vm, removed=removed))
    return removed
