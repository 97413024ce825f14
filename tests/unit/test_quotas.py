"""Quota limits on a real store and usage from VM records."""

from __future__ import annotations

from pathlib import Path

import pytest

from novacron import errors
from novacron.blocking import Pool
from novacron.state.db import StateStore, VmRecord
from novacron.vm.quotas import Quota, Quotas, usage
from novacron.vm.spec import VmSpec


def rec(name: str, tenant: str, vcpus: int, memory: int, state: str = "stopped") -> VmRecord:
    spec = {"vcpus": vcpus, "memory_mib": memory}
    return VmRecord(name, f"u-{name}", tenant, spec, state, 0.0, 0.0)


async def test_limits_are_checked_and_persisted(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    quotas = Quotas(store, Pool("sqlite", 1))
    records = [
        rec("a", "acme", 2, 512),
        rec("b", "acme", 1, 256),
        rec("c", "acme", 8, 64, "deleting"),
    ]
    assert usage(records, "acme") == {"vcpus": 3, "memory_mib": 768, "vms": 2}
    await quotas.check(VmSpec(name="x", vcpus=64, memory_mib=1 << 20, tenant="acme"), records)
    await quotas.set("acme", Quota(max_vcpus=4, max_memory_mib=None, max_vms=3))
    await quotas.check(VmSpec(name="x", vcpus=1, memory_mib=1 << 20, tenant="acme"), records)
    with pytest.raises(errors.QuotaExceeded) as err:
        await quotas.check(VmSpec(name="x", vcpus=2, memory_mib=64, tenant="acme"), records)
    assert err.value.details == {"tenant": "acme", "resource": "vcpus", "limit": 4, "used": 3}
    reloaded = Quotas(store, Pool("sqlite", 1))
    assert await reloaded.get("acme") == Quota(4, None, 3)
    assert (await reloaded.report("globex", records))["used"]["vms"] == 0
    store.close()
