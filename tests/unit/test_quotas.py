"""Quota limits on a real store and usage from VM records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from novacron import errors
from novacron.blocking import Pool
from novacron.net.nic import NicLimits, NicSpec
from novacron.state.db import StateStore, VmRecord
from novacron.vm.quotas import (
    Quota,
    Quotas,
    usage,
    with_default_limits,
    with_default_nic_limits,
)
from novacron.vm.spec import DiskLimits, DiskSpec, VmSpec


def rec(
    name: str, tenant: str, vcpus: int, memory: int, state: str = "stopped", disks: Any = ()
) -> VmRecord:
    spec = {"vcpus": vcpus, "memory_mib": memory, "disks": list(disks)}
    return VmRecord(name, f"u-{name}", tenant, spec, state, 0.0, 0.0)


async def test_limits_are_checked_and_persisted(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    quotas = Quotas(store, Pool("sqlite", 1))
    records = [
        rec("a", "acme", 2, 512),
        rec("b", "acme", 1, 256),
        rec("c", "acme", 8, 64, "deleting"),
    ]
    assert usage(records, "acme") == {"vcpus": 3, "memory_mib": 768, "vms": 2, "disk_gib": 0}
    roomy = [*records, rec("d", "acme", 1, 64)]
    roomy[-1].spec["max_vcpus"] = 6  # room for vCPUs plugged in while it runs counts
    roomy[-1].spec["max_memory_mib"] = 1024  # and for memory a balloon gives back
    assert usage(roomy, "acme") == {"vcpus": 9, "memory_mib": 1792, "vms": 3, "disk_gib": 0}
    await quotas.check(VmSpec(name="x", vcpus=64, memory_mib=1 << 20, tenant="acme"), records)
    await quotas.set("acme", Quota(max_vcpus=4, max_memory_mib=None, max_vms=3))
    await quotas.check(VmSpec(name="x", vcpus=1, memory_mib=1 << 20, tenant="acme"), records)
    with pytest.raises(errors.QuotaExceeded) as err:
        await quotas.check(VmSpec(name="x", vcpus=2, memory_mib=64, tenant="acme"), records)
    assert err.value.details == {"tenant": "acme", "resource": "vcpus", "limit": 4, "used": 3}
    reloaded = Quotas(store, Pool("sqlite", 1))
    assert await reloaded.get("acme") == Quota(4, None, 3, None)
    assert (await reloaded.report("globex", records))["used"]["vms"] == 0
    store.close()


async def test_disk_space_counts_new_volumes_not_images_by_path(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    quotas = Quotas(store, Pool("sqlite", 1))
    image = {"size_gib": None, "path": "/srv/images/acme/base.qcow2", "format": "qcow2"}
    records = [
        rec("a", "acme", 1, 64, disks=[{"size_gib": 10, "path": None, "format": "qcow2"}, image]),
        rec("b", "acme", 1, 64, disks=[{"size_gib": 5, "path": None, "format": "raw"}]),
        rec("c", "acme", 1, 64, "deleting", disks=[{"size_gib": 100, "path": None}]),
        rec("d", "globex", 1, 64, disks=[{"size_gib": 100, "path": None}]),
        rec("e", "acme", 1, 64),  # a record from before disks were written: none
    ]
    assert usage(records, "acme")["disk_gib"] == 15
    await quotas.set("acme", Quota(max_disk_gib=20))
    five = (DiskSpec(size_gib=3), DiskSpec(size_gib=2), DiskSpec(path="/srv/x.raw"))
    await quotas.check(VmSpec(name="x", vcpus=1, memory_mib=64, tenant="acme", disks=five), records)
    with pytest.raises(errors.QuotaExceeded) as err:
        six = (DiskSpec(size_gib=6),)
        await quotas.check(
            VmSpec(name="x", vcpus=1, memory_mib=64, tenant="acme", disks=six), records
        )
    assert err.value.details == {"tenant": "acme", "resource": "disk_gib", "limit": 20, "used": 15}
    # over its disk quota (lowered below what it has), a tenant still gets VMs without disks
    await quotas.set("acme", Quota(max_disk_gib=10))
    await quotas.check(VmSpec(name="x", vcpus=1, memory_mib=64, tenant="acme"), records)
    report = await Quotas(store, Pool("sqlite", 1)).report("acme", records)
    assert report["max_disk_gib"] == 10 and report["max_vcpus"] is None
    assert report["used"]["disk_gib"] == 15
    store.close()


async def test_a_tenants_disk_throttle_is_kept_and_given_to_disks_without_their_own(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path / "s.db")
    quotas = Quotas(store, Pool("sqlite", 1))
    assert (await quotas.get("acme")).disk_limits is None
    throttle = DiskLimits(write_iops=200, read_bytes_per_s=50 << 20)
    await quotas.set("acme", Quota(max_vms=3, disk_limits=throttle))
    reloaded = Quotas(store, Pool("sqlite", 1))
    assert await reloaded.get("acme") == Quota(max_vms=3, disk_limits=throttle)
    report = await reloaded.report("acme", [])
    assert report["disk_limits"] == {"write_iops": 200, "read_bytes_per_s": 50 << 20}
    assert report["max_vms"] == 3 and report["max_vcpus"] is None
    own = DiskLimits(read_iops=10)
    disks = [DiskSpec(size_gib=1), DiskSpec(path="/srv/a.raw", limits=own)]
    assert with_default_limits(disks, throttle) == [
        DiskSpec(size_gib=1, limits=throttle),  # (images by path too: any disk is throttled)
        DiskSpec(path="/srv/a.raw", limits=own),  # its own limits win
    ]
    assert with_default_limits(disks, None) == disks
    await reloaded.set("acme", Quota(max_vms=3))  # a set without it lifts it
    assert (await Quotas(store, Pool("sqlite", 1)).get("acme")).disk_limits is None
    store.close()


async def test_a_tenants_nic_limits_are_kept_and_given_to_nics_without_their_own(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path / "s.db")
    quotas = Quotas(store, Pool("sqlite", 1))
    assert (await quotas.get("acme")).nic_limits is None
    shaping = NicLimits(inbound_bytes_per_s=12_500_000)
    throttle = DiskLimits(write_iops=200)
    await quotas.set("acme", Quota(max_vms=3, disk_limits=throttle, nic_limits=shaping))
    reloaded = Quotas(store, Pool("sqlite", 1))
    assert await reloaded.get("acme") == Quota(max_vms=3, disk_limits=throttle, nic_limits=shaping)
    report = await reloaded.report("acme", [])
    assert report["nic_limits"] == {"inbound_bytes_per_s": 12_500_000}
    own = NicLimits(outbound_bytes_per_s=5000)
    nics = [NicSpec("lan", "52:54:00:00:00:01"), NicSpec("lan", "52:54:00:00:00:02", limits=own)]
    assert await reloaded.with_nic_defaults("acme", nics) == (
        NicSpec("lan", "52:54:00:00:00:01", limits=shaping),
        NicSpec("lan", "52:54:00:00:00:02", limits=own),  # its own limits win
    )
    assert await reloaded.with_nic_defaults("globex", nics) == tuple(nics)
    assert with_default_nic_limits(nics, None) == tuple(nics)
    await reloaded.set("acme", Quota(max_vms=3))  # a set without them lifts both defaults
    again = await Quotas(store, Pool("sqlite", 1)).get("acme")
    assert (again.nic_limits, again.disk_limits) == (None, None)
    store.close()
