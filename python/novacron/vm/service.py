"""VM lifecycle: the RPC-facing operations, one per-VM lock each.

sqlite holds what the operator asked for (tenant, spec, desired state); libvirt is the
truth for what is running. Multi-step changes (create, delete) run shielded from
cancellation so a shutdown or a dropped client never leaves half of one behind, and
are ordered so that a crash between steps is repaired by :mod:`novacron.vm.reconcile`.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import trio

from novacron import errors
from novacron.blocking import Pool
from novacron.config import Config
from novacron.logs import kv
from novacron.net.nic import NicSpec
from novacron.placement.service import PlacementService
from novacron.state.db import StateStore, VmRecord
from novacron.vm import base_images, domain_xml, storage_room
from novacron.vm.base_images import ImageSource
from novacron.vm.cordon import Cordon
from novacron.vm.domain_xml import ManagedDomain
from novacron.vm.driver import Hypervisor, RuntimeState
from novacron.vm.managed import ManagedVms
from novacron.vm.quotas import Quotas
from novacron.vm.records import Records
from novacron.vm.restarts import RestartHistory
from novacron.vm.spec import DiskSpec, VmSpec, stored_spec

log = logging.getLogger("novacron.vm")

POLL_INTERVAL = 0.2
RESTARTS_KEY = "restarts"  # node_settings: the restart history (vm/restarts.py)
# how long a refresh of the pool waits for libvirt to finish building a volume there
POOL_BUSY_S = 600.0


class Ownership(Protocol):
    """Cluster-wide VM names (``novacron.cluster.service.ClusterService``)."""

    async def claim(self, tenant: str, name: str) -> None: ...

    async def release(self, tenant: str, name: str) -> None: ...

    async def arrived(self, tenant: str, name: str, source: str) -> None: ...


class VmService:
    def __init__(self, config: Config, hv: Hypervisor, store: StateStore) -> None:
        self.config = config
        self.storage = storage_room.StorageWatch(self)  # (run by the daemon)
        self.hv = hv
        self.store = store
        self.hv_pool = Pool("libvirt", config.hypervisor_threads)
        self.db_pool = Pool("sqlite", 1)
        self.records = Records(store, self.db_pool)
        self.placement = PlacementService(config)
        self.quotas = Quotas(store, self.db_pool)
        self.cordon = Cordon(store, self.db_pool, config.node_name)  # (loaded by the daemon)
        self._tenant_locks: dict[str, trio.Lock] = {}
        self._locks: dict[str, trio.Lock] = {}
        self.managed = ManagedVms()  # names and tenants, for the event forwarder
        self.migrating: set[str] = set()  # VMs leaving this node (set by the migration service)
        # restarts of VMs found shut off while they should run (vm/keeper.py)
        self.restarts = RestartHistory(config.vm_restart_limit, config.vm_restart_window_s)
        # refuses NICs on networks the VM's tenant does not have (set by the network service)
        self.nic_check: Callable[[str, tuple[NicSpec, ...]], Awaitable[None]] | None = None
        # shapes a running VM's taps to its NICs' limits (set by the NIC shaper)
        self.nic_shaper: Callable[[str], Awaitable[None]] | None = None
        self.ownership: Ownership | None = None  # cluster-wide names (set by the cluster service)

    # -- helpers -----------------------------------------------------------------------

    @asynccontextmanager
    async def locked(self, name: str) -> AsyncIterator[None]:
        """Serialises lifecycle operations on one VM; the lock entry is dropped when idle."""
        lock = self._locks.setdefault(name, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(name, None)

    def busy(self, name: str) -> bool:
        """Whether a lifecycle operation on ``name`` runs or waits (it may be changing
        the name's cluster-wide ownership)."""
        return name in self._locks

    def tenant_lock(self, tenant: str) -> trio.Lock:
        """Held while a tenant's quota is checked and a VM of it recorded."""
        return self._tenant_locks.setdefault(tenant, trio.Lock())

    @asynccontextmanager
    async def changing(self, name: str) -> AsyncIterator[None]:
        """:meth:`locked` for operations that change a VM: refused while it migrates."""
        async with self.locked(name):
            if name in self.migrating:
                raise errors.Conflict(
                    f"vm {name!r} is being migrated; cancel the migration first", {"vm": name}
                )
            yield

    async def record(self, name: str) -> VmRecord:
        rec = await self.records.get(name)
        if rec is None or rec.desired_state == "deleting":
            raise errors.NotFound(f"vm {name!r} not found", {"vm": name})
        return rec

    def console_log(self, name: str) -> str:
        return str(self.config.state_dir / "consoles" / f"{name}.log")

    def disk_device(self, path: str, disk: DiskSpec, target: str) -> domain_xml.DiskDevice:
        """How ``disk`` at ``path`` is defined for the guest as ``target``."""
        return domain_xml.DiskDevice(
            path, disk.format, target, disk.limits, discard=self.config.disk_discard
        )

    def managed_volume_name(self, name: str, target: str, fmt: str) -> str:
        return f"{name}-{target}.{fmt}"

    def disk_paths(self, spec: VmSpec) -> list[str]:
        """Where each disk of ``spec`` lives: the daemon's pool for new ones, else its path."""
        return [
            str(self.config.images_dir / self.managed_volume_name(spec.name, target, d.format))
            if d.managed
            else str(d.path)
            for d, target in zip(spec.disks, spec.disk_targets(), strict=True)
        ]

    def managed_volume_paths(self, rec: VmRecord) -> list[Path]:
        spec = VmSpec.from_dict(rec.spec)
        return [
            Path(p) for p, d in zip(self.disk_paths(spec), spec.disks, strict=True) if d.managed
        ]

    async def domain_xml(
        self,
        spec: VmSpec,
        vm_uuid: str,
        disk_paths: list[str],
        placement: dict[str, Any] | None = None,
    ) -> str:
        """The domain XML for ``spec`` on this host, its disks at ``disk_paths``."""
        plan = domain_xml.DomainPlan(
            spec=spec,
            uuid=vm_uuid,
            domain_type=await self.hv_pool.run(self.hv.domain_type),
            disks=tuple(
                self.disk_device(path, disk, target)
                for disk, path, target in zip(
                    spec.disks, disk_paths, spec.disk_targets(), strict=True
                )
            ),
            console_log=self.console_log(spec.name),
            placement=placement,
            emulator=self.config.emulator or None,
            cpu_model=self.config.cpu_model,
        )
        return domain_xml.build(plan)

    @staticmethod
    def _summary(rec: VmRecord, runtime: RuntimeState | None) -> dict[str, Any]:
        return {
            "name": rec.name,
            "uuid": rec.uuid,
            "tenant": rec.tenant,
            "state": runtime.state if runtime else "missing",
            "reason": runtime.reason if runtime else "no libvirt domain",
            "desired_state": rec.desired_state,
            "vcpus": rec.spec["vcpus"],
            "max_vcpus": rec.spec.get("max_vcpus") or rec.spec["vcpus"],
            "memory_mib": rec.spec["memory_mib"],
            "max_memory_mib": rec.spec.get("max_memory_mib") or rec.spec["memory_mib"],
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }

    async def _runtime(self, name: str) -> RuntimeState:
        return await self.hv_pool.run(self.hv.state, name)

    async def _expect(self, name: str, allowed: tuple[str, ...], action: str) -> RuntimeState:
        runtime = await self._runtime(name)
        if runtime.state not in allowed:
            raise errors.Conflict(
                f"cannot {action} vm {name!r} while it is {runtime.state}",
                {"vm": name, "state": runtime.state},
            )
        return runtime

    # -- queries -----------------------------------------------------------------------

    async def list_vms(self, tenant: str | None = None) -> list[dict[str, Any]]:
        records = await self.records.all()
        runtimes = await self.hv_pool.run(self.hv.all_states)
        return [
            self._summary(rec, runtimes.get(rec.name))
            for rec in records
            if rec.desired_state != "deleting" and (tenant is None or rec.tenant == tenant)
        ]

    async def get(self, name: str) -> dict[str, Any]:
        rec = await self.record(name)
        runtime = await self.hv_pool.run(self.hv.state_or_none, name)
        doc = self._summary(rec, runtime)
        spec = VmSpec.from_dict(rec.spec)
        managed = {str(p) for p in self.managed_volume_paths(rec)}
        sizes = {d.target: d.size_gib for d in spec.named_disks()}
        limits = {d.target: d.limits.to_dict() for d in spec.named_disks() if d.limits}
        disks = []
        agent = None
        if runtime is not None:
            xml = await self.hv_pool.run(self.hv.xml, name)
            agent = domain_xml.guest_agent_state(xml)
            failed = {}
            if (runtime.state, runtime.reason) == ("paused", "ioerror"):
                failed = await self.hv_pool.run(self.hv.disk_errors, name)
            for disk in domain_xml.parse_disks(xml):
                if disk.path is not None:
                    mine = disk.path in managed
                    disks.append(
                        {
                            "target": disk.target,
                            "path": disk.path,
                            "managed": mine,
                            "format": disk.format,
                            "size_gib": sizes.get(disk.target) if mine else None,
                            "limits": limits.get(disk.target),
                            "error": failed.get(disk.target),
                        }
                    )
        doc.update(
            cpu_policy=spec.cpu_policy,
            memory_policy=spec.memory_policy,
            hugepage_kib=spec.hugepage_kib,
            placement=rec.placement,
            kernel=spec.kernel,
            initrd=spec.initrd,
            cmdline=spec.cmdline,
            disks=disks,
            nics=[n.to_dict() for n in spec.nics],
            agent=agent,
            restart=spec.restart,
            restarts=self.restarts.view(name),
            console_log=None if self.hv.is_test_driver else self.console_log(name),
        )
        return doc

    # -- create / delete ---------------------------------------------------------------

    async def create(
        self, spec: VmSpec, start: bool, images: dict[str, ImageSource] | None = None
    ) -> dict[str, Any]:
        """A new VM; ``images``: the open base images its disks given by ``image`` are
        copied from (:func:`~novacron.vm.base_images.open_images`)."""
        self.cordon.refuse("new VMs")
        # the tenant's quota is checked and the VM recorded with no other create of
        # the same tenant in between
        async with self.tenant_lock(spec.tenant), self.locked(spec.name):
            await self.quotas.check(spec, await self.records.all())
            if spec.nics and self.nic_check is not None:
                await self.nic_check(spec.tenant, spec.nics)
            with trio.CancelScope(shield=True):
                await self.define_new(spec, images=images)
                log.info("vm.created", extra=kv(vm=spec.name, tenant=spec.tenant))
                if start:
                    await self.hv_pool.run(self.hv.start, spec.name)
                    await self.records.set_desired_state(spec.name, "running")
        return await self.get(spec.name)

    async def define_new(
        self,
        spec: VmSpec,
        copies: dict[str, str] | None = None,
        images: dict[str, ImageSource] | None = None,
    ) -> None:
        """Defines and records a new VM; its new volumes are empty or, for the targets in
        ``copies``, copies of the volume at that path (``vm.clone``), or for the disks
        given by ``image``, copies of that image (open in ``images``)."""
        if await self.records.get(spec.name) is not None:
            raise errors.AlreadyExists(f"vm {spec.name!r} already exists", {"vm": spec.name})
        if await self.hv_pool.run(self.hv.lookup, spec.name) is not None:
            raise errors.AlreadyExists(
                f"a libvirt domain named {spec.name!r} already exists (not managed by NovaCron)",
                {"vm": spec.name},
            )
        if self.ownership is not None:  # the name, cluster-wide (already_exists elsewhere)
            await self.ownership.claim(spec.tenant, spec.name)
        try:
            await self._build(spec, copies or {}, images or {})
        except BaseException:
            if self.ownership is not None:
                await self.ownership.release(spec.tenant, spec.name)
            raise

    async def _build(
        self, spec: VmSpec, copies: dict[str, str], images: dict[str, ImageSource]
    ) -> None:
        await self._check_storage(spec, copies, images)
        vm_uuid = str(uuidlib.uuid4())
        created: list[str] = []
        # decided and recorded at once (no await in between): a refusal changes nothing
        placement = self.placement.allocate(spec.name, spec)
        try:
            paths = []
            for disk, target in zip(spec.disks, spec.disk_targets(), strict=True):
                if disk.managed:
                    path = await self.new_volume(
                        spec.name, target, disk, copies.get(target), images.get(disk.image or "")
                    )
                    created.append(path)
                else:
                    assert disk.path is not None
                    path = disk.path
                paths.append(path)
            xml = await self.domain_xml(spec, vm_uuid, paths, placement)
            # define first, then commit the record: a crash in between leaves a domain
            # carrying our metadata, which reconcile adopts
            self.managed.add(spec.name, spec.tenant)  # before define: its events are forwarded
            try:
                await self.hv_pool.run(self.hv.define, xml)
                try:
                    await self.records.insert(
                        spec.name, vm_uuid, spec.tenant, spec.to_dict(), placement
                    )
                except BaseException:
                    await self.hv_pool.run(self.hv.undefine, spec.name)
                    raise
            except BaseException:
                self.managed.discard(spec.name)
                raise
        except BaseException:
            self.placement.release(spec.name)
            for path in created:
                await self.hv_pool.run(self.hv.delete_volume, path)
            raise

    async def _check_storage(
        self, spec: VmSpec, copies: dict[str, str], images: dict[str, ImageSource]
    ) -> None:
        """Room in the pool for ``spec``'s new volumes (:mod:`storage_room`): the copies
        and base images they are made from take their files' space at once."""
        managed = [
            (t, d) for t, d in zip(spec.disk_targets(), spec.disks, strict=True) if d.managed
        ]
        if not managed:
            return
        needed = 0
        for target, disk in managed:
            if target in copies:
                needed += await self.hv_pool.run(self.hv.volume_allocation, copies[target])
            elif disk.image is not None and disk.image in images:
                needed += images[disk.image].allocated
        what = f"vm {spec.name!r}'s volumes"
        promised = storage_room.promised(d for _, d in managed)
        await storage_room.check(self, needed, what, {"vm": spec.name}, promised)

    async def new_volume(
        self,
        name: str,
        target: str,
        disk: DiskSpec,
        copy_of: str | None = None,
        image: ImageSource | None = None,
    ) -> str:
        """A new volume in the daemon's pool for VM ``name``'s disk ``target`` (a copy of
        the volume at path ``copy_of``, or of the open base ``image``, if given)."""
        assert disk.size_gib is not None
        if image is not None:
            return await base_images.make_volume(self, name, target, disk, image)
        path: str = await self.hv_pool.run(
            self.hv.create_volume,
            self.config.storage_pool,
            self.managed_volume_name(name, target, disk.format),
            disk.size_gib,
            disk.format,
            copy_of,
        )
        return path

    async def refresh_pool(self) -> None:
        """libvirt looks at the daemon's pool's files again (a volume written by upload:
        its format and size as the file now has them). While libvirt builds a volume there
        (a clone's copy) it refuses: this tries again every second, and after
        ``POOL_BUSY_S`` answers ``conflict``."""
        pool = self.config.storage_pool
        with trio.move_on_after(POOL_BUSY_S):
            while True:
                if await self.hv_pool.run(self.hv.refresh_pool, pool):
                    return
                await trio.sleep(1)  # (libvirt sends no event when the build ends)
        raise errors.Conflict(
            f"libvirt has been building a volume in storage pool {pool!r} for "
            f"{POOL_BUSY_S:g} s (a clone's copy?) and will not look at the pool's files "
            "meanwhile; try again when it is done",
            {"pool": pool},
        )

    async def delete(self, name: str, force: bool, keep_disks: bool) -> dict[str, Any]:
        async with self.changing(name):
            rec = await self.record(name)
            current = await self.hv_pool.run(self.hv.state_or_none, name)
            if current and current.state not in ("stopped", "crashed") and not force:
                raise errors.Conflict(
                    f"vm {name!r} is {current.state}; stop it first or pass force",
                    {"vm": name, "state": current.state},
                )
            with trio.CancelScope(shield=True):
                # mark first: a crash mid-way is finished by reconcile, never resurrected
                await self.records.set_desired_state(name, "deleting")
                removed = await self.finish_delete(rec, keep_disks)
        return {"name": name, "deleted": True, "volumes_deleted": removed}

    async def finish_delete(self, rec: VmRecord, keep_disks: bool = False) -> list[str]:
        await self.hv_pool.run(self.hv.undefine, rec.name)
        removed = []
        if not keep_disks:
            for path in self.managed_volume_paths(rec):
                if await self.hv_pool.run(self.hv.delete_volume, str(path)):
                    removed.append(str(path))
        await self.forget(rec.name)
        if self.ownership is not None:
            await self.ownership.release(rec.tenant, rec.name)
        log.info("vm.deleted", extra=kv(vm=rec.name, volumes=len(removed)))
        return removed

    async def forget(self, name: str) -> None:
        """Drops a VM's record, placement and event forwarding (its domain is gone)."""
        await self.records.delete(name)
        self.placement.release(name)
        self.managed.discard(name)
        if self.restarts.reset(name):
            await self.save_restarts()

    async def load_restarts(self) -> None:
        """The restart history as the daemon left it (of the VMs still recorded)."""
        doc = await self.db_pool.run(self.store.get_setting, RESTARTS_KEY)
        self.restarts.load(doc, {r.name for r in await self.records.all()})

    async def save_restarts(self) -> None:
        """The restart history into the state store (after each change of it)."""
        await self.db_pool.run(self.store.set_setting, RESTARTS_KEY, self.restarts.to_doc())

    async def arrived(self, name: str, tenant: str, source: str) -> None:
        """A VM that migrated here from ``source`` and is recorded (with the state it
        arrived in as its desired state): its events are forwarded, and (in a cluster)
        its name moves to this node."""
        self.managed.add(name, tenant)
        if self.ownership is not None:
            await self.ownership.arrived(tenant, name, source)

    async def adopt(self, managed: ManagedDomain, desired: str = "stopped") -> VmRecord:
        """Records a domain that carries NovaCron's metadata but has no record, meant to
        be in state ``desired``. Its spec is checked as a request is (it may have been
        edited by hand)."""
        spec = stored_spec(managed.spec)
        return await self.records.insert(
            managed.name,
            managed.uuid,
            managed.tenant,
            spec.to_dict(),
            managed.placement,
            desired,
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def _transition(
        self, name: str, allowed: tuple[str, ...], action: str, call: Any, desired: str
    ) -> dict[str, Any]:
        async with self.changing(name):
            await self.record(name)
            await self._expect(name, allowed, action)
            await self.hv_pool.run(call, name)
            await self.records.set_desired_state(name, desired)
            log.info(f"vm.{action}", extra=kv(vm=name))
        return await self.get(name)

    async def start(self, name: str) -> dict[str, Any]:
        if self.restarts.reset(name):  # an operator's start: the crash-loop guard anew
            await self.save_restarts()
        return await self._transition(
            name, ("stopped", "crashed"), "start", self.hv.start, "running"
        )

    async def stop(self, name: str) -> dict[str, Any]:
        allowed = ("running", "paused", "shutting_down", "crashed", "suspended")
        return await self._transition(name, allowed, "stop", self.hv.destroy, "stopped")

    async def pause(self, name: str) -> dict[str, Any]:
        return await self._transition(name, ("running",), "pause", self.hv.suspend, "paused")

    async def resume(self, name: str) -> dict[str, Any]:
        return await self._transition(name, ("paused",), "resume", self.hv.resume, "running")

    async def reboot(self, name: str) -> dict[str, Any]:
        return await self._transition(name, ("running",), "reboot", self.hv.reboot, "running")

    async def shutdown(self, name: str, timeout_s: float, force: bool) -> dict[str, Any]:
        """Asks the guest to power off and waits up to ``timeout_s`` for it. The wait
        holds no lock on the VM (it held it once, so that a ``vm.stop`` or ``vm.delete``
        of a guest that ignores the request waited out the whole timeout, up to an
        hour); only powering it off at the end (``force``) takes the lock again, and
        only when the VM is still meant to be stopped."""
        async with self.changing(name):
            await self.record(name)
            await self._expect(name, ("running", "shutting_down"), "shut down")
            await self.hv_pool.run(self.hv.shutdown, name)
            await self.records.set_desired_state(name, "stopped")
        forced = False
        with trio.move_on_after(timeout_s) as waited:
            # libvirt has no "wait for shutoff" call: poll its state (a domain gone
            # meanwhile, deleted by another call, is down too)
            while not await self._down_or_gone(name):  # noqa: ASYNC110
                await trio.sleep(POLL_INTERVAL)
        if waited.cancelled_caught:
            async with self.changing(name):
                rec = await self.record(name)
                if not await self._down_or_gone(name):
                    if rec.desired_state != "stopped":
                        raise errors.Conflict(
                            f"vm {name!r} was started again while it was shutting down",
                            {"vm": name, "desired_state": rec.desired_state},
                        )
                    if not force:
                        raise errors.Timeout(
                            f"vm {name!r} did not shut down within {timeout_s:g} s",
                            {"vm": name, "timeout_s": timeout_s},
                        )
                    await self.hv_pool.run(self.hv.destroy, name)
                    forced = True
        log.info("vm.shutdown", extra=kv(vm=name, forced=forced))
        doc = await self.get(name)
        doc["forced"] = forced
        return doc

    async def _down_or_gone(self, name: str) -> bool:
        runtime = await self.hv_pool.run(self.hv.state_or_none, name)
        return runtime is None or runtime.state in ("stopped", "crashed")

    # -- settings ----------------------------------------------------------------------

    async def save_spec(self, name: str, spec: VmSpec, placement: dict[str, Any] | None) -> None:
        """A changed spec into the record and the domain's NovaCron metadata (so a
        restarted daemon, or one that adopts the domain, sees the same)."""
        await self.records.set_spec(name, spec.to_dict(), placement)
        await self.hv_pool.run(
            self.hv.set_metadata,
            name,
            domain_xml.metadata_xml(spec, placement),
            domain_xml.METADATA_NS,
            domain_xml.METADATA_PREFIX,
        )

    async def update(self, name: str, restart: str) -> dict[str, Any]:
        """Settings that take effect without a restart of the VM: its restart policy."""
        async with self.changing(name):
            rec = await self.record(name)
            spec = VmSpec.from_dict(rec.spec)
            if spec.restart != restart:
                with trio.CancelScope(shield=True):
                    await self.save_spec(name, replace(spec, restart=restart), rec.placement)
                log.info("vm.updated", extra=kv(vm=name, restart=restart))
        return await self.get(name)

    # -- snapshots ---------------------------------------------------------------------

    async def snapshot_create(self, name: str, snapshot: str, description: str) -> dict[str, Any]:
        async with self.changing(name):
            await self.record(name)
            existing = await self.hv_pool.run(self.hv.snapshot_list, name)
            if any(s["name"] == snapshot for s in existing):
                raise errors.AlreadyExists(f"snapshot {snapshot!r} of vm {name!r} already exists")
            blockers = domain_xml.snapshot_blockers(await self.hv_pool.run(self.hv.xml, name))
            if blockers:
                said = ", ".join(f"{d.target} ({d.format or 'unknown'} {d.kind})" for d in blockers)
                raise errors.Conflict(
                    f"vm {name!r} cannot have a snapshot: it is kept inside each writable"
                    f" disk's qcow2 image, and {said} is not one",
                    {"vm": name, "disks": [d.target for d in blockers]},
                )
            await self.hv_pool.run(self.hv.snapshot_create, name, snapshot, description)
            log.info("vm.snapshot_created", extra=kv(vm=name, snapshot=snapshot))
            found = await self.hv_pool.run(self.hv.snapshot_list, name)
        return next(s for s in found if s["name"] == snapshot)

    async def snapshot_list(self, name: str) -> list[dict[str, Any]]:
        await self.record(name)
        return await self.hv_pool.run(self.hv.snapshot_list, name)

    async def snapshot_delete(self, name: str, snapshot: str) -> dict[str, Any]:
        async with self.changing(name):
            await self.record(name)
            await self.hv_pool.run(self.hv.snapshot_delete, name, snapshot)
            log.info("vm.snapshot_deleted", extra=kv(vm=name, snapshot=snapshot))
        return {"vm": name, "snapshot": snapshot, "deleted": True}
