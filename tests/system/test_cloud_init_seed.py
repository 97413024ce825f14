"""``vm.create``'s ``cloud_init`` on a real TCG guest: the seed disk is found the way
cloud-init's NoCloud finds it (a disk labelled ``cidata``), the guest's kernel mounts it
and reads ``user-data``, ``meta-data`` (the daemon's default: the VM's name and an
instance id of its own) and ``network-config`` as given; the seed is the VM's last disk,
a volume of its own, detached and deleted like any other."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.nodes import wait_until


def seed_seen(log: Path) -> tuple[str, list[str], str, list[str]] | None:
    """(disk, files, user-data md5, meta-data lines) as the guest reported them."""
    text = guest.console_text(log)
    found = re.search(guest.SEED_MARKER + r" (vd[a-z]+) ([a-z -]+?) user-data=([0-9a-f]{32})", text)
    if found is None:
        return None
    meta = re.findall(guest.SEED_META + r" (.*)", text)
    return found[1], found[2].split(), found[3], [line.strip() for line in meta]


def wait_seed(log: Path) -> tuple[str, list[str], str, list[str]]:
    try:
        wait_until(lambda: seed_seen(log) is not None, 120, "the guest to read its seed")
    except AssertionError:
        lines = [x for x in guest.console_text(log).splitlines() if "TICK" not in x]
        raise AssertionError("no seed read; the console:\n" + "\n".join(lines[-60:])) from None
    found = seed_seen(log)
    assert found is not None
    return found


def test_the_guest_finds_and_reads_its_cloud_init_seed(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    user_data = f"#cloud-config\nhostname: web1\nfinal_message: {os.urandom(8).hex()}\n"
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "ci1", memory_mib=128, options="novacron.seed", disks=[{"size_gib": 1}]
            ),
            cloud_init={"user_data": user_data},
        )
        disks = [(d["target"], d["format"], d["size_gib"], d["managed"]) for d in vm["disks"]]
        assert disks == [("vda", "qcow2", 1, True), ("vdb", "raw", 1, True)]
        log = Path(vm["console_log"])
        disk, files, md5, meta = wait_seed(log)
        assert (disk, files) == ("vdb", ["meta-data", "user-data"])
        assert md5 == hashlib.md5(user_data.encode()).hexdigest()
        assert "local-hostname: ci1" in meta
        assert any(re.fullmatch(r"instance-id: [0-9a-f-]{36}", line) for line in meta), meta
        seed = Path(vm["disks"][1]["path"])
        assert seed.stat().st_blocks * 512 < 1 << 20  # a 1 GiB volume of a few sectors

        # meta data and network configuration as given
        other = c.call(
            "vm.create",
            **guest_images.vm("ci2", memory_mib=128, options="novacron.seed"),
            cloud_init={
                "user_data": user_data,
                "meta_data": "instance-id: fixed-1\nlocal-hostname: db1\n",
                "network_config": "version: 2\nethernets: {}\n",
            },
        )
        log2 = Path(other["console_log"])
        found2 = wait_seed(log2)
        assert found2[:2] == ("vda", ["meta-data", "network-config", "user-data"])
        assert found2[3] == ["instance-id: fixed-1", "local-hostname: db1"]

        # read once, the seed can go: detached, its volume deleted
        c.call("vm.stop", name="ci1")
        gone = c.call("vm.disk.detach", vm="ci1", target="vdb")
        assert gone["volumes_deleted"] == [str(seed)] and not seed.exists()
        for name in ("ci1", "ci2"):
            c.call("vm.delete", name=name, force=True)
