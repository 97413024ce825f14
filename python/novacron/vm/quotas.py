"""Per-tenant quotas: vCPUs, memory, VM count and disk space, checked on ``vm.create``;
and the throttle a tenant's new disks get when none is given (``disk_limits``), and the
bandwidth limits of its new NICs (``nic_limits``).

Limits live in the state store (NULL = no limit) with a copy in memory. Usage is what
the tenant's VM records ask for (stopped VMs count: their resources can start at any
time). Disk space is the size of the volumes the daemon creates for the tenant's VMs
(``size_gib``; existing images named by path are the host administrator's, not counted).
:class:`~novacron.vm.service.VmService` checks and creates under a per-tenant
lock, so two concurrent creates cannot both slip under the same limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from novacron import errors
from novacron.blocking import Pool
from novacron.net.nic import NicLimits, NicSpec
from novacron.state.db import StateStore, VmRecord
from novacron.vm.spec import DiskLimits, DiskSpec, VmSpec

# each limit and the usage figure it caps
RESOURCES = {
    "max_vcpus": "vcpus",
    "max_memory_mib": "memory_mib",
    "max_vms": "vms",
    "max_disk_gib": "disk_gib",
}
LIMITS = tuple(RESOURCES)


@dataclass(frozen=True)
class Quota:
    max_vcpus: int | None = None
    max_memory_mib: int | None = None
    max_vms: int | None = None
    max_disk_gib: int | None = None
    # what a disk of the tenant's VMs is throttled to when it is made or attached
    # without limits of its own (None: unthrottled)
    disk_limits: DiskLimits | None = None
    # likewise, the bandwidth limits of a NIC of the tenant's VMs (None: unshaped)
    nic_limits: NicLimits | None = None

    def to_wire(self) -> dict[str, Any]:
        doc: dict[str, Any] = {k: getattr(self, k) for k in LIMITS}
        doc["disk_limits"] = self.disk_limits.to_dict() if self.disk_limits else None
        doc["nic_limits"] = self.nic_limits.to_dict() if self.nic_limits else None
        return doc


def with_default_limits(disks: Sequence[DiskSpec], default: DiskLimits | None) -> list[DiskSpec]:
    """``disks``, those without limits of their own given ``default``."""
    if default is None:
        return list(disks)
    return [d if d.limits is not None else replace(d, limits=default) for d in disks]


def with_default_nic_limits(
    nics: Sequence[NicSpec], default: NicLimits | None
) -> tuple[NicSpec, ...]:
    """``nics``, those without limits of their own given ``default``."""
    if default is None:
        return tuple(nics)
    return tuple(n if n.limits is not None else replace(n, limits=default) for n in nics)


def disk_gib(spec: dict[str, Any]) -> int:
    """GiB of the volumes the daemon made (or makes) for a VM of this spec."""
    return sum(int(d.get("size_gib") or 0) for d in spec.get("disks", []))


def usage(records: list[VmRecord], tenant: str) -> dict[str, int]:
    mine = [r for r in records if r.tenant == tenant and r.desired_state != "deleting"]
    return {
        "vcpus": sum(int(r.spec.get("max_vcpus") or r.spec["vcpus"]) for r in mine),
        "memory_mib": sum(int(r.spec.get("max_memory_mib") or r.spec["memory_mib"]) for r in mine),
        "vms": len(mine),
        "disk_gib": sum(disk_gib(r.spec) for r in mine),
    }


class Quotas:
    def __init__(self, store: StateStore, pool: Pool) -> None:
        self._store = store
        self._pool = pool
        self._by_tenant: dict[str, Quota] | None = None

    async def _all(self) -> dict[str, Quota]:
        if self._by_tenant is None:
            rows = await self._pool.run(self._store.list_quotas)
            self._by_tenant = {
                r["tenant"]: Quota(
                    **{k: r[k] for k in LIMITS},
                    disk_limits=DiskLimits.of(r["disk_limits"] or {}),
                    nic_limits=NicLimits.of(r["nic_limits"] or {}),
                )
                for r in rows
            }
        return self._by_tenant

    async def get(self, tenant: str) -> Quota:
        return (await self._all()).get(tenant, Quota())

    async def with_defaults(self, tenant: str, disks: Sequence[DiskSpec]) -> list[DiskSpec]:
        """``disks`` of a VM of ``tenant``, those without limits given the tenant's."""
        return with_default_limits(disks, (await self.get(tenant)).disk_limits)

    async def with_nic_defaults(self, tenant: str, nics: Sequence[NicSpec]) -> tuple[NicSpec, ...]:
        """``nics`` of a VM of ``tenant``, those without limits given the tenant's."""
        return with_default_nic_limits(nics, (await self.get(tenant)).nic_limits)

    async def set(self, tenant: str, quota: Quota) -> None:
        by_tenant = await self._all()
        await self._pool.run(self._store.set_quota, tenant, quota.to_wire())
        by_tenant[tenant] = quota

    async def check(self, spec: VmSpec, records: list[VmRecord]) -> None:
        """``quota_exceeded`` unless the tenant's ``records`` and a VM of ``spec`` fit."""
        wanted = {
            "vcpus": spec.vcpu_slots,
            "memory_mib": spec.memory_ceiling_mib,
            "vms": 1,
            "disk_gib": sum(d.size_gib or 0 for d in spec.disks),
        }
        await self.check_more(spec.tenant, records, wanted)

    async def check_more(
        self, tenant: str, records: list[VmRecord], wanted: dict[str, int]
    ) -> None:
        """``quota_exceeded`` unless the tenant's ``records`` and ``wanted`` more of some
        resources fit (a resource not asked for is not refused)."""
        quota = await self.get(tenant)
        used = usage(records, tenant)
        for limit_key, key in RESOURCES.items():
            limit, more = getattr(quota, limit_key), wanted.get(key, 0)
            if limit is not None and more and used[key] + more > limit:
                raise errors.QuotaExceeded(
                    f"tenant {tenant!r} would use {used[key] + more} {key}"
                    f" (quota {limit}, in use {used[key]})",
                    {"tenant": tenant, "resource": key, "limit": limit, "used": used[key]},
                )

    async def report(self, tenant: str, records: list[VmRecord]) -> dict[str, Any]:
        quota = await self.get(tenant)
        return {"tenant": tenant, **quota.to_wire(), "used": usage(records, tenant)}
