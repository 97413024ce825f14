"""Per-tenant quotas: vCPUs, memory and VM count, checked on ``vm.create``.

Limits live in the state store (NULL = no limit) with a copy in memory. Usage is what
the tenant's VM records ask for (stopped VMs count: their resources can start at any
time). :class:`~novacron.vm.service.VmService` checks and creates under a per-tenant
lock, so two concurrent creates cannot both slip under the same limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from novacron import errors
from novacron.blocking import Pool
from novacron.state.db import StateStore, VmRecord
from novacron.vm.spec import VmSpec

LIMITS = ("max_vcpus", "max_memory_mib", "max_vms")


@dataclass(frozen=True)
class Quota:
    max_vcpus: int | None = None
    max_memory_mib: int | None = None
    max_vms: int | None = None


def usage(records: list[VmRecord], tenant: str) -> dict[str, int]:
    mine = [r for r in records if r.tenant == tenant and r.desired_state != "deleting"]
    return {
        "vcpus": sum(int(r.spec["vcpus"]) for r in mine),
        "memory_mib": sum(int(r.spec["memory_mib"]) for r in mine),
        "vms": len(mine),
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
                r["tenant"]: Quota(r["max_vcpus"], r["max_memory_mib"], r["max_vms"]) for r in rows
            }
        return self._by_tenant

    async def get(self, tenant: str) -> Quota:
        return (await self._all()).get(tenant, Quota())

    async def set(self, tenant: str, quota: Quota) -> None:
        by_tenant = await self._all()
        await self._pool.run(
            self._store.set_quota, tenant, quota.max_vcpus, quota.max_memory_mib, quota.max_vms
        )
        by_tenant[tenant] = quota

    async def check(self, spec: VmSpec, records: list[VmRecord]) -> None:
        quota = await self.get(spec.tenant)
        used = usage(records, spec.tenant)
        wanted = {"vcpus": spec.vcpus, "memory_mib": spec.memory_mib, "vms": 1}
        for key, limit in (
            ("vcpus", quota.max_vcpus),
            ("memory_mib", quota.max_memory_mib),
            ("vms", quota.max_vms),
        ):
            if limit is not None and used[key] + wanted[key] > limit:
                raise errors.QuotaExceeded(
                    f"tenant {spec.tenant!r} would use {used[key] + wanted[key]} {key}"
                    f" (quota {limit}, in use {used[key]})",
                    {"tenant": spec.tenant, "resource": key, "limit": limit, "used": used[key]},
                )

    async def report(self, tenant: str, records: list[VmRecord]) -> dict[str, Any]:
        quota = await self.get(tenant)
        return {
            "tenant": tenant,
            "max_vcpus": quota.max_vcpus,
            "max_memory_mib": quota.max_memory_mib,
            "max_vms": quota.max_vms,
            "used": usage(records, tenant),
        }
