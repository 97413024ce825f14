"""The source's side of a live migration (``vm.migrate``; a stopped VM moves offline,
:mod:`~novacron.migration.offline`).

1. ``migration.prepare`` on the destination over node mutual TLS: it places the VM and
   answers with a token, its channel port, its libvirt URI and the domain XML for it.
2. The migration channel is opened (token first); a Unix socket only root can reach
   waits for QEMU's stream (:mod:`~novacron.migration.qemu_socket`).
3. ``migrateToURI3`` runs on a worker thread (libvirt peer to peer, the stream to
   ``unix://PATH``: libvirtd connects and hands the connection to QEMU); QEMU's stream
   is relayed through the page engine; job statistics are sampled each second for
   ``op.progress`` and stall handling. Disks in this node's pool are mirrored by QEMU
   first, over NBD connections relayed to the destination
   (:mod:`~novacron.migration.nbd_relay`).
4. libvirt's answer decides: success means the VM runs on the destination (the source
   forgets it once the destination says it recorded it); any failure — relay,
   channel, link, cancel, stall, timeout — ends with libvirt aborting and the VM
   running here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from novacron import errors
from novacron.client import connect_tls, split_address
from novacron.cluster.locks import LOCK_LOST, MigrationLock, MigrationLocks
from novacron.logs import kv
from novacron.migration import (
    libvirt_job,
    nbd_packing,
    nbd_relay,
    offline,
    progress,
    qemu_socket,
    shared_storage,
    snapshot_moves,
    terms,
    volume_copies,
)
from novacron.migration.libvirt_job import MigrationCall
from novacron.migration.nbd_relay import NbdStats
from novacron.migration.options import MigrateOptions
from novacron.migration.relay import relay_source
from novacron.migration.source_run import (
    Run,
    channel_to,
    conclude,
    failures,
    peer_of,
    prepare_there,
    tell_abort,
)
from novacron.migration.stream import StreamSender
from novacron.vm.driver import Hypervisor
from novacron.vm.spec import VmSpec

if TYPE_CHECKING:
    from pathlib import Path

    from novacron.migration.service import MigrationService

log = logging.getLogger("novacron.migration")

QEMU_ACCEPT_S = 120.0  # from migrateToURI3 to libvirtd connecting for the source QEMU
SAMPLE_S = 1.0
RESULT_WAIT_S = 120.0
TAIL_S = 30.0  # after libvirt's success: the relay's last bytes (QEMU's SHUT)
LOCK_CHECK_S = 2.0  # how often a migration checks that its cluster-wide lock is still there


def destination_address(destination: str, default_port: int) -> str:
    """``host:port``; a bare host gets this node's own TLS port."""
    if ":" in destination.strip("[]") and destination.rsplit(":", 1)[1].isdigit():
        split_address(destination)
        return destination
    if not default_port:
        raise errors.InvalidParams("destination needs a port (this node has no TLS listener)")
    return f"{destination}:{default_port}"


async def start(
    svc: MigrationService, name: str, destination: str, options: MigrateOptions
) -> dict[str, Any]:
    """Checks what can be checked here, then runs the migration as a task."""
    vms = svc.vms
    rec = await vms.record(name)
    files = svc.tls_files()
    if files is None:
        raise errors.Unavailable(
            "migration needs this node's certificate: set [tls] cert, key and ca"
        )
    if vms.hv.is_test_driver:
        raise errors.Conflict("libvirt's test driver cannot migrate VMs", {"vm": name})
    if svc.locks is not None:  # a node's name in the cluster: its registered address
        known = svc.locks.cluster.nodes.get(destination)
        if known and known.get("address"):
            destination = str(known["address"])
    address = destination_address(destination, svc.config.tls_port)
    lock = None
    async with vms.changing(name):  # (no start or stop from here on)
        runtime = await vms.hv_pool.run(vms.hv.state, name)
        if runtime.state not in ("running", "paused", "stopped"):
            raise errors.Conflict(
                f"vm {name!r} is {runtime.state}; a running or paused vm migrates live, "
                "a stopped one offline",
                {"vm": name, "state": runtime.state},
            )
        offline_move = runtime.state == "stopped"
        snaps = await snapshot_moves.export(vms, name)  # (refused here what cannot move)
        if snaps and not offline_move and volume_copies.pool_disks(VmSpec.from_dict(rec.spec)):
            raise errors.Conflict(
                f"vm {name!r} has {len(snaps)} snapshot(s), which cannot move with its volumes "
                "live (QEMU's mirror copies what the guest sees, not the snapshots inside); "
                "stop it to move it offline with them, or delete them first",
                {"vm": name, "snapshots": [s["name"] for s in snaps]},
            )
        params = {**options.to_dict(), **({"offline": True} if offline_move else {})}
        op_id = svc.ops.new_id()
        if svc.locks is not None:  # exactly one migration of the vm, cluster-wide
            lock = await svc.locks.acquire(rec.tenant, name, op_id, address)
        try:
            op = await svc.ops.start("migrate_out", name, rec.tenant, address, params, op_id)
        except BaseException:
            if svc.locks is not None and lock is not None:
                with trio.CancelScope(shield=True):
                    await svc.locks.end(lock, moved=False)
            raise
        vms.migrating.add(name)
    run = Run(svc, op, options, lock=lock, offline=offline_move, snapshots=snaps)
    op.on_cancel = lambda: svc.spawn(run.abort, "cancel")
    svc.spawn(_run, run, address, op=op)
    return {"op": op.id, "vm": name, "destination": address}


async def _accept_stream(listener: trio.SocketListener, nbd: NbdStats | None) -> trio.SocketStream:
    """libvirtd's connection for the source QEMU's memory stream: within
    ``QEMU_ACCEPT_S``, or later while QEMU's mirror of the disks still moves bytes (the
    memory follows once the disks are in step)."""
    while True:
        with trio.move_on_after(QEMU_ACCEPT_S):
            return await qemu_socket.accept_from(listener)
        if nbd is None or trio.current_time() - nbd.last_moved > QEMU_ACCEPT_S:
            raise trio.TooSlowError(f"libvirtd did not connect within {QEMU_ACCEPT_S:g} s")


async def _run(run: Run, address: str) -> None:
    moved = False
    run.address = address
    try:
        async with run.svc.migration_limiter:  # at most max_concurrent at once
            if run.offline:
                moved = await offline.move(run, address)
            else:
                moved = await _migrate_and_settle(run, address)
    finally:
        if run.lock is not None and run.svc.locks is not None:
            with trio.CancelScope(shield=True):
                await run.svc.locks.end(run.lock, moved)
        run.svc.vms.migrating.discard(run.op.vm)


async def _migrate_and_settle(run: Run, address: str) -> bool:
    svc, op = run.svc, run.op
    files, host = peer_of(run, address)
    began = trio.current_time()
    moved = False
    answer: dict[str, Any] = {}
    dest: dict[str, Any] = {}
    streams, name = svc.config.migration_stream_dir, qemu_socket.new_name()
    made: qemu_socket.StreamDir | None = None  # QEMU's socket's directory
    listener: trio.SocketListener | None = None
    nbd_listener: trio.SocketListener | None = None  # QEMU's mirror of its pool disks
    owner = (0, 0)  # who QEMU runs as (when it mirrors disks)
    try:
        with failures(run, address):
            rec = await svc.vms.record(op.vm)
            copies = volume_copies.sources(svc.vms, VmSpec.from_dict(rec.spec))
            made = await trio.to_thread.run_sync(qemu_socket.make_dir, streams, name)
            path = made.path
            listener = await qemu_socket.listen(path)
            if copies:
                owner = await svc.vms.hv_pool.run(_qemu_owner, svc.vms.hv)
                nbd_listener = await nbd_relay.listen(path, owner)
                run.copied_from = [p for _, p in copies]
            async with connect_tls(address, files, server_name=host) as peer:
                try:
                    with run.prep:
                        xml, answer = await prepare_there(run, peer, stream_socket=str(path))
                        agreed = run.terms = _terms(answer, op.vm)
                        nbd_terms = _nbd_terms(answer, [t for t, _ in copies], op.vm)
                        svc.ops.report(op, "connecting")
                        channel = await channel_to(
                            run, host, answer["channel_port"], answer["token"]
                        )()
                    if run.prep.cancelled_caught:
                        raise errors.Cancelled("cancelled before the migration started")
                except errors.NovaCronError:
                    if answer:
                        await tell_abort(peer, answer)
                    raise
                try:  # (until the relay has it, the channel is closed here on failure)
                    call = await _libvirt_call(run, xml, answer, path, copies)
                    nbd = None
                    if nbd_listener is not None and nbd_terms is not None:
                        opener = channel_to(run, host, answer["channel_port"], nbd_terms[0])
                        nbd = NbdRelay(nbd_listener, opener, owner[0], nbd_terms[1])
                    await snapshot_moves.hold_or_abort(run, partial(tell_abort, peer, answer))
                except BaseException:
                    await trio.aclose_forcefully(channel)
                    raise
                try:
                    moved = await _migrate(
                        run, call, listener, channel, agreed, partial(tell_abort, peer, answer), nbd
                    )
                finally:
                    await snapshot_moves.settle(run, moved)
                if moved:  # libvirt's word is final: the VM runs there, whatever the relay said
                    with trio.move_on_after(RESULT_WAIT_S):
                        got = await peer.call("migration.result", op=answer["op"])
                        dest = got if isinstance(got, dict) else {}
    finally:
        for each in (listener, nbd_listener):
            if each is not None:
                await each.aclose()
        if made is not None:
            await trio.to_thread.run_sync(made.remove)
    return await conclude(run, moved, answer, dest, began)


async def _libvirt_call(
    run: Run, xml: str, answer: dict[str, Any], path: Path, copies: list[tuple[str, str]]
) -> MigrationCall:
    """libvirt's migration of the VM as the destination answered ``migration.prepare``:
    its stream to the daemon's socket at ``path``, its pool disks ``copies`` mirrored."""
    svc, op = run.svc, run.op
    declared = await svc.vms.hv_pool.run(
        shared_storage.declared_disks, svc.vms.hv, xml, svc.config.shared_storage_dirs
    )
    if declared:
        log.info(
            "migration.storage_declared_shared",
            extra=kv(vm=op.vm, op=op.id, disks=",".join(declared)),
        )
    return MigrationCall(
        name=op.vm,
        dest_uri=str(answer["libvirt_uri"]),
        migrate_uri=f"unix://{path}",
        dest_xml=str(answer["dest_xml"]),
        bandwidth_mib_s=run.options.bandwidth_mib_s(),
        auto_converge=run.options.auto_converge,
        shared_storage=bool(declared),
        copy_disks=tuple(t for t, _ in copies),
        disks_uri=nbd_relay.disks_uri(path) if copies else None,
    )


@dataclass
class NbdRelay:
    """The source's relay of QEMU's NBD connections (its mirror of the pool disks)."""

    listener: trio.SocketListener
    open_channel: Callable[[], Awaitable[trio.SSLStream[trio.SocketStream]]]
    qemu_uid: int  # who the VM's QEMU runs as: the only peer taken
    packing: str  # disk_compression as the destination agreed: lz4, zstd or none


def _qemu_owner(hv: Hypervisor) -> tuple[int, int]:
    """Who libvirt runs this node's QEMUs as (blocking: capabilities)."""
    return qemu_socket.qemu_owner(hv.capabilities(), hv.domain_type())


def _nbd_terms(answer: dict[str, Any], targets: list[str], vm: str) -> tuple[bytes, str] | None:
    """The token of the destination's NBD channels and how they are packed, when the
    VM has pool disks: the destination must have made volumes for exactly those."""
    if not targets:
        return None
    part = volume_copies.agreed(answer.get("nbd"), targets, vm)
    try:
        return bytes(part["token"]), nbd_packing.of_answer(part)
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.MigrationFailed(f"the destination's NBD terms: {exc}", {"vm": vm}) from None


def _terms(answer: dict[str, Any], vm: str) -> terms.Terms:
    try:
        return terms.of_answer(answer)
    except terms.Incompatible as exc:
        raise errors.MigrationFailed(
            str(exc), {"vm": vm, "node": str(answer.get("node"))}
        ) from None


async def _migrate(
    run: Run,
    call: MigrationCall,
    listener: trio.SocketListener,
    channel: trio.SSLStream[trio.SocketStream],
    agreed: terms.Terms,
    tell_abort: Callable[[], Awaitable[None]],
    nbd: NbdRelay | None = None,
) -> bool:
    """True when libvirt moved the VM (it runs on the destination now). When libvirt
    failed, ``tell_abort`` tells the destination before the channel closes (libvirt may
    have refused before the destination QEMU ever started): the destination's operation
    then ends as cancelled by the source, not as a channel that broke under it."""
    svc, op, vms = run.svc, run.op, run.svc.vms
    commit = None
    if run.lock is not None and svc.locks is not None:
        commit = partial(svc.locks.commit, run.lock)
    sender = StreamSender(
        wait_for_announce=True,
        store=svc.page_store,
        gated=commit is not None,
        packed_heads=agreed.packed_heads,
        wire_version=agreed.page_format,
        threads=svc.config.migration_engine_threads,
        **run.options.engine(),
    )

    async def relay() -> None:
        qemu: trio.SocketStream | None = None
        try:
            qemu = await _accept_stream(listener, run.nbd)
            log.info("migration.stream_started", extra=kv(vm=op.vm, op=op.id))
            await relay_source(
                qemu,
                channel,
                sender,
                run.stats,
                lambda: run.aborted_for,
                commit,
                engine=svc.engine_pool,
            )
            log.info(
                "migration.stream_ended",
                extra=kv(vm=op.vm, op=op.id, stages=run.stats.stage_summary()),
            )
        except Exception as exc:  # channel, link and frame errors alike
            run.fail(errors.MigrationFailed(f"migration channel failed: {exc}", {"vm": op.vm}))
            log.warning("migration.relay_failed", extra=kv(vm=op.vm, error=str(exc)))
            if qemu is not None:
                await trio.aclose_forcefully(qemu)  # QEMU fails the migration at once
            # the destination learns now, not after libvirt's abort (which can wait on
            # libvirt's own job, or on the pool, for minutes)
            await trio.aclose_forcefully(channel)
            if run.migrating:
                await run.abort("relay")
        finally:
            if qemu is not None:
                await trio.aclose_forcefully(qemu)
            await trio.aclose_forcefully(channel)

    async def monitor() -> None:
        downtime_set = False
        while True:
            await trio.sleep(SAMPLE_S)
            stats = await vms.hv_pool.run(libvirt_job.job_stats, vms.hv, op.vm)
            if not stats:
                continue
            if run.aborted_for is not None:
                # given up while libvirt was still starting the job: abort it now
                await vms.hv_pool.run(libvirt_job.abort, vms.hv, op.vm)
                continue
            try:
                await sample(stats, downtime_set)
            except errors.NovaCronError as exc:  # the job ended under our feet
                log.debug("migration.sample_skipped", extra=kv(vm=op.vm, error=exc.message))
            downtime_set = True

    async def sample(stats: dict[str, Any], downtime_set: bool) -> None:
        if not downtime_set:
            await vms.hv_pool.run(
                libvirt_job.set_max_downtime, vms.hv, op.vm, run.options.max_downtime_ms
            )
        fields = progress.progress(stats, run.stats)
        if run.nbd is not None:  # the mirror of its pool disks, so far
            fields["disk_bytes"] = run.nbd.to_destination
            fields["disk_bytes_wire"] = run.nbd.wire_to_destination
        decision = run.watch.observe(stats)
        if decision is not None:
            fields["stall"] = {"action": decision.action, "reason": decision.reason}
            log.warning(
                "migration.stalled",
                extra=kv(vm=op.vm, action=decision.action, reason=decision.reason),
            )
            if decision.action == "raise_downtime":
                await vms.hv_pool.run(
                    libvirt_job.set_max_downtime, vms.hv, op.vm, decision.downtime_ms
                )
            elif decision.action == "cancel":
                run.fail(
                    errors.MigrationFailed(
                        f"migration stalled: {decision.reason}", {"vm": op.vm, "stalled": True}
                    )
                )
                await run.abort("stall")
        svc.ops.report(op, "migrating", fields)

    async def deadline() -> None:
        await trio.sleep(run.options.timeout_s)
        run.fail(
            errors.MigrationFailed(
                f"not finished within timeout_s={run.options.timeout_s:g}", {"vm": op.vm}
            )
        )
        await run.abort("timeout")

    async def lock_kept(lock: MigrationLock, locks: MigrationLocks) -> None:
        # a lock that is gone would refuse the switch-over: the migration ends now
        held = True
        while held:
            await trio.sleep(LOCK_CHECK_S)
            if lock.committing:
                return  # the switch-over's transaction takes the lock
            held = await locks.held(lock)
        if lock.committing:
            return  # (it took it while we read)
        log.warning("migration.lock_lost", extra=kv(vm=op.vm, op=op.id))
        run.fail(
            errors.MigrationFailed(f"{LOCK_LOST}: aborted before the switch-over", {"vm": op.vm})
        )
        await run.abort("lock")

    svc.ops.report(op, "migrating")
    watchers = trio.CancelScope()

    async def watch() -> None:
        with watchers:
            async with trio.open_nursery() as inner:
                inner.start_soon(monitor)
                if run.options.timeout_s:
                    inner.start_soon(deadline)
                if run.lock is not None and svc.locks is not None:
                    inner.start_soon(lock_kept, run.lock, svc.locks)

    moved = False
    if nbd is not None:
        run.nbd = NbdStats(packing=nbd.packing)
    async with trio.open_nursery() as tasks:
        tasks.start_soon(relay)
        tasks.start_soon(watch)
        mirror = trio.CancelScope()  # ends with libvirt's job (its mirrors end in it)
        if nbd is not None and run.nbd is not None:
            qemu_pid = partial(vms.hv_pool.run, vms.hv.qemu_pid, op.vm)
            serve = partial(
                nbd_relay.serve_source,
                nbd.listener,
                nbd.qemu_uid,
                qemu_pid,
                nbd.open_channel,
                run.nbd,
                svc.engine_pool,
            )
            tasks.start_soon(_within, mirror, serve)
        run.migrating = True
        if op.cancel_requested:
            await run.abort("cancel")
        try:
            log.info("migration.libvirt_started", extra=kv(vm=op.vm, op=op.id))
            await trio.to_thread.run_sync(libvirt_job.migrate, vms.hv, call)
            log.info("migration.libvirt_done", extra=kv(vm=op.vm, op=op.id))
        except errors.NovaCronError as exc:
            log.warning("migration.libvirt_failed", extra=kv(vm=op.vm, op=op.id, error=exc.message))
            run.fail(errors.MigrationFailed(exc.message, {"vm": op.vm, "cause": exc.code}))
            await tell_abort()
            tasks.cancel_scope.cancel()
        else:
            moved = True
            tasks.cancel_scope.deadline = trio.current_time() + TAIL_S  # the relay's tail
        finally:
            run.migrating = False
            watchers.cancel()
            mirror.cancel()
    return moved


async def _within(scope: trio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await fn()
