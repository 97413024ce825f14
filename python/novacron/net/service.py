"""Host networks: the store's rows made real in the kernel, and kept real.

One lock orders every change (create, delete, reconcile), so a repair never races an
operator's change. ``net.create`` records the network first and then builds it: a crash
in between leaves a row that the next reconcile completes. ``net.delete`` removes the
devices, then the row; a crash in between leaves a row whose devices reconcile rebuilds
(and the operator deletes again). Devices marked as NovaCron's whose network has no row
are removed. Every change is logged and published as ``net.changed``; link state
changes of a network's devices are published as ``net.link``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import trio

from novacron import errors
from novacron.blocking import Pool
from novacron.config import Config
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.net import plan as planning
from novacron.net.kernel import Action, Kernel, Snapshot, watch_links
from novacron.net.model import NetworkSpec
from novacron.net.nic import NicSpec
from novacron.state.db import StateStore
from novacron.vm.records import Records

log = logging.getLogger("novacron.net")


class NetworkService:
    def __init__(
        self, config: Config, store: StateStore, db_pool: Pool, bus: EventBus, records: Records
    ) -> None:
        self.config = config
        self.store = store
        self.db_pool = db_pool
        self.bus = bus
        self.records = records
        self.kernel = Kernel()
        self.pool = Pool("netlink", 1)
        self.networks: dict[str, NetworkSpec] = {}
        self.problems: dict[str, list[str]] = {}
        self._lock = trio.Lock()
        self._poke = trio.Event()

    # -- queries -------------------------------------------------------------------------

    def spec(self, name: str) -> NetworkSpec:
        found = self.networks.get(name)
        if found is None:
            raise errors.NotFound(f"network {name!r} not found", {"network": name})
        return found

    async def nics_by_network(self) -> dict[str, list[tuple[str, str]]]:
        """(vm, mac) of every VM NIC, by network."""
        found: dict[str, list[tuple[str, str]]] = {}
        for rec in await self.records.all():
            for nic in rec.spec.get("nics", ()):
                found.setdefault(nic["network"], []).append((rec.name, nic["mac"]))
        return found

    async def users(self, name: str) -> list[tuple[str, str]]:
        """(vm, mac) of every NIC on network ``name``."""
        return (await self.nics_by_network()).get(name, [])

    async def describe(
        self,
        spec: NetworkSpec,
        snap: Snapshot | None = None,
        nics: dict[str, list[tuple[str, str]]] | None = None,
    ) -> dict[str, Any]:
        if snap is None:
            snap = await self.pool.run(self.kernel.snapshot)
        if nics is None:
            nics = await self.nics_by_network()
        devices: list[dict[str, Any]] = []
        for dev in (spec.bridge, spec.link, spec.uplink):
            if dev is None:
                continue
            link = snap.links.get(dev)
            entry: dict[str, Any] = {"name": dev, "present": link is not None}
            if link is not None:
                entry.update(up=link.up, oper=link.oper, mtu=link.mtu, master=link.master)
            devices.append(entry)
        doc = spec.to_dict()
        doc.update(
            bridge=spec.bridge,
            devices=devices,
            mtu_effective=planning.overlay_mtu(spec, snap),
            nics=[{"vm": vm, "mac": mac} for vm, mac in nics.get(spec.name, [])],
            problems=self.problems.get(spec.name, []),
        )
        if spec.kind == "vxlan" and spec.link:
            doc["fdb"] = sorted(snap.fdb.get(spec.link, frozenset()))
        return doc

    async def list_networks(self, visible: Callable[[str], bool]) -> list[dict[str, Any]]:
        snap = await self.pool.run(self.kernel.snapshot)
        nics = await self.nics_by_network()
        return [
            await self.describe(spec, snap, nics)
            for name, spec in sorted(self.networks.items())
            if visible(spec.tenant)
        ]

    async def check_nics(self, tenant: str, nics: tuple[NicSpec, ...]) -> None:
        """Refuses NICs on networks that do not exist or belong to another tenant."""
        for i, nic in enumerate(nics):
            spec = self.networks.get(nic.network)
            if spec is None or spec.tenant != tenant:
                raise errors.InvalidParams(
                    f"nics[{i}]: network {nic.network!r} not found in tenant {tenant!r}",
                    {"param": f"nics[{i}].network"},
                )

    # -- changes -------------------------------------------------------------------------

    def _announce(self, spec: NetworkSpec | None, action: Action, reason: str) -> None:
        """``net.changed`` for a change made (``spec`` None: a device of no network)."""
        self.bus.publish(
            {
                "topic": "net.changed",
                "tenant": spec.tenant if spec else None,
                "network": spec.name if spec else None,
                "reason": reason,
                **action.describe(),
            }
        )

    async def _apply(self, spec: NetworkSpec, actions: list[Action], reason: str) -> None:
        for action in actions:
            await self.pool.run(self.kernel.apply, action)
            self._announce(spec, action, reason)

    async def create(self, spec: NetworkSpec) -> dict[str, Any]:
        async with self._lock:
            if spec.name in self.networks:
                raise errors.AlreadyExists(
                    f"network {spec.name!r} already exists", {"network": spec.name}
                )
            snap = await self.pool.run(self.kernel.snapshot)
            planning.check_create(spec, snap, self.networks)
            with trio.CancelScope(shield=True):
                await self.db_pool.run(
                    self.store.insert_network, spec.name, spec.tenant, spec.kind, spec.to_dict()
                )
                self.networks[spec.name] = spec
                try:
                    built = planning.plan_network(spec, snap)
                    if built.problems:
                        raise errors.Conflict("; ".join(built.problems), {"network": spec.name})
                    await self._apply(spec, built.actions, "create")
                except BaseException:
                    await self._undo(spec)
                    raise
            log.info("net.created", extra=kv(network=spec.name, kind=spec.kind, tenant=spec.tenant))
            return await self.describe(spec)

    async def _undo(self, spec: NetworkSpec) -> None:
        """Removes whatever a failed create built, then its row."""
        try:
            snap = await self.pool.run(self.kernel.snapshot)
            await self._apply(spec, planning.plan_removal(spec, snap).actions, "rollback")
        finally:
            await self.db_pool.run(self.store.delete_network, spec.name)
            self.networks.pop(spec.name, None)

    async def delete(self, name: str) -> dict[str, Any]:
        async with self._lock:
            spec = self.spec(name)
            users = await self.users(name)
            if users:
                vms = sorted({vm for vm, _ in users})
                raise errors.Conflict(
                    f"network {name!r} is in use by the NICs of {', '.join(vms)}",
                    {"network": name, "vms": vms},
                )
            dependants = [n.name for n in self.networks.values() if n.parent == spec.bridge]
            if dependants:
                raise errors.Conflict(
                    f"network {name!r} carries VLAN network(s) {', '.join(dependants)}",
                    {"network": name, "networks": dependants},
                )
            with trio.CancelScope(shield=True):
                snap = await self.pool.run(self.kernel.snapshot)
                await self._apply(spec, planning.plan_removal(spec, snap).actions, "delete")
                await self.db_pool.run(self.store.delete_network, name)
                self.networks.pop(name, None)
                self.problems.pop(name, None)
            log.info("net.deleted", extra=kv(network=name))
            return {"name": name, "deleted": True}

    # -- reconciliation ------------------------------------------------------------------

    async def load(self) -> None:
        rows = await self.db_pool.run(self.store.list_networks)
        self.networks = {r["name"]: NetworkSpec.from_dict(r["spec"]) for r in rows}

    async def reconcile(self) -> int:
        """Brings the kernel back to the store; returns how many changes it made."""
        changed = 0
        async with self._lock:
            snap = await self.pool.run(self.kernel.snapshot)
            stale = False  # the snapshot no longer shows the kernel (we changed it)
            for action in planning.plan_orphans(snap, set(self.networks)).actions:
                await self._run_repair(None, action)
                changed, stale = changed + 1, True
            # parents before the VLAN networks that ride on them
            for spec in sorted(self.networks.values(), key=lambda s: s.kind == "vlan"):
                if stale:
                    snap = await self.pool.run(self.kernel.snapshot)
                repair = planning.plan_network(spec, snap)
                problems = list(repair.problems)
                for action in repair.actions:
                    failed = await self._run_repair(spec, action)
                    changed, stale = changed + 1, True
                    if failed is not None:  # the actions after it build on it: next pass
                        problems.append(failed)
                        known = failed in self.problems.get(spec.name, [])
                        (log.debug if known else log.warning)(
                            "net.repair_failed", extra=kv(network=spec.name, error=failed)
                        )
                        break
                self._note_problems(spec, problems)
        return changed

    async def _run_repair(self, spec: NetworkSpec | None, action: Action) -> str | None:
        """Applies one repair; why it failed, if it did."""
        try:
            await self.pool.run(self.kernel.apply, action)
        except errors.NovaCronError as exc:
            if spec is None:  # (a network's own failures are logged by the caller)
                log.warning("net.repair_failed", extra=kv(network="-", error=exc.message))
            return exc.message
        log.warning(
            "net.repaired",
            extra=kv(network=spec.name if spec else None, **action.describe()),
        )
        self._announce(spec, action, "reconcile")
        return None

    def _note_problems(self, spec: NetworkSpec, problems: list[str]) -> None:
        before = self.problems.get(spec.name, [])
        if problems != before:
            for problem in problems:
                log.warning("net.problem", extra=kv(network=spec.name, problem=problem))
        if problems:
            self.problems[spec.name] = problems
        else:
            self.problems.pop(spec.name, None)

    def _owner(self, device: str) -> NetworkSpec | None:
        for spec in self.networks.values():
            if device in (spec.bridge, spec.link, spec.uplink):
                return spec
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconciles once, reports ready, then watches links and repairs on a timer
        and whenever one of the networks' devices changes."""
        await self.load()
        await self.reconcile()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            task_status.started()
            interval = self.config.network_reconcile_interval_s or math.inf
            while True:
                with trio.move_on_after(interval):
                    await self._poke.wait()
                    await trio.sleep(0.2)  # let a burst of link events settle
                self._poke = trio.Event()
                await self.reconcile()

    async def _watch(self) -> None:
        send, recv = trio.open_memory_channel[list[dict[str, Any]]](256)
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()

        def deliver(batch: list[dict[str, Any]]) -> bool:
            if stop.is_set():
                return False
            try:
                trio.from_thread.run_sync(send.send_nowait, batch, trio_token=token)
            except (trio.RunFinishedError, trio.WouldBlock, trio.BrokenResourceError):
                return not stop.is_set()
            return True

        async def forward() -> None:
            async for batch in recv:
                for event in batch:
                    spec = self._owner(event["device"])
                    if spec is None:
                        continue
                    self.bus.publish(
                        {"topic": "net.link", "tenant": spec.tenant, "network": spec.name, **event}
                    )
                    self._poke.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                # the blocking watch is abandoned on cancellation (its thread ends at exit)
                await trio.to_thread.run_sync(watch_links, deliver, abandon_on_cancel=True)
        except Exception as exc:  # the timer still repairs; losing events must not stop the daemon
            log.error("net.watch_failed", extra=kv(error=repr(exc)))
        finally:
            stop.set()

    def close(self) -> None:
        self.kernel.close()
