"""The destination's side of a live migration.

``migration.prepare`` (called by the source daemon with its node certificate) checks
that the VM can come here, places it on this host's topology, and answers with a
one-time token, the channel port, how this node's libvirtd is reached, and the domain
XML retargeted to this host; it makes the directory the destination QEMU will listen
in (:mod:`~novacron.migration.qemu_socket`). A task then waits for the source's
channel, connects to the destination QEMU's socket once libvirt started it, and
rebuilds the stream (:func:`~novacron.migration.relay.relay_destination`).

Whatever the relay did, the outcome is libvirt's: the migration succeeded when the
domain is persistent and running here, failed when it is gone. Only then is the VM
recorded (success) or its placement released (failure).
"""

from __future__ import annotations

import logging
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from novacron import errors
from novacron.logs import kv
from novacron.migration import (
    libvirt_job,
    nbd_packing,
    qemu_socket,
    snapshot_moves,
    terms,
    volume_copies,
)
from novacron.migration.channel import close_gently
from novacron.migration.nbd_relay import NbdStats
from novacron.migration.ops import Operation
from novacron.migration.relay import RelayStats, announce, relay_destination, single_errors
from novacron.migration.stream import StreamReceiver, guest_page_limit
from novacron.vm import domain_xml, qcow2
from novacron.vm.domain_xml import ManagedDomain
from novacron.vm.spec import VmSpec, stored_spec

if TYPE_CHECKING:
    from novacron.migration.service import MigrationService
    from novacron.vm.driver import Hypervisor

log = logging.getLogger("novacron.migration")

CHANNEL_WAIT_S = 60.0  # from prepare to the source's channel
QEMU_CONNECT_S = 60.0  # from the channel to the destination QEMU listening
OUTCOME_WAIT_S = 600.0  # from the end of the stream to libvirt finishing (or cleaning up)
POLL_S = 0.25
STATS_WAIT_S = 5.0  # from the guest running here to libvirt filing the job's statistics
STATS_POLL_S = 0.05
# libvirt finished the migration (libvirt_job.arrival): the desired state it is recorded with
ARRIVED = ("running", "paused")

T = TypeVar("T")


@dataclass
class Incoming:
    token: bytes
    op: Operation
    spec: VmSpec
    uuid: str
    placement: dict[str, Any] | None
    qemu_dir: qemu_socket.StreamDir  # where the destination QEMU will listen
    qemu_uid: int  # who QEMU runs as here
    source: str  # the source's certificate name
    stats: RelayStats = field(default_factory=RelayStats)
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    volumes: list[str] = field(default_factory=list)  # made here for its pool disks
    nbd_token: bytes | None = None  # the channels of QEMU's NBD copy of them
    nbd: NbdStats = field(default_factory=NbdStats)
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # fitted to this node

    def __post_init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[trio.SSLStream[trio.SocketStream]](1)


async def admit(svc: MigrationService, name: str, xml: str) -> tuple[ManagedDomain, VmSpec]:
    """The source's domain XML of ``name``, checked: NovaCron's domain of that VM, with
    a usable spec, whose disks this node reaches (or will hold: copies of the volumes in
    the source's pool)."""
    try:
        managed = domain_xml.parse_managed(xml)
    except Exception:  # any malformed XML is the caller's error
        managed = None
    if managed is None or managed.name != name:
        raise errors.InvalidParams("xml is not the NovaCron domain of this vm", {"vm": name})
    spec = stored_spec(managed.spec)  # (another node's: checked as a request is)
    if spec.name != name:
        raise errors.InvalidParams("the domain's spec names another vm", {"vm": name})
    await check_disks(svc.config.node_name, spec)
    return managed, spec


def fit_here(
    svc: MigrationService, name: str, placement: dict[str, Any] | None
) -> Callable[[str, bool], str]:
    """How a domain of VM ``name`` (its definition, or one a snapshot of it holds) is
    fitted to this node (:func:`~novacron.migration.snapshot_moves.fit_for`): the VM's
    ``placement`` here, this node's console log and emulator."""
    return snapshot_moves.fit_for(placement, svc.vms.console_log(name), svc.config.emulator or None)


@asynccontextmanager
async def placing(
    svc: MigrationService, spec: VmSpec, xml: str
) -> AsyncIterator[tuple[dict[str, Any] | None, str]]:
    """Under the tenant's and the VM's locks: refuses a VM this node has (or is
    receiving) already, or that its tenant's quota or networks here do not allow; places
    it and yields the placement and the domain XML retargeted to this host. A failure
    inside releases the placement."""
    vms, name = svc.vms, spec.name
    async with vms.tenant_lock(spec.tenant), vms.locked(name):
        if await vms.records.get(name) is not None or svc.ops.active_for(name) is not None:
            raise errors.AlreadyExists(f"vm {name!r} already exists here", {"vm": name})
        if await vms.hv_pool.run(vms.hv.lookup, name) is not None:
            raise errors.AlreadyExists(f"a libvirt domain {name!r} exists here", {"vm": name})
        await vms.quotas.check(spec, await vms.records.all())
        if spec.nics and vms.nic_check is not None:
            await vms.nic_check(spec.tenant, spec.nics)  # the same networks must exist here
        placement = vms.placement.allocate(name, spec)
        try:
            try:
                dest_xml = fit_here(svc, name, placement)(xml, True)
            except ValueError as exc:  # (the source's XML lacks what is fitted)
                raise errors.InvalidParams(f"xml cannot be fitted to this node: {exc}") from None
            yield placement, dest_xml
        except BaseException:
            vms.placement.release(name)
            raise


async def prepare(
    svc: MigrationService,
    source: str,
    name: str,
    xml: str,
    stream_socket: str,
    options: dict[str, Any],
    disk_bytes: int = 0,
    snapshots: list[Any] | None = None,
) -> dict[str, Any]:
    streams = svc.config.migration_stream_dir
    stream_name = qemu_socket.name_of(streams, stream_socket)
    if not svc.channel_port:
        raise errors.Unavailable("this node does not accept migrations (no TLS listener)")
    managed, spec = await admit(svc, name, xml)
    copies = volume_copies.pool_disks(spec)
    if snapshots and copies:
        raise errors.InvalidParams(
            "snapshots move with a running vm only when its disks are on shared storage "
            "(QEMU's mirror of its volumes would not carry them)",
            {"param": "snapshots"},
        )
    async with placing(svc, spec, xml) as (placement, placed_xml):
        await volume_copies.check_room(svc.vms, name, copies, disk_bytes)
        owner = await svc.vms.hv_pool.run(_qemu_owner, svc.vms.hv, placed_xml)
        qemu_dir = await trio.to_thread.run_sync(qemu_socket.make_dir, streams, stream_name, owner)
        volumes: list[str] = []
        try:
            # volumes for QEMU's mirror of the disks in the source's pool
            volumes = await volume_copies.make(svc.vms, name, copies, empty=False)
            dest_xml = volume_copies.named_in(placed_xml, [t for t, _ in copies], volumes)
            fit = fit_here(svc, name, placement)
            fitted = snapshot_moves.prepared(snapshots, managed.uuid, xml, fit, {})
            # (the domain's UUID kept for after a restart: see _resume_incoming)
            params = {**options, "uuid": managed.uuid}
            if volumes:
                params["volumes"] = volumes
            if fitted:  # (what a restart defines if the VM arrives)
                params[snapshot_moves.CARRIED] = fitted
            op = await svc.ops.start("migrate_in", name, spec.tenant, source, params)
        except BaseException:
            with trio.CancelScope(shield=True):
                await volume_copies.delete(svc.vms, volumes)
                await trio.to_thread.run_sync(qemu_dir.remove)
            raise
    inc = Incoming(
        token=secrets.token_bytes(32),
        op=op,
        spec=spec,
        uuid=managed.uuid,
        placement=placement,
        qemu_dir=qemu_dir,
        qemu_uid=owner[0],
        source=source,
        volumes=volumes,
        nbd_token=secrets.token_bytes(32) if volumes else None,
        nbd=NbdStats(packing=nbd_packing.agreed(options.get("disk_compression"))),
        snapshots=fitted,
    )
    op.on_cancel = inc.cancel.cancel
    svc.incoming[inc.token] = inc
    svc.spawn(receive, svc, inc, op=op)
    answer = {
        "op": op.id,
        "token": inc.token,
        "channel_port": svc.channel_port,
        "libvirt_uri": svc.config.libvirt_peer_uri,
        "dest_xml": dest_xml,
        "node": svc.config.node_name,
        "channel": terms.offered(),
    }
    if inc.nbd_token is not None:
        answer["nbd"] = {
            "token": inc.nbd_token,
            "disks": [t for t, _ in copies],
            "packing": inc.nbd.packing,
        }
    return answer


async def check_disks(node: str, spec: VmSpec) -> None:
    """Refuses a VM whose disks given by path this node cannot open: missing, or a qcow2
    image that needs a file missing here (a base image, or an external data file, left
    on the source's local disk). Disks in the source's pool are copied here: not checked."""
    name = spec.name
    for disk in spec.disks:
        if disk.path is None:
            continue
        if not await trio.Path(disk.path).exists():
            raise errors.NotFound(
                f"disk {disk.path} of vm {name!r} is not reachable on {node}",
                {"vm": name, "path": disk.path},
            )
        if disk.format == "qcow2":
            gone = await trio.to_thread.run_sync(qcow2.first_missing, disk.path)
            if gone is not None:
                what = "backing file" if gone.role == "backing" else "data file"
                raise errors.NotFound(
                    f"{what} {gone.path} of disk {disk.path} of vm {name!r} is not "
                    f"reachable on {node}",
                    {"vm": name, "path": disk.path, gone.role: gone.path},
                )


async def receive(svc: MigrationService, inc: Incoming) -> None:
    """The relay, then libvirt's verdict; records or releases accordingly; then the
    arrived memory goes to the page store (after the operation ended: the source's
    summary, and the operator, do not wait for it)."""
    failure: str | None = None
    receiver: StreamReceiver | None = None
    with inc.cancel:
        try:
            with trio.fail_after(CHANNEL_WAIT_S):
                channel = await inc.recv.receive()
        except trio.TooSlowError:
            failure = "the source never opened the migration channel"
        else:
            svc.ops.report(inc.op, "receiving")
            try:
                receiver = StreamReceiver(
                    svc.page_store,
                    threads=svc.config.migration_engine_threads,
                    max_pages=guest_page_limit(inc.spec.memory_mib),
                )
                qemu_pid = partial(svc.vms.hv_pool.run, svc.vms.hv.qemu_pid, inc.op.vm)
                qemu = await _announce_and_connect(
                    channel, receiver, inc.qemu_dir.path, inc.qemu_uid, qemu_pid
                )
                log.info("migration.qemu_listening", extra=kv(vm=inc.op.vm, op=inc.op.id))
                try:
                    await relay_destination(
                        channel, qemu, receiver, inc.stats, engine=svc.engine_pool
                    )
                    log.info(
                        "migration.stream_arrived",
                        extra=kv(vm=inc.op.vm, op=inc.op.id, stages=inc.stats.stage_summary()),
                    )
                finally:
                    await trio.aclose_forcefully(qemu)
            except (trio.TooSlowError, OSError, trio.BrokenResourceError) as exc:
                slow = isinstance(exc, trio.TooSlowError)
                why = str(exc) or ("timed out" if slow else "the connection broke")
                failure = f"relay failed: {why}"
            except Exception as exc:  # frame, digest and engine errors
                failure = f"stream rejected: {exc}"
            finally:
                await close_gently(channel)
    if inc.cancel.cancelled_caught:
        failure = "cancelled by the source"
    svc.incoming.pop(inc.token, None)
    if failure:
        log.warning("migration.incoming_relay_failed", extra=kv(vm=inc.op.vm, why=failure))
    # before the operation ends (settle): whoever asks how it ended finds nothing left.
    # QEMU no longer needs the path: it was connected to, or it never will be.
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(inc.qemu_dir.remove)
    await settle(svc, inc, failure)
    if receiver is not None and not failure:
        # never in the downtime, nor in the operation's time; a step (32 MiB hashed
        # into the store) at a time on an engine thread
        steps = receiver.keep()
        while await svc.engine_pool.run(next, steps, None) is not None:
            pass


async def remove_failed_arrival(
    svc: MigrationService, name: str, uuid: str | None
) -> tuple[bool, str]:
    """Removes the definition a failed libvirt Finish left here: the VM runs on at the
    source, and a definition here too would be the VM on two nodes (adopted at the
    next start) and would refuse its next migration here. ``uuid``: the migration's
    domain (None: not known, as for an operation stored before it was kept: nothing is
    removed). Whether it was removed, and what happened in words."""
    vms = svc.vms
    removed = uuid is not None and await vms.hv_pool.run(
        libvirt_job.remove_failed_arrival, vms.hv, name, uuid
    )
    log.warning("migration.finish_failed", extra=kv(vm=name, removed=removed))
    if removed:
        return True, "libvirt's Finish step failed here; the definition it left was removed"
    return False, "libvirt's Finish step failed here; the domain it left changed meanwhile: kept"


def _qemu_owner(hv: Hypervisor, dest_xml: str) -> tuple[int, int]:
    """Who libvirt will run the incoming domain's QEMU as (blocking: capabilities)."""
    root = ET.fromstring(dest_xml)  # noqa: S314 - retarget's output, parsed there already
    kind = root.get("type") or hv.domain_type()
    return qemu_socket.qemu_owner(hv.capabilities(), kind)


async def _announce_and_connect(
    channel: trio.abc.Stream,
    receiver: StreamReceiver,
    qemu_at: Path,
    uid: int,
    qemu_pid: Callable[[], Awaitable[int | None]],
) -> trio.SocketStream:
    """Sends the page store's announcement while connecting to the destination QEMU
    (the hashes cross the link while QEMU starts); the connection, once both are done.
    On a failure of either, nothing is left open here."""
    qemu: trio.SocketStream | None = None

    async def connect() -> None:
        nonlocal qemu
        with trio.move_on_after(QEMU_CONNECT_S):
            qemu = await qemu_socket.connect_when_bound(qemu_at, uid, qemu_pid)
        if qemu is None:
            raise TimeoutError(f"no QEMU listened at {qemu_at} within {QEMU_CONNECT_S:g} s")

    try:
        with single_errors():
            async with trio.open_nursery() as n:
                n.start_soon(announce, channel, receiver)
                await connect()
    except BaseException:
        if qemu is not None:
            await trio.aclose_forcefully(qemu)
        raise
    assert qemu is not None
    return qemu


async def poll_libvirt(
    svc: MigrationService,
    ready: Callable[[T], bool],
    wait_s: float,
    every_s: float,
    initial: T,
    call: Callable[..., T],
    *args: Any,
) -> T:
    """Calls ``call(svc.vms.hv, *args)`` in the libvirt pool every ``every_s`` until
    ``ready`` accepts its answer, for at most ``wait_s`` (libvirt has no call that waits
    for these); returns the last answer, ``initial`` if none came."""
    answer = initial
    with trio.move_on_after(wait_s):
        while True:
            answer = await svc.vms.hv_pool.run(call, svc.vms.hv, *args)
            if ready(answer):
                break
            await trio.sleep(every_s)
    return answer


async def wait_outcome(svc: MigrationService, name: str) -> str:
    """``running``, ``paused`` (:data:`ARRIVED`), ``absent`` or ``failed`` (its Finish
    step failed, see :func:`~novacron.migration.libvirt_job.arrival`) once libvirt
    decided; ``arriving`` after the wait."""
    return await poll_libvirt(
        svc,
        lambda state: state != "arriving",
        OUTCOME_WAIT_S,
        POLL_S,
        "arriving",
        libvirt_job.incoming_state,
        name,
    )


async def completed_stats(svc: MigrationService, name: str) -> dict[str, Any]:
    """The finished incoming job's statistics (downtime, time). libvirt files them at the
    end of its Finish phase, which can come a moment after the guest runs here: polled
    until they are there, for at most ``STATS_WAIT_S`` (then whatever libvirt has)."""
    empty: dict[str, Any] = {}
    return await poll_libvirt(
        svc,
        lambda stats: "downtime" in stats,
        STATS_WAIT_S,
        STATS_POLL_S,
        empty,
        libvirt_job.job_stats,
        name,
        True,
    )


async def settle(svc: MigrationService, inc: Incoming, failure: str | None) -> None:
    """Waits for libvirt's verdict on an incoming VM and makes the store agree with it."""
    vms, op = svc.vms, inc.op
    state = await wait_outcome(svc, op.vm)
    with trio.CancelScope(shield=True):
        if state in ARRIVED:
            async with vms.locked(op.vm):
                await vms.records.insert(
                    op.vm, inc.uuid, op.tenant, inc.spec.to_dict(), inc.placement, state
                )
                await vms.arrived(op.vm, op.tenant, inc.source)
                refused = await snapshot_moves.redefine(vms, op.vm, inc.snapshots)
            completed = await completed_stats(svc, op.vm)
            downtime = completed.get("downtime")
            result: dict[str, Any] = {
                "node": svc.config.node_name,
                "downtime_ms": None if downtime is None else int(downtime),
                "time_ms": int(completed.get("time_elapsed", 0)),
                "bytes_logical": inc.stats.stream_bytes,
                "bytes_wire": inc.stats.channel_bytes,
                "relay_stages_s": inc.stats.stage_summary(),
                "relay_error": failure,
            }
            if inc.volumes:
                result["storage"] = {"disks": len(inc.volumes), **inc.nbd.to_dict()}
            if inc.snapshots:
                result["snapshots"] = snapshot_moves.defined(inc.snapshots, refused)
            await svc.ops.finish(op, "succeeded", result)
            return
        if state == "failed":
            removed, why = await remove_failed_arrival(svc, op.vm, inc.uuid)
            failure = f"{failure}; {why}" if failure else why
            if removed:  # (else its placement stays: the domain is not what it was)
                state = "absent"
        if state == "absent":
            vms.placement.release(op.vm)
            await volume_copies.delete(vms, inc.volumes)
        why = failure or "the incoming domain did not start"
        if state == "arriving":
            why = f"{why}; the incoming domain is still there after {OUTCOME_WAIT_S:g} s"
        await svc.ops.finish(op, "failed", None, errors.MigrationFailed(why, {"vm": op.vm}))
