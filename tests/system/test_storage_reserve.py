"""``[hypervisor] storage_reserve_mib`` on a real libvirtd's pool: a pool whose file
system has less free than the reserve takes no new volume, and says so; nothing is made.
Free is what QEMU's user may write there, which is less than libvirt's figure where the
file system keeps blocks for root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from novacron import errors
from tests.system import guest
from tests.system.conftest import daemon_on_system
from tests.system.libvirt_host import LibvirtHost

MIB = 1 << 20


def test_a_pool_short_of_its_reserve_takes_no_new_volume(
    libvirt_host: LibvirtHost, guest_images: guest.GuestImages, tmp_path: Path
) -> None:
    free = shutil.disk_usage("/var/tmp").free  # where the daemon's pool is
    reserve_mib = free // MIB + 4096  # (more than the file system will have free)
    with (
        daemon_on_system(tmp_path, "--storage-reserve-mib", str(reserve_mib)) as d,
        d.client() as c,
    ):
        with pytest.raises(errors.NovaCronError, match="storage_reserve_mib") as refused:
            c.call("vm.create", **guest_images.vm("sr1", disks=[{"size_gib": 1}]))
        assert refused.value.code == "insufficient_resources"
        details = refused.value.details
        assert details["reserve_bytes"] == reserve_mib * MIB
        assert details["needed_bytes"] == 0
        # libvirt's figure for the pool's file system (others write there meanwhile)
        assert abs(details["free_bytes"] - free) < 2048 * MIB
        assert c.call("vm.list") == []
        storage = c.call("node.info")["storage"]
        assert storage["volumes"] == 0
        assert storage["reserve_bytes"] == reserve_mib * MIB
        # what QEMU (its own user) can write: not the blocks only root may (ext4's
        # reserve), which libvirt counts as free
        assert abs(storage["available_bytes"] - shutil.disk_usage("/var/tmp").free) < 2048 * MIB
        # a VM that needs no new volume still goes
        c.call("vm.create", **guest_images.vm("sr2", start=False))
        assert [v["name"] for v in c.call("vm.list")] == ["sr2"]
        c.call("vm.delete", name="sr2")
