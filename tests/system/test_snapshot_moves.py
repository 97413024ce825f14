"""A VM's snapshots move with it (two namespaced hosts, real libvirtds): stopped, QEMU's
copy of them inside its qcow2 volume is copied byte for byte; running, with its disks on
shared storage, they stay in the image both nodes see. libvirt's descriptions of them are
forgotten on the source only for the move and redefined where the VM went, or back on
the source when libvirt refuses. A running VM with snapshots and volumes in its node's
pool is refused up front (QEMU's mirror of the volumes would not carry them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.system import guest
from tests.system.nodes import Node, TwoNodes, cli, logs, migrate, refused_by_hook, wait_until
from tests.system.test_migration import boot, incoming_op, intact_on, only_on, retire
from tests.system.test_offline_migration import stopped_only_on


def snapshots(node: Node, vm: str) -> list[tuple[str, bool]]:
    """``(name, current)`` of the VM's snapshots on ``node``, oldest first."""
    with node.client() as c:
        return [(s["name"], s["current"]) for s in c.call("vm.snapshot.list", vm=vm)]


def disk_of(node: Node, vm: str) -> Path:
    with node.client() as c:
        return Path(c.call("vm.get", name=vm)["disks"][0]["path"])


def qemu_io(path: Path, command: str) -> int:
    """qemu-io's exit status for ``command`` on the qcow2 volume at ``path``."""
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=False)
    return done.returncode


def holds(path: Path, pattern: int) -> bool:
    """Whether the volume's first MiB, as the guest sees it now, is ``pattern``."""
    return qemu_io(path, f"read -P {pattern:#x} 0 1M") == 0


def internal_snapshots(path: Path) -> list[str]:
    out = subprocess.run(
        ["qemu-img", "snapshot", "-U", "-l", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[1] for line in out.splitlines()[2:] if line.strip()]


def refused_and_kept(src: Node, dst: Node, vm: str, want: list[tuple[str, bool]]) -> None:
    """A move that libvirt on ``dst`` refuses (its QEMU hook) once the source forgot the
    snapshots' descriptions: the source knows them again, as ``want``."""
    refused_by_hook(src, dst, vm)
    wait_until(lambda: incoming_op(dst, vm)["state"] != "running", 60, f"{dst.name}'s side")
    assert snapshots(src, vm) == want, logs(src, dst)


def test_a_vm_moves_with_its_snapshots_when_stopped(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a, b = nodes.a, nodes.b
    vm = "sn1"
    try:
        boot(a, vm, guest_images, disks=[{"size_gib": 1}])  # a qcow2 volume in a's pool
        with a.client() as c:
            c.call("vm.snapshot.create", vm=vm, name="running")  # memory and disk
        done = cli(a, "--json", "vm", "migrate", vm, "--to", b.address)
        assert done.returncode == 1, done.stdout
        said = " ".join(done.stderr.split())  # (the CLI wraps its lines)
        assert "cannot move with its volumes live" in said, said
        assert "stop it to move it offline with them" in said, said
        only_on(vm, a, b)

        with a.client() as c:
            c.call("vm.stop", name=vm)
        on_a = disk_of(a, vm)
        assert qemu_io(on_a, "write -P 0x5a 0 1M") == 0
        with a.client() as c:
            c.call("vm.snapshot.create", vm=vm, name="stopped", description="0x5a")
        assert qemu_io(on_a, "write -P 0xa5 0 1M") == 0 and not holds(on_a, 0x5A)
        both = [("running", False), ("stopped", True)]
        assert snapshots(a, vm) == both

        # libvirt refuses there once the volume is copied: the snapshots are back here
        refused_and_kept(a, b, vm, both)
        stopped_only_on(vm, a, b)

        doc = migrate(a, b, vm)
        assert doc["result"]["snapshots"] == {"defined": 2, "refused": []}, doc["result"]
        assert "snapshots_held" not in doc["params"]
        stopped_only_on(vm, b, a)
        assert snapshots(b, vm) == both
        on_b = disk_of(b, vm)
        assert on_b != on_a and not on_a.exists()
        assert internal_snapshots(on_b) == ["running", "stopped"]
        with b.client() as c:
            [_, stopped] = c.call("vm.snapshot.list", vm=vm)
        assert stopped["description"] == "0x5a" and stopped["state"] == "shutoff", stopped
        assert holds(on_b, 0xA5)
        with b.client() as c:
            c.call("vm.snapshot.revert", vm=vm, name="stopped")
        assert holds(on_b, 0x5A)
        # the guest as it ran on hosta, its memory from the volume, runs on hostb
        with b.client() as c:
            c.call("vm.snapshot.revert", vm=vm, name="running")
        wait_until(lambda: b.domstate(vm) == "running", 60, f"{vm} running on hostb")
        intact_on(b, vm)
        assert snapshots(b, vm) == [("running", True), ("stopped", False)]

        # and back, stopped
        with b.client() as c:
            c.call("vm.stop", name=vm)
        back = cli(b, "vm", "migrate", vm, "--to", a.address)  # (the summary, as people read it)
        assert back.returncode == 0, f"{back.stderr}\n{logs(a, b)}"
        assert '"defined": 2, "refused": []' in back.stdout, back.stdout
        stopped_only_on(vm, a, b)
        assert snapshots(a, vm) == [("running", True), ("stopped", False)]
        with a.client() as c:
            c.call("vm.snapshot.revert", vm=vm, name="stopped")
        assert holds(disk_of(a, vm), 0x5A)
    finally:
        for node in (a, b):
            if vm in node.records():
                retire(node, vm)


def test_a_running_vm_on_shared_storage_moves_live_with_its_snapshots(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a, b = nodes.a, nodes.b
    vm = "sn2"
    disk = nodes.shared / "sn2.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    try:
        boot(a, vm, guest_images, disks=[{"path": str(disk)}])
        with a.client() as c:
            c.call("vm.snapshot.create", vm=vm, name="early")
            c.call("vm.snapshot.create", vm=vm, name="later")
        both = [("early", False), ("later", True)]

        # libvirt refuses there: the VM runs on here, its snapshots known here again
        refused_and_kept(a, b, vm, both)
        only_on(vm, a, b)

        doc = migrate(a, b, vm)
        assert doc["result"]["snapshots"] == {"defined": 2, "refused": []}, doc["result"]
        assert incoming_op(b, vm)["params"]["snapshots"] == ["early", "later"]
        only_on(vm, b, a)
        intact_on(b, vm)
        assert snapshots(b, vm) == both
        # the guest's memory as it was at "early", from the image both nodes see
        with b.client() as c:
            c.call("vm.snapshot.revert", vm=vm, name="early")
        wait_until(lambda: b.domstate(vm) == "running", 60, f"{vm} running on hostb")
        intact_on(b, vm)
        assert snapshots(b, vm) == [("early", True), ("later", False)]
        assert internal_snapshots(disk) == ["early", "later"]

        back = migrate(b, a, vm)
        assert back["result"]["snapshots"]["defined"] == 2
        only_on(vm, a, b)
        assert snapshots(a, vm) == [("early", True), ("later", False)]
    finally:
        for node in (a, b):
            if vm in node.records():
                retire(node, vm)
        disk.unlink(missing_ok=True)
