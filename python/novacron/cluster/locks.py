"""Migration locks: a VM that migrates is locked cluster-wide, and its ownership moves in
the same etcd transaction that lets the switch-over happen.

* ``/novacron/v1/locks/<tenant>/<name>`` → JSON ``{"node", "op", "destination",
  "since"}``, created by the source under its node lease when ``vm.migrate`` starts,
  only if the source owns the VM and no lock exists: of two migrations of one VM
  exactly one gets it (the other: ``conflict``). A source that dies loses its lease and
  with it the lock (within the lease TTL).
* The switch-over: the source holds the destination's device state back (the
  destination QEMU cannot finish without it) until :meth:`MigrationLocks.commit` ran
  one transaction — *lock still ours, VM still ours, destination registered* → owner
  becomes the destination and the lock goes. Refused or unanswered: the migration is
  aborted and the VM stays on the source.
* While the migration runs the source checks that the lock is still there
  (:meth:`MigrationLocks.held`, every ``LOCK_CHECK_S``): a lock that is gone (its lease
  expired, or someone removed it) aborts the migration at once, instead of at a
  switch-over that would be refused.
* :meth:`MigrationLocks.end` after the outcome: a failed migration gives the lock back
  and, when a commit may have been made, moves the ownership back to the source
  (deferred to the next reconnect while etcd is away).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass

from novacron import errors
from novacron.cluster.etcd import absent, delete, exists, found, holds, put, read
from novacron.cluster.service import NODES, ClusterService, lock_key, vm_key
from novacron.logs import kv

log = logging.getLogger("novacron.cluster")

LOCK_LOST = "the migration lock was lost (this node's lease expired or it was removed)"


@dataclass
class MigrationLock:
    tenant: str
    name: str
    value: bytes  # exactly what was written: the commit compares against it
    destination: str = ""  # the node the ownership goes to (known after prepare)
    committing: bool = False  # a commit was sent: it may have been made


class MigrationLocks:
    def __init__(self, cluster: ClusterService) -> None:
        self.cluster = cluster

    async def acquire(self, tenant: str, name: str, op: str, destination: str) -> MigrationLock:
        """Locks ``name`` for a migration by this node (``conflict`` if it is locked or
        another node owns it; ``unavailable`` without etcd)."""
        c = self.cluster
        if not await c.reachable():
            raise errors.Unavailable(
                "etcd is unreachable: a migration needs the cluster-wide lock on the vm",
                {"vm": name},
            )
        doc = {"node": c.node, "op": op, "destination": destination, "since": time.time()}
        value = json.dumps(doc, sort_keys=True).encode()
        owner, lock = vm_key(tenant, name), lock_key(tenant, name)
        ok, responses = await c.etcd.txn(
            [holds(owner, c.node.encode()), absent(lock)],
            [put(lock, value, c.lease)],
            [read(owner), read(lock)],
        )
        if ok:
            log.info("cluster.migration_locked", extra=kv(vm=name, op=op))
            return MigrationLock(tenant, name, value)
        held = found(responses, 1)
        if held is not None:
            other = json.loads(held.value)
            raise errors.Conflict(
                f"vm {name!r} is being migrated by {other.get('node')!r} ({other.get('op')})",
                {"vm": name, "node": other.get("node"), "op": other.get("op")},
            )
        holder = found(responses, 0)
        other_node = holder.value.decode() if holder is not None else None
        raise errors.Conflict(
            f"vm {name!r} is owned by node {other_node!r} in the cluster"
            if other_node is not None
            else f"vm {name!r} is not claimed by this node in the cluster yet",
            {"vm": name, "node": other_node},
        )

    async def commit(self, lock: MigrationLock) -> None:
        """The switch-over's transaction: ownership to ``lock.destination``, lock gone.
        Raises ``migration_failed`` when etcd refuses it or does not answer."""
        c = self.cluster
        owner, key = vm_key(lock.tenant, lock.name), lock_key(lock.tenant, lock.name)
        dest = NODES + lock.destination.encode()
        lock.committing = True
        try:
            ok, responses = await c.etcd.txn(
                [holds(key, lock.value), holds(owner, c.node.encode()), exists(dest)],
                [put(owner, lock.destination.encode()), delete(key)],
                [read(key), read(owner)],
            )
        except errors.Unavailable as exc:
            raise errors.MigrationFailed(
                f"etcd did not confirm the switch-over: {exc.message}", {"vm": lock.name}
            ) from None
        if ok:
            log.info("cluster.ownership_moved", extra=kv(vm=lock.name, node=lock.destination))
            c.changed()
            return
        lock.committing = False  # refused: nothing was written
        held, owned = found(responses, 0), found(responses, 1)
        if held is None or held.value != lock.value:
            why = LOCK_LOST
        elif owned is None or owned.value != c.node.encode():
            why = "this node no longer owns the vm in the cluster"
        else:
            why = f"the destination {lock.destination!r} is not registered in the cluster"
        raise errors.MigrationFailed(f"switch-over refused: {why}", {"vm": lock.name})

    async def held(self, lock: MigrationLock) -> bool:
        """Whether etcd still holds ``lock`` as this migration's. ``True`` when etcd does
        not answer: the switch-over's transaction decides then."""
        try:
            kv = await self.cluster.etcd.get(lock_key(lock.tenant, lock.name))
        except errors.Unavailable:
            return True
        return kv is not None and kv.value == lock.value

    async def end(self, lock: MigrationLock, moved: bool) -> None:
        """After the outcome. Moved: the commit made the change (the destination also
        moves the ownership when it records the VM). Otherwise the lock is given back
        and a commit that may have been made is undone."""
        if moved and lock.committing:
            return
        with contextlib.suppress(errors.Unavailable):  # else it goes with the lease
            await self.cluster.etcd.delete_if(lock_key(lock.tenant, lock.name), lock.value)
        if not moved and lock.committing and lock.destination:
            await self.take_back(lock.tenant, lock.name, lock.destination)

    async def take_back(self, tenant: str, name: str, destination: str) -> None:
        """The VM stayed here after a switch-over that may have been committed: its
        ownership moves back from ``destination`` (deferred while etcd is away)."""
        log.warning("cluster.ownership_reverted", extra=kv(vm=name, node=destination))
        await self.cluster.arrived(tenant, name, destination)
