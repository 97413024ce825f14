"""What the tasks of one outgoing migration (live or offline) share, and how it ends:
the operation's result, and the source forgetting a VM that moved."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from novacron import errors
from novacron.client import TlsFiles, split_address
from novacron.cluster.locks import MigrationLock
from novacron.logs import kv
from novacron.migration import libvirt_job, progress, snapshot_moves, terms, volume_copies
from novacron.migration.channel import open_channel
from novacron.migration.disk_copy import CopyStats
from novacron.migration.nbd_relay import NbdStats
from novacron.migration.ops import Operation
from novacron.migration.options import MigrateOptions
from novacron.migration.relay import RelayStats

if TYPE_CHECKING:
    from novacron.migration.service import MigrationService

log = logging.getLogger("novacron.migration")


@dataclass
class Run:
    """What one outgoing migration's tasks share."""

    svc: MigrationService
    op: Operation
    options: MigrateOptions
    stats: RelayStats = field(default_factory=RelayStats)
    failure: errors.NovaCronError | None = None
    migrating: bool = False
    aborted_for: str | None = None  # "cancel", "stall", "timeout", "lock"
    lock: MigrationLock | None = None  # the cluster-wide lock (in a cluster)
    terms: terms.Terms | None = None  # what the destination's channel takes
    prep: trio.CancelScope = field(default_factory=trio.CancelScope)
    watch: progress.StallWatch = field(init=False)
    offline: bool = False  # a stopped VM: its definition moves (migration.offline)
    storage: CopyStats | None = None  # a stopped VM's volumes' copy, when it has any
    nbd: NbdStats | None = None  # a running VM's: QEMU's mirror, relayed
    copied_from: list[str] = field(default_factory=list)  # their paths here
    # its snapshots' descriptions, as vm.migrate found them (snapshot_moves.export)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    address: str = ""  # the destination's TLS listener (host:port)

    def __post_init__(self) -> None:
        self.watch = progress.StallWatch(self.options)

    def fail(self, exc: errors.NovaCronError) -> None:
        if self.failure is None:
            self.failure = exc

    async def abort(self, why: str) -> None:
        if self.aborted_for is None:
            self.aborted_for = why
        self.prep.cancel()
        if self.migrating:
            vms = self.svc.vms
            await vms.hv_pool.run(libvirt_job.abort, vms.hv, self.op.vm)


def peer_of(run: Run, address: str) -> tuple[TlsFiles, str]:
    """This node's certificate files, and the destination's host name in ``address``."""
    files = run.svc.tls_files()
    assert files is not None  # (start() refused a node without them)
    host, _ = split_address(address)
    return files, host


@contextlib.contextmanager
def failures(run: Run, address: str) -> Iterator[None]:
    """What fails inside fails the run (:meth:`Run.fail`) instead of going on: NovaCron's
    errors as they are, a broken connection as ``migration_failed`` naming ``address``."""
    try:
        yield
    except errors.NovaCronError as exc:
        run.fail(exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        run.fail(errors.MigrationFailed(f"connection to {address} failed: {exc}"))


def channel_to(
    run: Run, host: str, port: Any, token: Any
) -> Callable[[], Awaitable[trio.SSLStream[trio.SocketStream]]]:
    """Opens a migration channel to the destination ``host`` (its ``channel_port``
    from ``migration.prepare``) with the ``token`` of its answer, when called."""
    files = run.svc.tls_files()
    assert files is not None  # (start() refused a node without them)
    return partial(
        open_channel,
        f"{host}:{port}",
        files.context(),
        host,
        bytes(token),
        run.svc.config.migration_link_timeout_s,
    )


async def prepare_there(run: Run, peer: Any, **params: Any) -> tuple[str, dict[str, Any]]:
    """``migration.prepare`` of the run's VM on the destination (``peer``), with its
    migratable XML, ``params`` and what the run carries (its volumes' size, its
    snapshots' descriptions): the XML and the destination's answer. In a cluster,
    where the ownership goes is noted with the operation (what a restart undoes)."""
    svc, op, vms = run.svc, run.op, run.svc.vms
    xml = await vms.hv_pool.run(libvirt_job.migratable_xml, vms.hv, op.vm)
    if run.copied_from:  # (the destination checks it has room for them)
        params["disk_bytes"] = await volume_copies.source_bytes(vms, run.copied_from)
    params.update(snapshot_moves.offer(run.snapshots))
    answer: dict[str, Any] = await peer.call(
        "migration.prepare", vm=op.vm, xml=xml, options=run.options.to_dict(), **params
    )
    if run.lock is not None:
        run.lock.destination = str(answer["node"])
        await svc.ops.note(op, destination_node=run.lock.destination)
    return xml, answer


async def tell_abort(peer: Any, answer: dict[str, Any]) -> None:
    """Best effort: the destination stops waiting for a channel, or a QEMU, that will
    not come."""
    with trio.move_on_after(5):
        with contextlib.suppress(
            errors.NovaCronError, trio.BrokenResourceError, trio.ClosedResourceError, OSError
        ):
            await peer.call("migration.abort", op=answer["op"])


async def forget(
    run: Run, answer: dict[str, Any], dest: dict[str, Any], began: float
) -> dict[str, Any]:
    """libvirt moved the VM: drop it here and summarise."""
    op, vms = run.op, run.svc.vms
    with trio.CancelScope(shield=True):
        async with vms.locked(op.vm):
            await vms.forget(op.vm)
        volumes = await _source_volumes(run, dest)
    dest_result = dest.get("result") or {}
    stats = run.stats
    summary = {
        "destination": answer.get("node"),
        "destination_op": answer.get("op"),
        "destination_state": dest.get("state", "unknown"),
        "total_s": round(trio.current_time() - began, 3),
        "downtime_ms": dest_result.get("downtime_ms"),
        "migration_ms": dest_result.get("time_ms"),
        "rounds": (op.progress or {}).get("round", 0),
        "pages": stats.pages,
        "zero_pages": stats.zero_pages,
        "records": stats.records,
        "bytes_logical": stats.stream_bytes,
        "bytes_wire": stats.channel_bytes,
        "channel_features": run.terms.features() if run.terms is not None else [],
        "reduction": progress.reduction(stats.stream_bytes, stats.channel_bytes),
        "relay_stages_s": stats.stage_summary(),
        "destination_relay_stages_s": dest_result.get("relay_stages_s"),
        "stall_actions": [d.action for d in run.watch.decisions],
        "offline": run.offline,
    }
    if dest_result.get("snapshots") is not None:  # (those the destination defined)
        summary["snapshots"] = dest_result["snapshots"]
    if run.storage is not None:
        summary["storage"] = {**run.storage.to_dict(), "source_volumes": volumes}
    elif run.nbd is not None:
        copied = {"disks": len(run.copied_from), **run.nbd.to_dict()}
        summary["storage"] = {**copied, "source_volumes": volumes}
    if volumes == "kept" and "storage" in summary:  # (deleted later: kept_volumes)
        summary["storage"]["kept"] = {"paths": run.copied_from, "address": run.address}
    log.info(
        "migration.done",
        extra=kv(vm=op.vm, total_s=summary["total_s"], bytes_wire=stats.channel_bytes),
    )
    return summary


async def _source_volumes(run: Run, dest: dict[str, Any]) -> str:
    """After a VM moved with copies of its volumes: this node's volumes are deleted
    once the destination says it recorded the VM (``deleted``); else they are kept
    (``kept``), as the only sure copy, until the destination says so later
    (:mod:`~novacron.migration.kept_volumes`)."""
    if not run.copied_from:
        return "none"
    if dest.get("state") != "succeeded":
        log.warning(
            "migration.source_volumes_kept",
            extra=kv(vm=run.op.vm, paths=run.copied_from, destination=dest.get("state")),
        )
        return "kept"
    return "deleted" if await volume_copies.delete(run.svc.vms, run.copied_from) else "kept"


async def conclude(
    run: Run, moved: bool, answer: dict[str, Any], dest: dict[str, Any], began: float
) -> bool:
    """Ends the operation: succeeded (the VM is forgotten here) when it ``moved``,
    else cancelled or failed. Returns ``moved``."""
    svc, op = run.svc, run.op
    if moved:
        result = await forget(run, answer, dest, began)
        result["relay_error"] = run.failure.message if run.failure else None
        await svc.ops.finish(op, "succeeded", result)
        return True
    failure = run.failure or errors.MigrationFailed("the migration did not complete")
    if run.aborted_for == "cancel":
        await svc.ops.finish(op, "cancelled", None, errors.Cancelled("cancelled on request"))
        return False
    if not isinstance(failure, errors.MigrationFailed):
        failure = errors.MigrationFailed(failure.message, {"cause": failure.code, "vm": op.vm})
    await svc.ops.finish(op, "failed", None, failure)
    return False
