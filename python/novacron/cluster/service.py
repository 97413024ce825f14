"""This node's part in the cluster: membership under a lease, VM ownership, the view
of the other nodes. All cluster state lives in etcd (``docs/cluster.md``).

* ``/novacron/v1/nodes/<node>`` → JSON (address, version, labels, capacity, VM count),
  written under a lease kept alive by :meth:`ClusterService._membership`; rewritten only
  when the document changed or every ``refresh_s`` (keepalives are not writes).
* ``/novacron/v1/vms/<tenant>/<name>`` → the owning node's name, written only in
  transactions: created if absent (a name is claimed once, cluster-wide), removed only
  by its owner.

etcd being away never stops local work: a claim or release that cannot reach it is
deferred, and when etcd answers again the node registers anew and re-claims what it
holds (reporting any VM another node claimed meanwhile as a conflict). A change of
ownership asked for during the node's first attempt to register waits for that attempt
(bounded) rather than being deferred: the daemon serves before it has registered, and
a name created then is still claimed cluster-wide.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from novacron import __version__, errors
from novacron._core import Placer
from novacron.client import Client, TlsFiles, connect_tls
from novacron.cluster import scoring
from novacron.cluster.etcd import EtcdClient, KeyValue, WatchCompacted
from novacron.config import Config
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.rpc.dispatch import CallContext
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec

log = logging.getLogger("novacron.cluster")

NODES = b"/novacron/v1/nodes/"
VMS = b"/novacron/v1/vms/"
LOCKS = b"/novacron/v1/locks/"  # migrations in flight (``cluster/locks.py``)


def vm_key(tenant: str, name: str) -> bytes:
    return VMS + f"{tenant}/{name}".encode()


def lock_key(tenant: str, name: str) -> bytes:
    return LOCKS + f"{tenant}/{name}".encode()


class ClusterService:
    def __init__(self, config: Config, vms: VmService, bus: EventBus, etcd: EtcdClient) -> None:
        self.config = config
        self.vms = vms
        self.bus = bus
        self.etcd = etcd
        self.node = config.node_name
        # the node certificate, for calls to other nodes (checked at start: etcd uses it too)
        self.files = TlsFiles(Path(config.tls_cert), Path(config.tls_key), Path(config.tls_ca))
        self.lease = 0
        self.connected = False
        # set once the first attempt to join (grant, register, reclaim) has ended
        self._joined_once = trio.Event()
        self.registered_at = 0.0
        self.nodes: dict[str, dict[str, Any]] = {}  # up, as the watch saw them
        # per node: the registration's revision and the engine state rebuilt from it
        self._placers: dict[str, tuple[int, Placer | None]] = {}
        self.down: dict[str, float] = {}  # node -> when its registration vanished
        self.conflicts: dict[str, str] = {}  # "tenant/name" -> the other owner
        self._changed = trio.Event()
        self._deferred = False  # a claim, release or transfer is waiting for etcd
        self._transfers: dict[str, str] = {}  # "tenant/name" -> source node, not yet moved

    # -- the node's registration ---------------------------------------------------------

    def document(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "address": self.advertised(),
            "version": __version__,
            "labels": self.config.labels,
            "capacity": self.vms.placement.report(),
            "vms": len(self.vms.managed),
            "cordon": self.vms.cordon.to_wire(),  # placement passes a cordoned node by
            # placement passes it by for VMs with new volumes when its pool is short
            "storage": {"short": self.vms.storage.short},
        }

    def changed(self) -> None:
        """Something the registration shows changed (a VM came or went)."""
        self._changed.set()

    async def _register(self) -> dict[str, Any]:
        doc = self.document()
        body = json.dumps({**doc, "updated_at": time.time()}, sort_keys=True).encode()
        await self.etcd.put(NODES + self.node.encode(), body, self.lease)
        self.registered_at = time.monotonic()
        return doc

    async def _membership(self) -> None:
        ttl = self.config.cluster_lease_ttl_s
        backoff = 0.5
        while True:
            try:
                self.lease = await self.etcd.grant(ttl)
                published = await self._register()
                self._deferred = False
                await self._reclaim()
                if not self.connected:
                    log.info("cluster.registered", extra=kv(node=self.node, lease=self.lease))
                self.connected, backoff = True, 0.5
                self._joined_once.set()
                while True:
                    with trio.move_on_after(ttl / 3):
                        await self._changed.wait()
                    self._changed = trio.Event()
                    if await self.etcd.keepalive(self.lease) == 0:
                        log.warning("cluster.lease_expired", extra=kv(node=self.node))
                        break  # register again under a new lease
                    if self._deferred:  # etcd failed a call but never dropped this node
                        self._deferred = False
                        await self._reclaim()
                    due = time.monotonic() - self.registered_at >= self.config.cluster_refresh_s
                    if due or self.document() != published:
                        published = await self._register()
            except errors.Unavailable as exc:
                if self.connected:
                    log.error("cluster.unreachable", extra=kv(error=exc.message))
                self.connected = False
                self._joined_once.set()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def reachable(self) -> bool:
        """Whether etcd takes changes now. During the node's first attempt to join, waits
        for that attempt to end, at most three cluster timeouts (later, with etcd away,
        it answers at once: changes are deferred, local work never waits)."""
        if not self.connected:
            with trio.move_on_after(3 * self.config.cluster_timeout_s):
                await self._joined_once.wait()
        return self.connected

    # -- ownership -----------------------------------------------------------------------

    async def claim(self, tenant: str, name: str) -> None:
        """Claims ``name`` for this node (``already_exists`` if another node owns it).
        With etcd away the claim is deferred to the next reconnect."""
        if not await self.reachable():
            self._defer("claim", name)
            return
        try:
            held = await self.etcd.create(vm_key(tenant, name), self.node.encode())
        except errors.Unavailable:
            self._defer("claim", name)
            return
        if held is not None and held.value.decode() != self.node:
            raise errors.AlreadyExists(
                f"vm {name!r} of tenant {tenant!r} exists on node {held.value.decode()!r}",
                {"vm": name, "node": held.value.decode()},
            )
        self.changed()

    async def release(self, tenant: str, name: str) -> None:
        """Gives ``name`` up if this node owns it (deferred when etcd is away)."""
        self.changed()
        if not await self.reachable():
            self._defer("release", name)
            return
        try:
            await self.etcd.delete_if(vm_key(tenant, name), self.node.encode())
        except errors.Unavailable:
            self._defer("release", name)

    def _defer(self, what: str, name: str) -> None:
        """etcd did not take a change of ownership: the next reclaim makes it."""
        log.warning(f"cluster.{what}_deferred", extra=kv(vm=name))
        self._deferred = True
        self._changed.set()

    async def arrived(self, tenant: str, name: str, source: str) -> None:
        """A VM migrated here from ``source``: ownership moves to this node (from the
        source only; deferred to the next reconnect when etcd is away)."""
        self.changed()
        self._transfers[f"{tenant}/{name}"] = source
        if not await self.reachable():
            self._defer("transfer", name)
            return
        key = vm_key(tenant, name)
        try:
            if not await self.etcd.replace(key, source.encode(), self.node.encode()):
                held = await self.etcd.create(key, self.node.encode())
                if held is not None and held.value != self.node.encode():
                    log.error("cluster.conflict", extra=kv(vm=name, other_node=held.value.decode()))
        except errors.Unavailable:
            self._defer("transfer", name)

    async def _reclaim(self) -> None:
        """After (re)connecting: claim every local VM, drop claims of VMs gone from here."""
        local = {f"{r.tenant}/{r.name}": r for r in await self.vms.records.all()}
        for key, source in list(self._transfers.items()):  # migrations that arrived meanwhile
            tenant, _, name = key.partition("/")
            await self.etcd.replace(vm_key(tenant, name), source.encode(), self.node.encode())
            self._transfers.pop(key, None)
        owned, _ = await self.etcd.get_prefix(VMS)
        mine = {kv_.key[len(VMS) :].decode() for kv_ in owned if kv_.value == self.node.encode()}
        conflicts: dict[str, str] = {}
        for key, rec in local.items():
            if key in mine or rec.name in self.vms.migrating:  # a switch-over may be under way
                continue
            if self.vms.busy(rec.name):  # being created or deleted: it claims or releases
                self._deferred = True  # look again on the next round
                continue
            held = await self.etcd.create(vm_key(rec.tenant, rec.name), self.node.encode())
            if held is not None and held.value != self.node.encode():
                conflicts[key] = held.value.decode()
        for key in mine - set(local):
            tenant, _, name = key.partition("/")
            if self.vms.busy(name):  # claimed, and its record not written yet
                self._deferred = True
                continue
            await self.etcd.delete_if(vm_key(tenant, name), self.node.encode())
        for key, other in conflicts.items():
            if key not in self.conflicts:
                log.error("cluster.conflict", extra=kv(vm=key, other_node=other))
                self.bus.publish(
                    {
                        "topic": "cluster.conflict",
                        "tenant": key.partition("/")[0],
                        "vm": key.partition("/")[2],
                        "node": self.node,
                        "other_node": other,
                    }
                )
        self.conflicts = conflicts

    # -- the other nodes -----------------------------------------------------------------

    async def list_nodes(self) -> list[dict[str, Any]]:
        found, _ = await self.etcd.get_prefix(NODES)
        up = [dict(json.loads(k.value), state="up") for k in found]
        names = {n["node"] for n in up}
        down = [
            {"node": n, "state": "down", "down_since": t}
            for n, t in sorted(self.down.items())
            if n not in names
        ]
        return sorted(up, key=lambda n: str(n["node"])) + down

    def advertised(self) -> str:
        """Where other nodes reach this one (the TLS listener; a wildcard host is
        replaced by the node's name)."""
        host, _, port = self.config.tls_listen.rpartition(":")
        if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 - comparing, not binding
            host = self.node
        return f"{host}:{port}" if port else ""

    async def forward(
        self, ctx: CallContext, method: str, params: dict[str, Any], name: str
    ) -> tuple[bool, Any]:
        """Sends a call about VM ``name``, which this node does not have, to the node that
        owns it, with the caller's identity (re-checked there). (False, None): no node has
        a VM of that name in a tenant the caller sees."""
        owner = await self.owner_elsewhere(ctx, name)
        if owner is None:
            return False, None
        return True, await self.call_on(owner[0], ctx, method, params)

    async def owner_elsewhere(self, ctx: CallContext, name: str) -> tuple[str, str] | None:
        """The other node that owns VM ``name`` in a tenant the caller sees, and that
        tenant; None when this node has it (a refusal about something else) or no node
        does."""
        if await self.vms.records.get(name) is not None:
            return None  # ours: the refusal was about something else (a NIC, a tenant)
        owners = [
            vm
            for vm in await self._owners_of(name, ctx.identity.tenants)
            if vm["node"] != self.node and ctx.identity.sees(vm["tenant"])
        ]
        if not owners:
            return None
        if len(owners) > 1:
            raise errors.Conflict(
                f"several VMs named {name!r} in your tenants; call their nodes directly",
                {"vm": name, "nodes": sorted(o["node"] for o in owners)},
            )
        return str(owners[0]["node"]), str(owners[0]["tenant"])

    @asynccontextmanager
    async def peer(self, node: str, notification_buffer: float = math.inf) -> AsyncIterator[Client]:
        """A connection to ``node``'s TLS listener with this node's certificate."""
        record = await self.etcd.get(NODES + node.encode())
        if record is None:
            raise errors.Unavailable(f"node {node!r} is down", {"node": node})
        address = json.loads(record.value).get("address")
        if not address:
            raise errors.Unavailable(f"node {node!r} publishes no address", {"node": node})
        async with connect_tls(
            address, self.files, server_name=node, notification_buffer=notification_buffer
        ) as client:
            yield client

    async def call_on(
        self, node: str, ctx: CallContext, method: str, params: dict[str, Any]
    ) -> Any:
        """Runs ``method`` on ``node`` as the caller of ``ctx`` (``cluster.forward``)."""
        log.info("cluster.forward", extra=kv(method=method, node=node))
        refused: errors.NovaCronError | None = None
        async with self.peer(node) as peer:
            try:
                result = await peer.call(
                    "cluster.forward", call=method, params=params, identity=ctx.identity.to_wire()
                )
            except errors.NovaCronError as exc:  # raised out here, not through the nursery
                refused = exc
        if refused is not None:
            raise refused
        return result

    async def choose_node(self, spec: VmSpec, wanted: str) -> str:
        """The node a new VM goes to: ``wanted`` itself (it must be up), or for ``auto``
        the best-scoring up node (this one included)."""
        if wanted != "auto":
            if wanted != self.node and await self.etcd.get(NODES + wanted.encode()) is None:
                raise errors.NotFound(f"node {wanted!r} is not up in the cluster", {"node": wanted})
            return wanted
        node, score = await self.best_node(spec)
        log.info("cluster.placed", extra=kv(vm=spec.name, node=node, score=round(score, 4)))
        return node

    async def best_node(
        self, spec: VmSpec, exclude: frozenset[str] = frozenset()
    ) -> tuple[str, float]:
        """The up, uncordoned node (not one of ``exclude``) that places ``spec`` with
        the most room left, and its score."""
        if not await self.reachable():
            raise errors.Unavailable("etcd is unreachable: no cluster-wide placement")
        placers = {n: p for n, p in self._free_placers().items() if n not in exclude}
        placers = scoring.with_storage_for(spec, placers, self.nodes)
        # the engine's work, without the GIL, off the trio thread when there is much of it
        if len(placers) > 64:
            return await trio.to_thread.run_sync(scoring.choose_among, spec, placers)
        return scoring.choose_among(spec, placers)

    async def status(self) -> dict[str, Any]:
        """This node's standing in the cluster (``revision``: etcd's, read now)."""
        return {
            "node": self.node,
            "connected": self.connected,
            "lease": self.lease,
            "lease_ttl_s": self.config.cluster_lease_ttl_s,
            "endpoints": self.etcd.endpoints,
            "revision": await self.etcd.revision(),
            "conflicts": [{"vm": k, "other_node": v} for k, v in sorted(self.conflicts.items())],
        }

    async def _owners_of(self, name: str, tenants: frozenset[str] | None) -> list[dict[str, Any]]:
        """Owners of VMs called ``name``: one key per tenant for a tenant-scoped caller,
        the whole listing only for callers who see every tenant."""
        if tenants is None:
            return [vm for vm in await self.list_vms() if vm["name"] == name]
        found = []
        for tenant in sorted(tenants):
            held = await self.etcd.get(vm_key(tenant, name))
            if held is not None:
                found.append({"tenant": tenant, "name": name, "node": held.value.decode()})
        return found

    async def list_vms(self, locks: bool = False) -> list[dict[str, Any]]:
        """Every VM name and its owner; ``locks``: with ``migration`` (the lock's
        document) for the VMs migrating now."""
        found, _ = await self.etcd.get_prefix(VMS)
        held: dict[bytes, Any] = {}
        if locks:
            locked, _ = await self.etcd.get_prefix(LOCKS)
            held = {k.key[len(LOCKS) :]: json.loads(k.value) for k in locked}
        out = []
        for item in found:
            key = item.key[len(VMS) :]
            tenant, _, name = key.decode().partition("/")
            vm = {"tenant": tenant, "name": name, "node": item.value.decode()}
            if key in held:
                vm["migration"] = held[key]
            out.append(vm)
        return out

    def _free_placers(self) -> dict[str, Placer | None]:
        """Every up node's published free state as an engine, rebuilt only when its
        registration changed (the watch keeps ``nodes`` current)."""
        out: dict[str, Placer | None] = {}
        for name, doc in self.nodes.items():
            if not scoring.usable(doc):
                continue
            revision = int(doc.get("_revision", 0))
            cached = self._placers.get(name)
            if cached is None or cached[0] != revision:
                cached = (revision, scoring.free_placer(doc.get("capacity") or {}))
                self._placers[name] = cached
            out[name] = cached[1]
        for gone in set(self._placers) - set(self.nodes):
            del self._placers[gone]
        return out

    def _seen(self, item: KeyValue, deleted: bool, announce: bool = True) -> None:
        """A registration written or gone; ``announce``: publish what changed."""
        node = item.key[len(NODES) :].decode()
        if deleted:
            if self.nodes.pop(node, None) is not None or node not in self.down:
                self.down[node] = time.time()
                log.warning("cluster.node_down", extra=kv(node=node))
                self.bus.publish({"topic": "cluster.node", "node": node, "state": "down"})
            return
        doc = json.loads(item.value)
        doc["_revision"] = item.mod_revision
        if node not in self.nodes and announce:
            self.down.pop(node, None)
            log.info("cluster.node_up", extra=kv(node=node))
            self.bus.publish({"topic": "cluster.node", "node": node, "state": "up"})
        self.nodes[node] = doc

    async def _watch_nodes(self) -> None:
        first = True
        while True:
            revision = await self._read_nodes(announce=not first)
            first = False
            try:
                async for _, events in self.etcd.watch_prefix(NODES, revision + 1):
                    for event in events:
                        self._seen(event.kv, event.kind == "delete")
            except WatchCompacted as exc:  # missed events: read everything again
                log.warning("cluster.watch_resync", extra=kv(compacted=exc.compact_revision))

    async def _read_nodes(self, announce: bool) -> int:
        """Every registration as it is now (``announce``: changes against what was
        known are published as up/down); returns the revision it was read at."""
        while True:
            try:
                found, revision = await self.etcd.get_prefix(NODES)
                break
            except errors.Unavailable:
                await trio.sleep(1)
        present = {item.key[len(NODES) :].decode(): item for item in found}
        for gone in set(self.nodes) - set(present):
            self._seen(KeyValue(NODES + gone.encode(), b"", 0, 0), deleted=True)
        for item in present.values():
            self._seen(item, deleted=False, announce=announce)
        return revision

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Registers and watches in the background: the daemon never waits for etcd."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._membership)
            nursery.start_soon(self._watch_nodes)
            task_status.started()
            await trio.sleep(math.inf)

    async def close(self) -> None:
        with trio.move_on_after(2), contextlib.suppress(errors.Unavailable):
            if self.connected and self.lease:
                await self.etcd.revoke(self.lease)  # a clean stop: down at once
        await self.etcd.aclose()
