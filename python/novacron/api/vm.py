"""``vm.*`` methods: argument checking and tenant scoping over :class:`VmService`.

A VM of a tenant the caller does not see answers ``not_found``, exactly as a VM that
does not exist (its existence is not revealed); ``vm.list`` shows only visible VMs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import trio

from novacron import errors
from novacron.api.services import Services
from novacron.auth.policy import check_tenant
from novacron.errors import PermissionDenied
from novacron.net.nic import NicLimits, parse_nic_limits
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params
from novacron.state.db import VmRecord
from novacron.vm import (
    base_images,
    cloud_init,
    disk_files,
    disk_limits,
    disks,
    guest_agent,
    host_files,
    image_catalog,
    unplug,
)
from novacron.vm import stats as vm_stats
from novacron.vm.base_images import ImageSource
from novacron.vm.clone import clone
from novacron.vm.quotas import LIMITS, Quota
from novacron.vm.resize import resize
from novacron.vm.revert import revert
from novacron.vm.service import VmService
from novacron.vm.spec import (
    DISK_LIMIT_KEYS,
    MAX_DISK_GIB,
    MAX_DISKS,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    RESTART_POLICIES,
    DiskLimits,
    DiskSpec,
    VmSpec,
    parse_create,
    parse_disk,
    parse_disk_limits,
)

MAX_SHUTDOWN_TIMEOUT_S = 3600.0


async def visible_record(vms: VmService, ctx: CallContext, name: str) -> VmRecord:
    """The VM's record if it exists in a tenant the caller sees, else ``not_found``."""
    rec = await vms.record(name)
    check_tenant(ctx.identity, rec.tenant, "vm", name)
    ctx.tenant = rec.tenant
    return rec


async def visible_vm(vms: VmService, ctx: CallContext, name: str) -> str:
    """``name`` if the VM exists in a tenant the caller sees, else ``not_found``."""
    return (await visible_record(vms, ctx, name)).name


def default_tenant(ctx: CallContext, given: bool, tenant: str) -> str:
    """A create without ``tenant`` lands in the caller's tenant when it has exactly one."""
    tenants = ctx.identity.tenants
    if not given and tenants is not None and len(tenants) == 1:
        return next(iter(tenants))
    return tenant


def check_limits_allowed(
    ctx: CallContext, limits: object | None, param: str, kind: str = "disk"
) -> None:
    """Disk and NIC limits (``kind``) are the node's administrators' to set (they keep one
    tenant's VMs from taking the host's storage or network from the others):
    ``permission_denied`` for others."""
    if limits is not None and "admin" not in ctx.identity.roles:
        method = f"vm.{kind.lower()}.limit"
        raise PermissionDenied(
            f"{param}: {kind} limits are set by the admin role ({method})", {"param": param}
        )


def register(registry: Registry, services: Services) -> None:
    vms = services.vms

    async def visible(ctx: CallContext, name: str) -> str:
        return await visible_vm(vms, ctx, name)

    @registry.method("vm.create")
    async def create(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Define a VM (and its new disks); start it when ``start`` is true."""
        tenant_given = p.given("tenant")
        node = p.opt_name("node")  # "auto", a node's name, or this node (absent)
        seed_given = p.mapping("cloud_init", len(cloud_init.MOST))
        spec, start = parse_create(p)
        seed_files = cloud_init.parse("cloud_init", seed_given, spec.name)
        if seed_files and len(spec.disks) >= MAX_DISKS:
            raise errors.InvalidParams(
                f"a VM has at most {MAX_DISKS} disks, the cloud-init seed's among them",
                {"param": "cloud_init"},
            )
        spec = replace(spec, tenant=default_tenant(ctx, tenant_given, spec.tenant))
        ctx.tenant = spec.tenant
        if not ctx.identity.sees(spec.tenant):
            raise PermissionDenied(
                f"{ctx.identity.user} may not create VMs in tenant {spec.tenant!r}",
                {"tenant": spec.tenant},
            )
        if node is not None and node != services.config.node_name:
            cluster = services.cluster
            if cluster is None:
                raise errors.Unavailable(
                    f"this node is not in a cluster: cannot create on {node!r}", {"node": node}
                )
            target = await cluster.choose_node(spec, node)
            if target != services.config.node_name:
                params = {k: v for k, v in p.raw().items() if k != "node"}
                params["tenant"] = spec.tenant
                result: dict[str, Any] = await cluster.call_on(target, ctx, "vm.create", params)
                return result
        for i, disk in enumerate(spec.disks):
            check_limits_allowed(ctx, disk.limits, f"disks[{i}].limits")
        for i, nic in enumerate(spec.nics):
            check_limits_allowed(ctx, nic.limits, f"nics[{i}].limits", "NIC")
        await trio.to_thread.run_sync(host_files.check, ctx.identity, spec, offered())
        named = [
            disk_files.Named(f"disks[{i}].path", d.path, d.format)
            for i, d in enumerate(spec.disks)
            if d.path is not None
        ]
        await check_disk_files(ctx, spec.tenant, named, None)
        opened, images = await open_images(ctx, spec.tenant, spec.disks, "disks[{}].image")
        try:
            if seed_files:  # its last disk, copied from the seed as from an image
                images[cloud_init.SEED_IMAGE] = await trio.to_thread.run_sync(
                    cloud_init.seed, seed_files, services.config.state_dir
                )
                opened = (*opened, cloud_init.seed_disk())
            spec = replace(
                spec,
                disks=tuple(await vms.quotas.with_defaults(spec.tenant, opened)),
                nics=await vms.quotas.with_nic_defaults(spec.tenant, spec.nics),
            )
            return await vms.create(spec, start, images)
        finally:
            base_images.close_all(images)

    def offered() -> host_files.Offered:
        return host_files.offered_by(services.config)

    async def check_disk_files(
        ctx: CallContext, tenant: str, named: list[disk_files.Named], vm: str | None
    ) -> None:
        """:func:`disk_files.check` of the images ``named`` for VM ``vm`` (None: a new
        one) of ``tenant``, against the disks of the node's VMs."""
        if not named:
            return
        own: list[disk_files.InUse] = []
        others: list[disk_files.InUse] = []
        for rec in await vms.records.all():
            spec = VmSpec.from_dict(rec.spec)
            used = (own if rec.name == vm else others).append
            for disk, path in zip(spec.disks, vms.disk_paths(spec), strict=True):
                used(disk_files.InUse(rec.name, rec.tenant, path, disk.format))
        await trio.to_thread.run_sync(
            disk_files.check, ctx.identity, tenant, named, offered(), own, others
        )

    async def open_images(
        ctx: CallContext, tenant: str, given: tuple[DiskSpec, ...], param: str
    ) -> tuple[tuple[DiskSpec, ...], dict[str, ImageSource]]:
        """The disks ``given``, those copied from a base image sized as the image, and the
        images open (``param``: the image's name in the call, ``{}`` for the disk's
        position); the directory check made again on each file opened."""
        offer = offered()

        def check(name: str, real: str) -> None:
            host_files.check_file(ctx.identity, name, real, "image", tenant, offer)

        return await trio.to_thread.run_sync(base_images.open_images, given, param.format, check)

    @registry.method("vm.clone")
    async def vm_clone(ctx: CallContext, p: Params) -> dict[str, Any]:
        """A new VM copied from a stopped one (settings and the daemon's volumes)."""
        source = p.name("name")
        name = p.name("new_name")
        start = p.flag("start")
        partial = p.flag("partial")
        p.done()
        return await clone(vms, await visible(ctx, source), name, start, partial)

    @registry.method("vm.disk.attach")
    async def disk_attach(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Give a VM a new volume (``size_gib``; a copy of a base ``image``) or an existing
        image (``path``)."""
        name = p.name("vm")
        # the rest is one disk, as in vm.create's disks (parse_disk refuses unknown keys)
        disk = parse_disk("disk", {k: v for k, v in p.raw().items() if k != "vm" and v is not None})
        rec = await visible_record(vms, ctx, name)
        check_limits_allowed(ctx, disk.limits, "limits")
        for param, path, kind in (("path", disk.path, "disk"), ("image", disk.image, "image")):
            if path is not None:
                await trio.to_thread.run_sync(
                    host_files.check_file, ctx.identity, param, path, kind, rec.tenant, offered()
                )
        if disk.path is not None:
            named = [disk_files.Named("path", disk.path, disk.format)]
            await check_disk_files(ctx, rec.tenant, named, rec.name)
        (disk,), images = await open_images(ctx, rec.tenant, (disk,), "image")
        try:
            [disk] = await vms.quotas.with_defaults(rec.tenant, [disk])
            return await disks.attach(vms, name, disk, images.get(disk.image or ""))
        finally:
            base_images.close_all(images)

    @registry.method("vm.disk.detach")
    async def disk_detach(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Take a disk (by its device name) from a stopped VM, or unplug it from a running
        one (waiting up to ``timeout_s`` for the guest); its new volume is deleted unless
        ``keep_volume``."""
        name = p.name("vm")
        target = p.text("target", max_len=16)
        keep = p.flag("keep_volume")
        timeout_s = p.number("timeout_s", 1.0, unplug.MAX_TIMEOUT_S, unplug.TIMEOUT_S)
        p.done()
        return await disks.detach(vms, await visible(ctx, name), target, keep, timeout_s)

    @registry.method("vm.disk.limit")
    async def disk_limit(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Set how fast the guest may read and write a disk (by its device name); limits
        not named stay as they are, 0 lifts one."""
        name = p.name("vm")
        target = p.text("target", max_len=16)
        raw = {k: v for k, v in p.raw().items() if k not in ("vm", "target") and v is not None}
        changes = parse_disk_limits("limits", raw)
        if not changes:
            raise errors.InvalidParams(
                f"name at least one limit: {', '.join(DISK_LIMIT_KEYS)}", {"param": "limits"}
            )
        return await disk_limits.limit(vms, await visible(ctx, name), target, changes)

    @registry.method("vm.disk.resize")
    async def disk_resize(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Grow a volume the daemon made (by its device name) to ``size_gib``."""
        name = p.name("vm")
        target = p.text("target", max_len=16)
        size_gib = p.integer("size_gib", 1, MAX_DISK_GIB)
        p.done()
        return await disks.resize(vms, await visible(ctx, name), target, size_gib)

    @registry.method("quota.get")
    async def quota_get(ctx: CallContext, p: Params) -> dict[str, Any]:
        """A tenant's quota and what its VMs use."""
        tenant = p.name("tenant")
        p.done()
        check_tenant(ctx.identity, tenant, "tenant", tenant)
        ctx.tenant = tenant
        return await vms.quotas.report(tenant, await vms.records.all())

    @registry.method("quota.set")
    async def quota_set(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Set a tenant's limits (omit or nil = no limit), the throttle its new disks get
        (``disk_limits``) and the bandwidth limits of its new NICs (``nic_limits``; omit =
        none)."""
        tenant = p.name("tenant")
        limits = {key: p.integer(key, 0, 1 << 40, default=-1) for key in LIMITS}
        throttle = DiskLimits.of(parse_disk_limits("disk_limits", p.mapping("disk_limits")))
        shaping = NicLimits.of(parse_nic_limits("nic_limits", p.mapping("nic_limits")))
        p.done()
        ctx.tenant = tenant
        caps = {k: (None if v < 0 else v) for k, v in limits.items()}
        await vms.quotas.set(tenant, Quota(**caps, disk_limits=throttle, nic_limits=shaping))
        return await vms.quotas.report(tenant, await vms.records.all())

    @registry.method("vm.list")
    async def list_(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """Every managed VM the caller may see, optionally of one tenant."""
        tenant = p.opt_name("tenant")
        p.done()
        return [vm for vm in await vms.list_vms(tenant) if ctx.identity.sees(str(vm["tenant"]))]

    @registry.method("vm.get")
    async def get(ctx: CallContext, p: Params) -> dict[str, Any]:
        """One VM with its disks and console log."""
        name = p.name()
        p.done()
        return await vms.get(await visible(ctx, name))

    @registry.method("vm.stats")
    async def stats(ctx: CallContext, p: Params) -> dict[str, Any]:
        """One VM's resource use: CPU time, memory, disk and NIC counters."""
        name = p.name()
        p.done()
        rec = await visible_record(vms, ctx, name)
        doc = await vms.hv_pool.run(vm_stats.read, vms.hv, name)
        return {**doc, "tenant": rec.tenant}

    @registry.method("image.list")
    async def image_list(ctx: CallContext, p: Params) -> dict[str, Any]:
        """The base images this node offers a tenant's VMs copies of (the caller's one
        tenant when it has one and names none, else ``default``)."""
        tenant_given = p.given("tenant")
        tenant = default_tenant(ctx, tenant_given, p.opt_name("tenant") or "default")
        p.done()
        if not ctx.identity.sees(tenant):
            raise PermissionDenied(
                f"{ctx.identity.user} may not see tenant {tenant!r}", {"tenant": tenant}
            )
        ctx.tenant = tenant
        return await trio.to_thread.run_sync(image_catalog.listing, offered(), tenant)

    @registry.method("vm.guest")
    async def guest(ctx: CallContext, p: Params) -> dict[str, Any]:
        """What a running VM's guest agent reports: interfaces and addresses, host name,
        operating system."""
        name = p.name()
        p.done()
        rec = await visible_record(vms, ctx, name)
        doc = await vms.hv_pool.run(guest_agent.read, vms.hv, name)
        return {**doc, "tenant": rec.tenant}

    @registry.method("vm.stats.list")
    async def stats_list(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """``vm.stats`` of every VM the caller sees on this node, optionally of one tenant."""
        tenant = p.opt_name("tenant")
        p.done()
        tenants = {
            rec.name: rec.tenant
            for rec in await vms.records.all()
            if rec.desired_state != "deleting"
            and (tenant is None or rec.tenant == tenant)
            and ctx.identity.sees(rec.tenant)
        }
        docs = await vms.hv_pool.run(vm_stats.read_many, vms.hv, sorted(tenants))
        return [{**doc, "tenant": tenants[doc["name"]]} for doc in docs]

    def simple(method: str, action: Any, summary: str) -> None:
        async def handler(ctx: CallContext, p: Params) -> dict[str, Any]:
            name = p.name()
            p.done()
            result: dict[str, Any] = await action(await visible(ctx, name))
            return result

        handler.__doc__ = summary
        registry.method(method)(handler)

    simple("vm.start", vms.start, "Boot a stopped VM.")
    simple("vm.stop", vms.stop, "Power a VM off at once (forced).")
    simple("vm.pause", vms.pause, "Pause a running VM's vCPUs.")
    simple("vm.resume", vms.resume, "Resume a paused VM.")
    simple("vm.reboot", vms.reboot, "Ask the guest to reboot.")

    @registry.method("vm.update")
    async def update(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Change a VM's settings: ``restart`` (its policy, any time), ``vcpus`` and
        ``memory_mib`` (while it runs, up to its ``max_vcpus`` and ``max_memory_mib``; any
        while it is stopped), ``max_vcpus`` and ``max_memory_mib`` (while it is stopped)."""
        name = p.name()
        sizes = ("vcpus", "max_vcpus", "memory_mib", "max_memory_mib")
        if not any(p.given(k) for k in ("restart", *sizes)):
            raise errors.InvalidParams(
                f"vm.update needs a setting to change: restart, {', '.join(sizes)}",
                {"param": "restart"},
            )
        restart = p.choice("restart", RESTART_POLICIES, "") or None
        vcpus = p.integer("vcpus", 1, MAX_VCPUS, default=0) or None
        max_vcpus = p.integer("max_vcpus", 1, MAX_VCPUS, default=0) or None
        memory_mib = p.integer("memory_mib", 16, MAX_MEMORY_MIB, default=0) or None
        max_memory_mib = p.integer("max_memory_mib", 16, MAX_MEMORY_MIB, default=0) or None
        p.done()
        name = await visible(ctx, name)
        if any(v is not None for v in (vcpus, memory_mib, max_vcpus, max_memory_mib)):
            await resize(vms, name, vcpus, memory_mib, max_vcpus, max_memory_mib)
        if restart is not None:
            return await vms.update(name, restart)
        return await vms.get(name)

    @registry.method("vm.shutdown")
    async def shutdown(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Graceful shutdown (ACPI); waits up to ``timeout_s``, then fails or forces."""
        name = p.name()
        timeout_s = p.number("timeout_s", 0, MAX_SHUTDOWN_TIMEOUT_S, default=60.0)
        force = p.flag("force")
        p.done()
        return await vms.shutdown(await visible(ctx, name), timeout_s, force)

    @registry.method("vm.delete")
    async def delete(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Undefine a stopped VM and delete the disks the daemon created for it."""
        name = p.name()
        force = p.flag("force")
        keep_disks = p.flag("keep_disks")
        p.done()
        return await vms.delete(await visible(ctx, name), force, keep_disks)

    @registry.method("vm.snapshot.create")
    async def snapshot_create(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Snapshot a VM (disks and, when running, memory)."""
        name = p.name("vm")
        snapshot = p.name("name")
        description = p.text("description", default="", max_len=1024)
        p.done()
        return await vms.snapshot_create(await visible(ctx, name), snapshot, description)

    @registry.method("vm.snapshot.list")
    async def snapshot_list(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """A VM's snapshots, oldest first."""
        name = p.name("vm")
        p.done()
        return await vms.snapshot_list(await visible(ctx, name))

    @registry.method("vm.snapshot.revert")
    async def snapshot_revert(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Return a VM to a snapshot."""
        name = p.name("vm")
        snapshot = p.name("name")
        p.done()
        name = await visible(ctx, name)
        await revert(vms, name, snapshot)
        return await vms.get(name)

    @registry.method("vm.snapshot.delete")
    async def snapshot_delete(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Delete a snapshot."""
        name = p.name("vm")
        snapshot = p.name("name")
        p.done()
        return await vms.snapshot_delete(await visible(ctx, name), snapshot)
