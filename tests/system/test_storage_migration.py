"""``vm.migrate`` of a running VM with disks in its node's pool (two namespaced hosts,
real libvirtd, a TCG guest writing its disk all along): QEMU mirrors each volume into
one made on the destination, over NBD connections the daemons relay (packed with lz4
by default, as they are with ``--disk-compression none``); the guest keeps its memory
and its disk where it went, and the source's volumes are deleted (volumes a move kept, its
destination's word lost, once the destination confirms it later)."""

from __future__ import annotations

import json
from pathlib import Path

from novacron.state.db import StateStore
from tests.system import guest
from tests.system.nodes import Node, TwoNodes, migrate, refused_by_hook, wait_until
from tests.system.test_migration import (
    boot,
    console_has,
    disk_counter,
    disk_in_use,
    intact_on,
    only_on,
    retire,
    stays_on_source,
)

# a throttle the moves keep (well above what the test guest writes)
LIMITS = {"write_bytes_per_s": 512 << 20, "read_iops": 50_000}


def throttle(node: Node, vm: str) -> dict[str, int]:
    """What QEMU on ``node`` applies to the VM's vda now (non-zero settings)."""
    out = node.host.virsh("blkdeviotune", vm, "vda", "--live")
    pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): int(v) for k, v in pairs if v.strip().isdigit() and int(v)}


def boot_with_pool_disk(node: Node, vm: str, images: guest.GuestImages) -> Path:
    """A guest writing its 1 GiB raw volume in ``node``'s pool (``novacron.disk``), booted;
    the volume's path."""
    disk = {"size_gib": 1, "format": "raw", "limits": LIMITS}
    boot(node, vm, images, "novacron.disk", disks=[disk])
    wait_until(lambda: console_has(node, vm, guest.DISK_READY), 60, f"{vm}'s disk on {node.name}")
    with node.client() as c:
        return Path(c.call("vm.get", name=vm)["disks"][0]["path"])


def kept_then_swept(src: Node, dst: Node, op_id: str, path: Path) -> None:
    """Had ``src`` not heard ``dst`` confirm the VM after move ``op_id``, it would have
    kept its volume at ``path``: recorded so (the daemon stopped, its store changed as
    the move would have left it, the volume back), the daemon asks ``dst`` again when it
    starts, and deletes the volume on its ``succeeded``."""
    src.daemon.stop()
    store = StateStore(src.state_dir / "state.db")
    try:
        row = store.get_operation(op_id)
        assert row is not None
        kept = {"paths": [str(path)], "address": dst.address}
        row["result"]["storage"].update(source_volumes="kept", kept=kept)
        store.update_operation(row)
    finally:
        store.close()
    path.write_bytes(b"kept" * 1024)
    src.restart()
    wait_until(lambda: not path.exists(), 60, f"{path} deleted by the sweep")
    with src.client() as c:
        storage = c.call("op.get", op=op_id)["result"]["storage"]
    assert storage["source_volumes"] == "deleted" and "kept" not in storage, storage
    assert storage["swept_at"] > 0


def test_a_running_vm_moves_with_its_volumes_there_and_back(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a, b = nodes.a, nodes.b
    try:
        on_a = boot_with_pool_disk(a, "lv1", guest_images)
        disk_in_use(a, "lv1", on_a)

        for src, dst, here, packing in ((a, b, on_a, "lz4"), (b, a, None, "none")):
            if here is None:  # (the way back: from where the first move put it)
                with src.client() as c:
                    here = Path(c.call("vm.get", name="lv1")["disks"][0]["path"])
            written = disk_counter(here)
            done = migrate(src, dst, "lv1", "--disk-compression", packing)
            result = done["result"]
            print(f"{src.name}->{dst.name}", json.dumps(result["storage"], sort_keys=True))
            storage = result["storage"]
            assert storage["disks"] == 1 and storage["connections"] >= 1, storage
            assert storage["source_volumes"] == "deleted", storage
            assert storage["bytes_to_destination"] > 1 << 20, storage  # the pattern, at least
            assert storage["packing"] == packing, storage
            if packing == "none":  # NBD's bytes as they are
                assert storage["wire_bytes_to_destination"] == storage["bytes_to_destination"]
            else:  # the random megabyte stays as it is; the guest's text (2 MiB) shrinks
                assert storage["wire_bytes_to_destination"] < 0.9 * storage["bytes_to_destination"]
            only_on("lv1", dst, src)
            intact_on(dst, "lv1")
            with dst.client() as c:
                [disk] = c.call("vm.get", name="lv1")["disks"]
            there = Path(disk["path"])
            assert disk["limits"] == LIMITS  # in the spec it moved with, and in QEMU there
            assert throttle(dst, "lv1") == {"write_bytes_sec": 512 << 20, "read_iops_sec": 50_000}
            assert str(there).startswith(str(dst.state_dir)), there
            assert not here.exists(), "the source's volume is deleted"
            # the guest reads back what it wrote before the move and keeps writing
            disk_in_use(dst, "lv1", there)
            assert disk_counter(there) > written
        assert here is not None
        kept_then_swept(b, a, done["id"], here)
    finally:
        for node in (a, b):
            if "lv1" in node.records():
                retire(node, "lv1")


def test_a_refused_live_move_leaves_the_vm_and_its_volume_home_and_nothing_there(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """libvirt on the destination refuses (its QEMU hook) after the destination daemon
    made the volume: the VM runs on at the source with its disk, and the volume made
    for it there is gone."""
    a, b = nodes.a, nodes.b
    try:
        on_a = boot_with_pool_disk(a, "lv3", guest_images)
        on_b = b.state_dir / "images" / on_a.name
        refused_by_hook(a, b, "lv3")
        wait_until(lambda: not on_b.exists(), 30, "the volume made on hostb deleted")
        disk_in_use(a, "lv3", on_a)
        stays_on_source("lv3", a, b)  # (and retires it)
    finally:
        if "lv3" in a.records():
            retire(a, "lv3")
