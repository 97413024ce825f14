"""``node.drain``: empty this node before maintenance.

The node is cordoned first (:mod:`novacron.vm.cordon`: no new VMs, no incoming
migrations), then every VM it has leaves, one at a time, as ``vm.migrate`` would move
it: a running or paused VM live, a stopped one offline (unless ``keep_stopped``). Each
move is an operation of its own (``migrate_out``); the drain is one more (kind
``drain``) that reports which VM it is at and ends with what moved, what did not and
why. A VM that cannot move (a running one with snapshots and pool disks, a refusal
of the destination, a failed migration) stays here, running as it was, and the drain
goes on with the next.

Destinations: the one given (a node's name in a cluster, or ``host[:port]``), or in a
cluster the best-scoring other node for each VM, as ``vm.create node=auto`` chooses
(cordoned nodes are passed by). One VM at a time: each choice sees the previous
arrival's effect on the nodes' published free state (mostly: a registration is
republished within a third of the lease's TTL).

``op.cancel`` on the drain cancels the migration under way (that VM stays here) and
starts no other; the node stays cordoned.

A VM can arrive after the list was taken: a ``vm.create`` or an incoming migration that
passed the cordon's check just before it. When the listed VMs are done the drain lists
the node's VMs again and moves the newcomers too (a few times at most), so it does not
end with a VM it never saw. A VM already migrating when its turn comes (a ``vm.migrate``
started before the drain) is waited for: if that migration moved it, it counts as moved
(with that operation); if not, the drain moves it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from novacron import errors
from novacron.logs import kv
from novacron.migration import outgoing
from novacron.migration.ops import Operation
from novacron.migration.options import MigrateOptions
from novacron.vm.spec import VmSpec

if TYPE_CHECKING:
    from novacron.migration.service import MigrationService

log = logging.getLogger("novacron.migration")

KIND = "drain"
# After the VMs listed at the start, how many times the drain lists them again for
# ones that arrived meanwhile (each pass moves what it found).
LATE_PASSES = 3


@dataclass
class Drain:
    svc: MigrationService
    op: Operation
    names: list[str]
    destination: str | None  # None: the cluster chooses per VM
    options: MigrateOptions
    keep_stopped: bool
    moved: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    at: str | None = None  # the VM being moved
    current: Operation | None = None  # its migration
    waiting: trio.CancelScope | None = None  # for a migration started before the drain

    def cancel(self) -> None:
        if self.waiting is not None:
            self.waiting.cancel()
        if self.current is not None and self.current.state == "running":
            self.svc.cancel(self.current)

    def tried(self, name: str) -> bool:
        return any(v["vm"] == name for v in self.moved + self.failed + self.kept)

    def summary(self) -> dict[str, Any]:
        return {
            "node": self.svc.config.node_name,
            "moved": self.moved,
            "failed": self.failed,
            "kept": self.kept,
            "left": [n for n in self.names if not self.tried(n)],
        }

    def progress(self) -> dict[str, Any]:
        return {
            "current": self.at,
            "done": len(self.moved) + len(self.failed) + len(self.kept),
            "total": len(self.names),
            "moved": len(self.moved),
            "failed": len(self.failed),
        }


async def start(
    svc: MigrationService,
    destination: str | None,
    options: MigrateOptions,
    keep_stopped: bool,
    reason: str,
    by: str,
) -> dict[str, Any]:
    """Cordons the node, then drains it in a task; answers at once."""
    if destination is None and svc.locks is None:
        raise errors.InvalidParams(
            "this node is not in a cluster: name a destination", {"param": "destination"}
        )
    running = svc.ops.running_of(KIND)
    if running is not None:
        raise errors.Conflict(
            f"a drain of this node is already running ({running.id})", {"op": running.id}
        )
    vms = svc.vms
    await vms.cordon.set(reason, by)
    names = await _present(svc)
    params = {
        **options.to_dict(),
        "destination": destination,
        "keep_stopped": keep_stopped,
        "vms": names,
    }
    op = await svc.ops.start(KIND, "", "", destination or "auto", params)
    drain = Drain(svc, op, list(names), destination, options, keep_stopped)
    op.on_cancel = drain.cancel
    svc.spawn(_run, drain, op=op)
    log.info("drain.started", extra=kv(op=op.id, vms=len(names), destination=destination))
    return {"op": op.id, "node": svc.config.node_name, "vms": names}


async def _present(svc: MigrationService) -> list[str]:
    return [r.name for r in await svc.vms.records.all() if r.desired_state != "deleting"]


async def _run(drain: Drain) -> None:
    svc, op = drain.svc, drain.op
    for _ in range(LATE_PASSES + 1):
        todo = [n for n in drain.names if not drain.tried(n)]
        for name in todo:
            if op.cancel_requested:
                break
            drain.at = name
            svc.ops.report(op, "draining", drain.progress())
            await _move(drain, name)
            drain.at, drain.current = None, None
            svc.ops.report(op, "draining", drain.progress())
        if op.cancel_requested:
            break
        # A vm.create or an incoming migration that passed the cordon's check just
        # before the cordon can have added a VM after the list was taken.
        late = [n for n in await _present(svc) if n not in drain.names]
        if not late:
            break
        log.info("drain.late_vms", extra=kv(op=op.id, vms=late))
        drain.names.extend(late)
    result = drain.summary()
    if op.cancel_requested:
        await svc.ops.finish(op, "cancelled", result, errors.Cancelled("the drain was cancelled"))
    elif drain.failed or result["left"]:
        # (left: VMs still arriving after the last pass)
        stuck = [f["vm"] for f in drain.failed] + result["left"]
        await svc.ops.finish(
            op,
            "failed",
            result,
            errors.MigrationFailed(
                f"{len(stuck)} of {len(drain.names)} VM(s) did not leave node "
                f"{svc.config.node_name!r} and run there as before: {', '.join(stuck)}",
                {"vms": stuck},
            ),
        )
    else:
        await svc.ops.finish(op, "succeeded", result)


async def _move(drain: Drain, name: str) -> None:
    """One VM away (or kept, or its failure recorded)."""
    svc = drain.svc
    vms = svc.vms
    earlier = svc.ops.active_for(name)
    moved_by = None  # that migration's operation, once it ended
    if earlier is not None and earlier.kind == "migrate_out":
        # a vm.migrate started before the drain: its outcome first (it may move the VM)
        with trio.CancelScope() as drain.waiting:
            await earlier.ended.wait()
        drain.waiting = None
        if drain.op.cancel_requested:
            return  # (left)
        moved_by = await svc.ops.get(earlier.id)
    rec = await vms.records.get(name)
    if rec is None and moved_by is not None and moved_by["state"] == "succeeded":
        assert earlier is not None
        _moved(drain, name, moved_by, earlier.peer)
        return
    if rec is None or rec.desired_state == "deleting":
        drain.kept.append({"vm": name, "reason": "no longer here (deleted or migrated meanwhile)"})
        return
    try:
        if drain.keep_stopped:
            runtime = await vms.hv_pool.run(vms.hv.state, name)
            if runtime.state == "stopped":
                drain.kept.append({"vm": name, "reason": "stopped (keep_stopped)"})
                return
        destination = drain.destination
        if destination is None:
            assert svc.locks is not None
            cluster = svc.locks.cluster
            spec = VmSpec.from_dict(rec.spec)
            destination, _ = await cluster.best_node(spec, exclude=frozenset({cluster.node}))
        started = await outgoing.start(svc, name, destination, drain.options)
    except errors.NovaCronError as exc:
        drain.failed.append({"vm": name, "op": None, "error": exc.to_wire()})
        log.warning("drain.vm_refused", extra=kv(op=drain.op.id, vm=name, error=exc.message))
        return
    child = svc.ops.running(started["op"])
    if child is not None:
        drain.current = child
        if drain.op.cancel_requested:  # cancelled while this one was being started
            drain.cancel()
        await child.ended.wait()
    doc = await svc.ops.get(started["op"])
    if doc["state"] == "succeeded":
        _moved(drain, name, doc, started["destination"])
    else:
        drain.failed.append({"vm": name, "op": doc["id"], "error": doc["error"]})


def _moved(drain: Drain, name: str, doc: dict[str, Any], destination: str) -> None:
    """``name`` left with the migration operation ``doc``."""
    offline = bool((doc.get("result") or {}).get("offline"))
    drain.moved.append(
        {"vm": name, "op": doc["id"], "destination": destination, "offline": offline}
    )
