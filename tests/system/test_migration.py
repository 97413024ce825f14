"""``vm.migrate`` between two NovaCron nodes (two namespaced hosts, real libvirtd,
single-threaded TCG guests running a memory-dirtying workload with an integrity check).

A migration passes only if the guest is alive and intact on the destination and gone
from the source, and both daemons' stores agree. Every failure (cancel, either daemon
killed, the link cut, the destination QEMU killed) must leave the guest running on the
source only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.system import guest
from tests.system.console_client import Console
from tests.system.nodes import Node, TwoNodes, cli, logs, migrate, wait_until
from tests.system.twohosts import STREAMS

MEMORY_MIB = 128
WORKLOAD = "novacron.workload novacron.check_s=1"  # integrity checks every second


def boot(node: Node, name: str, images: guest.GuestImages, extra: str = "", **params: Any) -> None:
    options = f"{WORKLOAD} {extra}"
    with node.client() as c:
        c.call("vm.create", **images.vm(name, MEMORY_MIB, options, **params))
    wait_until(
        lambda: console_has(node, name, guest.INTACT), 240, f"{name} workload on {node.name}"
    )


def console_has(node: Node, vm: str, needle: str, after: int = 0) -> bool:
    """Whether ``vm``'s console log on ``node`` holds ``needle`` past its first ``after``
    characters."""
    path = node.console(vm)
    return path.exists() and needle in path.read_text(errors="replace")[after:]


def intact_on(node: Node, vm: str) -> None:
    """Alive and intact: new integrity checks pass on ``node``'s console, none failed."""
    size = node.console(vm).stat().st_size if node.console(vm).exists() else 0
    wait_until(
        lambda: (
            node.console(vm).exists()
            and node.console(vm).read_text(errors="replace")[size:].count(guest.INTACT) >= 2
        ),
        120,
        f"{vm} passing its integrity checks on {node.name}",
    )
    assert guest.CORRUPT not in node.console(vm).read_text(errors="replace")


def only_on(vm: str, here: Node, gone: Node) -> None:
    assert here.domstate(vm) == "running"
    assert vm not in gone.domains()
    assert vm in here.records() and vm not in gone.records()


def test_migrate_there_and_back_again(nodes: TwoNodes, guest_images: guest.GuestImages) -> None:
    a, b = nodes.a, nodes.b
    boot(a, "m1", guest_images, "novacron.shell")

    with a.client() as held, a.client() as watching:  # the source's consoles end as it leaves
        console, watcher = Console(held, "m1"), Console(watching, "m1", watch=True)
        first = migrate(a, b, "m1")["result"]
        assert console.wait_closed()["reason"] in ("ended", "error")
        assert watcher.wait_closed()["reason"] in ("ended", "error")
    only_on("m1", b, a)
    intact_on(b, "m1")
    with b.client() as there:  # and the destination's console answers
        console = Console(there, "m1")
        there.call("vm.console.write", console=console.number, data=b"echo NOVACRON-$((8*8))\r")
        console.wait_for(b"NOVACRON-64")
        there.call("vm.console.close", console=console.number)
    assert first["destination"] == "hostb" and first["destination_state"] == "succeeded"
    assert first["pages"] > 1000 and first["bytes_wire"] < first["bytes_logical"]
    assert first["downtime_ms"] > 0  # QEMU's own figure, from the destination's libvirt
    assert first["channel_features"] == ["packed-pages"]  # both ends of this release

    back = migrate(b, a, "m1")["result"]
    only_on("m1", a, b)
    intact_on(a, "m1")
    # hosta kept the pages it sent: hostb sends references for what did not change
    assert back["bytes_wire"] < first["bytes_wire"] / 2, (first, back)

    again = migrate(a, b, "m1", "--compression", "zstd", "--no-dedup")["result"]
    only_on("m1", b, a)
    intact_on(b, "m1")
    assert again["bytes_wire"] < again["bytes_logical"]

    # a second VM of the same kernel and initramfs: hostb has most of its pages already
    boot(a, "m1b", guest_images)
    # as a person runs it: the progress bar, then the summary table
    shown = cli(a, "vm", "migrate", "m1b", "--to", b.address)
    assert shown.returncode == 0, f"{shown.stderr}\n{logs(a, b)}"
    for field in ("destination", "downtime_ms", "bytes_logical", "bytes_wire", "reduction"):
        assert field in shown.stdout, shown.stdout
    with a.client() as c:
        sibling = next(o for o in c.call("op.list") if o["vm"] == "m1b")["result"]
    only_on("m1b", b, a)
    intact_on(b, "m1b")
    assert sibling["bytes_wire"] < first["bytes_wire"] * 0.7, (first, sibling)

    for label, doc in (
        ("a->b", first),
        ("b->a", back),
        ("a->b zstd no-dedup", again),
        ("second vm a->b", sibling),
    ):
        print(label, json.dumps(doc, sort_keys=True))
    with a.client() as c:
        ops = c.call("op.list")
    outgoing = [o for o in ops if o["kind"] == "migrate_out" and o["vm"] == "m1"]
    assert len([o for o in ops if o["kind"] == "migrate_out"]) == 3
    incoming = [o for o in ops if o["kind"] == "migrate_in" and o["vm"] == "m1"]
    assert [o["state"] for o in outgoing] == ["succeeded", "succeeded"]
    assert [o["state"] for o in incoming] == ["succeeded"]
    # every migration's socket directory is gone from both hosts, and each destination
    # checked that the socket's listener was the incoming domain's QEMU (libvirt's pid)
    for node in (a, b):
        assert node.host.sh(f"ls -A {STREAMS}").split() == [], node.name
        assert "migration.qemu_checked" in node.daemon.log_text(), node.name
        assert "migration.qemu_pid_unknown" not in node.daemon.log_text(), node.name
    retire(b, "m1")
    retire(b, "m1b")


def local_dir() -> Path:
    """A new directory on this machine's own filesystem (no node declares it shared
    storage), which QEMU's user may open files in; the caller removes it."""
    local = Path(tempfile.mkdtemp(prefix="novacron-local-", dir="/var/tmp"))
    local.chmod(0o755)
    return local


def sparse_file(path: Path, size: int) -> None:
    """A raw disk image of ``size`` bytes (zeros, sparse)."""
    with path.open("wb") as f:
        f.truncate(size)


def disk_counter(disk: Path) -> int:
    """The counter the guest last wrote to its disk (``novacron.disk``), read on the host."""
    with disk.open("rb") as f:
        f.seek(guest.DISK_COUNTER_AT)
        words = f.read(512).split(b"\0", 1)[0].split()
    return int(words[1]) if len(words) == 2 and words[0] == b"counter" else 0


def disk_in_use(node: Node, vm: str, disk: Path) -> None:
    """The guest on ``node`` reads its disk intact and keeps writing to it."""
    console = node.console(vm)
    size = console.stat().st_size
    start = disk_counter(disk)
    wait_until(
        lambda: console.read_text(errors="replace")[size:].count(guest.DISK_OK) >= 2,
        120,
        f"{vm} reading its disk on {node.name}",
    )
    assert guest.DISK_BAD not in console.read_text(errors="replace")
    wait_until(lambda: disk_counter(disk) > start + 2, 60, f"{vm} writing its disk")


def test_a_guest_with_two_vcpus_disks_and_a_nic_migrates_there_and_back(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """Not only the bare guest: two vCPUs and a balloon (room for 64 MiB more than it
    has), a raw disk on storage both nodes declare shared
    (the guest keeps writing it and reads it back from the disk) and a qcow2 overlay over a
    base image there (the destination finds the whole chain; QEMU's image lock passes from
    one QEMU to the other), an e1000 NIC on a bridge network of
    the same name on both nodes. A read-only disk outside the declared storage, plugged in
    with virsh, does not stand in the way (libvirt's check leaves read-only disks out,
    and so does the declaration)."""
    a, b = nodes.a, nodes.b
    disk, qcow2 = nodes.shared / "m9.raw", nodes.shared / "m9.qcow2"
    sparse_file(disk, 16 << 20)
    base = nodes.shared / "m9-base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2", str(qcow2)],
        check=True,
    )
    local = local_dir()
    readonly = local / "m9-ro.raw"
    sparse_file(readonly, 1 << 20)
    paths = [str(disk), str(qcow2), str(readonly)]
    try:
        for node in (a, b):
            with node.client() as c:
                c.call("net.create", name="mignet")
        boot(
            a,
            "m9",
            guest_images,
            "novacron.disk novacron.memwatch",  # (memwatch: the guest's balloon driver)
            vcpus=2,
            max_memory_mib=MEMORY_MIB + 64,
            disks=[{"path": str(disk), "format": "raw"}, {"path": str(qcow2)}],
            nics=[{"network": "mignet", "model": "e1000"}],
        )
        wait_until(lambda: console_has(a, "m9", guest.DISK_READY), 60, "m9's disk on hosta")
        disk_in_use(a, "m9", disk)
        a.host.virsh("attach-disk", "m9", str(readonly), "vdc", "--mode", "readonly", "--live")

        for src, dst in ((a, b), (b, a)):
            result = migrate(src, dst, "m9")["result"]
            only_on("m9", dst, src)
            intact_on(dst, "m9")
            disk_in_use(dst, "m9", disk)
            assert result["bytes_wire"] < result["bytes_logical"], result
            with dst.client() as c:
                vm = c.call("vm.get", name="m9")
                stats = c.call("vm.stats", name="m9")
            assert vm["vcpus"] == 2 and [d["path"] for d in vm["disks"]] == paths, vm
            assert vm["max_memory_mib"] == MEMORY_MIB + 64, vm
            assert stats["memory"]["current_kib"] == MEMORY_MIB * 1024, stats  # the balloon's
            defined = dst.host.virsh("dumpxml", "--inactive", "m9")
            assert f"<currentMemory unit='KiB'>{MEMORY_MIB * 1024}<" in defined, defined
            assert [(n["network"], n["model"]) for n in vm["nics"]] == [("mignet", "e1000")], vm
            xml = dst.host.virsh("dumpxml", "m9")
            assert all(p in xml for p in paths) and "e1000" in xml, xml
        retire(a, "m9")
        assert disk.exists() and qcow2.exists()  # images the VM was given stay
    finally:
        for node in (a, b):
            with node.client() as c:
                if "m9" in node.records():
                    c.call("vm.delete", name="m9", force=True)
                if any(n["name"] == "mignet" for n in c.call("net.list")):
                    c.call("net.delete", name="mignet")
        disk.unlink(missing_ok=True)
        qcow2.unlink(missing_ok=True)
        base.unlink(missing_ok=True)
        shutil.rmtree(local, ignore_errors=True)


def test_a_paused_vm_migrates_and_stays_paused(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """libvirt keeps a guest paused on the destination when it was paused on the source;
    the destination records it as it is (paused, and paused is what the operator asked)."""
    a, b = nodes.a, nodes.b
    boot(a, "m10", guest_images)
    with a.client() as c:
        c.call("vm.pause", name="m10")
    result = migrate(a, b, "m10")["result"]
    assert result["destination_state"] == "succeeded", result
    assert b.domstate("m10") == "paused" and "m10" not in a.domains()
    assert "m10" in b.records() and "m10" not in a.records()
    with b.client() as c:
        vm = c.call("vm.get", name="m10")
        assert (vm["state"], vm["desired_state"]) == ("paused", "paused"), vm
        c.call("vm.resume", name="m10")
    intact_on(b, "m10")
    retire(b, "m10")


SLOW = ("--bandwidth-mbps", "16")  # ~2 MiB/s of QEMU stream: long enough to interrupt


def start_migration(src: Node, dst: Node, vm: str) -> str:
    done = cli(src, "--json", "vm", "migrate", vm, "--to", dst.address, "--detach", *SLOW)
    assert done.returncode == 0, done.stderr
    op_id: str = json.loads(done.stdout)["op"]

    def streaming() -> bool:
        with src.client() as c:
            doc = c.call("op.get", op=op_id)
        assert doc["state"] == "running", doc
        return int(doc["progress"].get("bytes_logical", 0)) > 1_000_000

    wait_until(streaming, 120, f"{vm}'s migration to be under way")
    return op_id


def op_state(node: Node, op_id: str) -> dict[str, Any]:
    with node.client() as c:
        doc: dict[str, Any] = c.call("op.get", op=op_id)
    return doc


def ended(node: Node, op_id: str, timeout: float = 180) -> dict[str, Any]:
    wait_until(lambda: op_state(node, op_id)["state"] != "running", timeout, f"{op_id} to end")
    return op_state(node, op_id)


def incoming_op(node: Node, vm: str) -> dict[str, Any]:
    with node.client() as c:
        ops = c.call("op.list")
    return next(o for o in ops if o["kind"] == "migrate_in" and o["vm"] == vm)


def stays_on_source(vm: str, src: Node, dst: Node) -> None:
    """The failure left the guest running on the source only, both stores agreeing."""
    wait_until(lambda: src.domstate(vm) == "running", 120, f"{vm} running on {src.name}")
    wait_until(lambda: vm not in dst.domains(), 180, f"{vm} gone from {dst.name}")
    try:
        wait_until(
            lambda: incoming_op(dst, vm)["state"] != "running", 120, f"{dst.name}'s incoming op"
        )
    except AssertionError as exc:  # say where both ends were (a rare CI failure)
        raise AssertionError(f"{exc}\n{incoming_op(dst, vm)}\n{logs(dst, src)}") from None
    assert incoming_op(dst, vm)["state"] == "failed"
    only_on(vm, src, dst)
    intact_on(src, vm)
    retire(src, vm)


def retire(node: Node, vm: str) -> None:
    """Deletes a finished test's guest: TCG guests share the machine's two cores."""
    with node.client() as c:
        c.call("vm.delete", name=vm, force=True)


def test_cancel_mid_way(nodes: TwoNodes, guest_images: guest.GuestImages) -> None:
    a, b = nodes.a, nodes.b
    boot(a, "m2", guest_images)
    op_id = start_migration(a, b, "m2")
    done = cli(a, "op", "cancel", op_id)
    assert done.returncode == 0, done.stderr
    doc = ended(a, op_id)
    assert doc["state"] == "cancelled" and doc["error"]["code"] == "cancelled", doc
    stays_on_source("m2", a, b)


def test_source_daemon_killed_mid_way(nodes: TwoNodes, guest_images: guest.GuestImages) -> None:
    a, b = nodes.a, nodes.b
    boot(a, "m3", guest_images)
    op_id = start_migration(a, b, "m3")
    a.daemon.kill()
    wait_until(lambda: "m3" not in b.domains(), 180, "the incoming domain cleaned up")
    a.restart()
    doc = op_state(a, op_id)
    assert doc["state"] == "failed" and "restarted" in doc["error"]["message"], doc
    stays_on_source("m3", a, b)


def test_destination_daemon_killed_mid_way(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a, b = nodes.a, nodes.b
    boot(a, "m4", guest_images)
    op_id = start_migration(a, b, "m4")
    b.daemon.kill()
    doc = ended(a, op_id)
    assert doc["state"] == "failed" and doc["error"]["code"] == "migration_failed", doc
    b.restart()
    stays_on_source("m4", a, b)


def test_link_cut_mid_way(nodes: TwoNodes, guest_images: guest.GuestImages) -> None:
    a, b = nodes.a, nodes.b
    boot(a, "m5", guest_images)
    op_id = start_migration(a, b, "m5")
    a.host.sh(f"ip link set {a.host.veth} down")
    try:
        doc = ended(a, op_id, timeout=240)
    finally:
        a.host.sh(f"ip link set {a.host.veth} up")
    assert doc["state"] == "failed" and doc["error"]["code"] == "migration_failed", doc
    stays_on_source("m5", a, b)


def test_destination_qemu_killed_mid_way(nodes: TwoNodes, guest_images: guest.GuestImages) -> None:
    """What the kernel's OOM killer does to a destination QEMU that runs out of memory
    while the stream arrives: the guest stays on the source, intact."""
    a, b = nodes.a, nodes.b
    boot(a, "m7", guest_images)
    op_id = start_migration(a, b, "m7")
    # the destination host's own libvirt names its QEMU (the hosts share one pid space)
    b.host.sh("kill -KILL $(cat /run/libvirt/qemu/m7.pid)")
    doc = ended(a, op_id)
    assert doc["state"] == "failed" and doc["error"]["code"] == "migration_failed", doc
    # the relay's failure is the op's error; libvirt's own cause is logged beside it
    said = [
        line
        for line in a.daemon.log_text().splitlines()
        if "migration.libvirt_failed" in line and " vm=m7 " in line
    ]
    # (QEMU's death, or the abort that followed the relay's, whichever libvirt saw first)
    assert len(said) == 1 and 'error="libvirt: ' in said[0], said
    stays_on_source("m7", a, b)  # intact there, then retired


def test_a_stalled_migration_is_cancelled_and_reported(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """The guest dirties memory faster than the capped stream: after two rounds without
    the remaining bytes shrinking, the configured action (cancel) is applied."""
    a, b = nodes.a, nodes.b
    boot(a, "m6", guest_images, "novacron.hot")
    done = cli(
        a,
        *("--json", "vm", "migrate", "m6", "--to", b.address, "--bandwidth-mbps", "128"),
        *("--stall-action", "cancel", "--stall-rounds", "2", "--max-downtime-ms", "50"),
    )
    assert done.returncode == 1, done.stdout
    assert "migration_failed" in done.stderr and "stalled" in done.stderr, done.stderr
    with a.client() as c:
        op = next(o for o in c.call("op.list") if o["vm"] == "m6")
    assert op["state"] == "failed" and op["error"]["details"]["stalled"] is True, op
    stays_on_source("m6", a, b)


def test_failures_before_anything_moves_are_clear_and_leave_the_vm_home(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """Where QEMU's stream would meet the daemon (``[migration] stream_dir``) cannot be
    made, first on the source, then on the destination; then the destination refuses
    the VM; then libvirt refuses its disk, on storage no node declared shared: each time
    a clear failure, and the guest runs on the source, intact."""
    local = local_dir()
    try:
        disk = local / "m8.raw"
        sparse_file(disk, 1 << 20)
        refused_everywhere(nodes, guest_images, disk)
    finally:
        shutil.rmtree(local)


def refused_everywhere(nodes: TwoNodes, guest_images: guest.GuestImages, disk: Path) -> None:
    a, b = nodes.a, nodes.b
    boot(a, "m8", guest_images, disks=[{"path": str(disk), "format": "raw"}])
    for node in (a, b):
        node.host.sh(f"rm -rf {STREAMS} && touch {STREAMS}")  # a file where the dir goes
        try:
            done = cli(a, "--json", "vm", "migrate", "m8", "--to", b.address)
        finally:
            node.host.sh(f"rm -f {STREAMS}")
        assert done.returncode == 1, done.stdout
        assert "migration_failed" in done.stderr and "cannot make" in done.stderr, logs(a, b)
        assert str(STREAMS) in done.stderr, done.stderr
        only_on("m8", a, b)
    # a refusal of the destination's own (the name is taken there) reads as one too
    with b.client() as c:
        c.call("vm.create", name="m8", memory_mib=64)  # defined, not started
    done = cli(a, "--json", "vm", "migrate", "m8", "--to", b.address)
    assert done.returncode == 1, done.stdout
    assert "migration_failed" in done.stderr and "already exists" in done.stderr, logs(a, b)
    assert a.domstate("m8") == "running" and b.domstate("m8") == "shut off"
    retire(b, "m8")
    # the disk: libvirt sees a local filesystem, and no node declared it shared storage
    done = cli(a, "--json", "vm", "migrate", "m8", "--to", b.address)
    assert done.returncode == 1, done.stdout
    assert "migration_failed" in done.stderr and "shared storage" in done.stderr, logs(a, b)
    assert "[migration] shared_storage" in done.stderr, done.stderr
    # the source told the destination at once (it does not wait out a QEMU that never comes)
    wait_until(lambda: incoming_op(b, "m8")["state"] != "running", 30, "hostb's incoming op")
    assert incoming_op(b, "m8")["error"]["message"] == "cancelled by the source"
    stays_on_source("m8", a, b)  # intact there, then retired
    assert disk.exists()


def test_a_vcpu_plugged_under_single_threaded_tcg_is_recorded_and_the_vm_stays_home(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """These hosts run QEMU's TCG on one thread (``twohosts.py``), so every vCPU reports
    the same thread and libvirt 9.0's check after QEMU plugged one fails. The guest has
    the vCPU: the plug is a success, recorded as such. libvirt's description of the VM
    is then one it cannot move (a plugged vCPU without an ``order``): a migration fails
    and the VM stays home, running."""
    a, b = nodes.a, nodes.b
    boot(a, "m12", guest_images, vcpus=1, max_vcpus=2)
    with a.client() as c:
        assert c.call("vm.update", name="m12", vcpus=2)["vcpus"] == 2
        assert c.call("vm.stats", name="m12")["cpu"]["vcpus"] == 2
        assert c.call("vm.get", name="m12")["vcpus"] == 2
    assert "vm.vcpus_plugged_despite_error" in a.daemon.log_text()
    done = cli(a, "--json", "vm", "migrate", "m12", "--to", b.address)
    assert done.returncode != 0 and "order" in done.stderr, done.stderr
    only_on("m12", a, b)  # (refused before the destination was asked)
    intact_on(a, "m12")
    retire(a, "m12")
