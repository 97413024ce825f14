"""``vm.migrate`` of a stopped VM between two NovaCron nodes (two namespaced hosts, real
libvirtd): libvirt moves the definition, the daemons move the record and the placement,
the disks stay on storage both nodes reach. The VM must be defined on exactly one node
after every outcome, and start and run where it went."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.system import guest
from tests.system.nodes import (
    Node,
    TwoNodes,
    cli,
    logs,
    migrate,
    refused_by_hook,
    wait_until,
)
from tests.system.test_migration import (
    MEMORY_MIB,
    WORKLOAD,
    incoming_op,
    intact_on,
    retire,
    sparse_file,
)


def stopped_only_on(vm: str, here: Node, gone: Node) -> dict[str, Any]:
    """Defined and shut off on ``here`` only, recorded there only; its record."""
    assert here.domstate(vm) == "shut off", here.domstate(vm)
    assert vm not in gone.domains(), gone.domains()
    assert vm in here.records() and vm not in gone.records()
    with here.client() as c:
        doc: dict[str, Any] = c.call("vm.get", name=vm)
    assert (doc["state"], doc["desired_state"]) == ("stopped", "stopped"), doc
    return doc


def test_a_stopped_vm_moves_offline_there_and_back_and_starts_where_it_went(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a, b = nodes.a, nodes.b
    disk = nodes.shared / "o1.raw"
    sparse_file(disk, 8 << 20)
    params = guest_images.vm(
        "o1",
        MEMORY_MIB,
        WORKLOAD,
        start=False,
        disks=[{"path": str(disk), "format": "raw"}],
    )
    try:
        with a.client() as c:
            c.call("vm.create", **params)
        before = stopped_only_on("o1", a, b)

        doc = migrate(a, b, "o1")
        result = doc["result"]
        print("offline a->b", json.dumps(result, sort_keys=True))
        assert result["offline"] is True and result["destination"] == "hostb", result
        assert result["destination_state"] == "succeeded", result
        assert result["bytes_wire"] == 0 and result["pages"] == 0, result  # nothing streamed
        after = stopped_only_on("o1", b, a)
        assert after["uuid"] == before["uuid"]  # the same VM, not a copy
        assert [d["path"] for d in after["disks"]] == [str(disk)], after
        arrived = incoming_op(b, "o1")
        assert arrived["state"] == "succeeded" and arrived["result"]["state"] == "stopped"

        # and back, as a person runs it: the summary says it moved offline
        shown = cli(b, "vm", "migrate", "o1", "--to", a.address)
        assert shown.returncode == 0, f"{shown.stderr}\n{logs(a, b)}"
        assert "offline" in shown.stdout and "True" in shown.stdout, shown.stdout
        stopped_only_on("o1", a, b)

        # the definition that moved twice starts, and the guest runs, with its disk
        with a.client() as c:
            assert c.call("vm.start", name="o1")["state"] == "running"
        intact_on(a, "o1")
        assert "o1" not in b.domains()
        retire(a, "o1")
        assert disk.exists()
    finally:
        for node in (a, b):
            if "o1" in node.records():
                retire(node, "o1")
        disk.unlink(missing_ok=True)


def test_a_refused_offline_move_leaves_the_vm_where_it_was(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """The destination refuses (the name is taken there; a disk it cannot reach), or
    libvirt refuses after the destination got ready: a clear error each time, the VM
    defined and recorded on the source only, the destination's side closed."""
    a, b = nodes.a, nodes.b
    gone = nodes.shared / "o2-gone.raw"
    sparse_file(gone, 1 << 20)
    with a.client() as c:
        c.call("vm.create", **guest_images.vm("o2", MEMORY_MIB, start=False))
    try:
        with b.client() as c:
            c.call("vm.create", name="o2", memory_mib=64)  # defined, not started
        done = cli(a, "--json", "vm", "migrate", "o2", "--to", b.address)
        assert done.returncode == 1, done.stdout
        assert "migration_failed" in done.stderr and "already exists" in done.stderr, logs(a, b)
        assert a.domstate("o2") == "shut off" and "o2" in a.records()
        retire(b, "o2")
        stopped_only_on("o2", a, b)

        # libvirt refuses after both daemons got ready (the destination's QEMU hook):
        # the destination's side ends at the source's word, nothing of it stays there
        refused_by_hook(a, b, "o2")
        wait_until(lambda: incoming_op(b, "o2")["state"] != "running", 30, "hostb's side")
        assert incoming_op(b, "o2")["state"] == "failed"
        assert incoming_op(b, "o2")["error"]["message"] == "cancelled by the source"
        stopped_only_on("o2", a, b)
        # and with the hook quiet again the same VM moves
        migrate(a, b, "o2")
        stopped_only_on("o2", b, a)

        # a disk the destination does not reach: refused before anything moves
        with a.client() as c:
            c.call(
                "vm.create",
                **guest_images.vm(
                    "o2b", MEMORY_MIB, start=False, disks=[{"path": str(gone), "format": "raw"}]
                ),
            )
        gone.unlink()
        done = cli(a, "--json", "vm", "migrate", "o2b", "--to", b.address)
        assert done.returncode == 1, done.stdout
        assert "not reachable on hostb" in done.stderr, f"{done.stderr}\n{logs(a, b)}"
        stopped_only_on("o2b", a, b)
    finally:
        gone.unlink(missing_ok=True)
        for node in (a, b):
            for vm in ("o2", "o2b"):
                if vm in node.records():
                    retire(node, vm)


def test_an_offline_move_is_listed_with_its_kind(nodes: TwoNodes) -> None:
    """Both ends keep the operation, saying it moved offline."""
    a, b = nodes.a, nodes.b
    with a.client() as c:
        c.call("vm.create", name="o3", memory_mib=64)
    try:
        done = cli(a, "--json", "vm", "migrate", "o3", "--to", b.address)
        assert done.returncode == 0, f"{done.stderr}\n{logs(a, b)}"
        doc = json.loads(done.stdout)
        assert doc["params"]["offline"] is True, doc
        assert incoming_op(b, "o3")["params"]["offline"] is True
        stopped_only_on("o3", b, a)
    finally:
        for node in (a, b):
            if "o3" in node.records():
                retire(node, "o3")


def saved(paths: list[Path], into: Path) -> list[Path]:
    """Byte-for-byte copies of the volume files at ``paths`` (sparse)."""
    copies = []
    for path in paths:
        copy = into / path.name
        subprocess.run(["cp", "--sparse=always", str(path), str(copy)], check=True)
        copies.append(copy)
    return copies


def same_files(got: list[Path], want: list[Path]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.stat().st_size == w.stat().st_size, (g, w)
        assert filecmp.cmp(g, w, shallow=False), f"{g} differs from {w}"


def test_a_stopped_vm_moves_with_copies_of_its_volumes_and_boots_there(
    nodes: TwoNodes, guest_images: guest.GuestImages, tmp_path: Path
) -> None:
    """A stopped VM with a qcow2 and a raw volume in its node's pool: the volumes'
    files arrive byte for byte in the destination's pool, the source's are deleted, the
    guest sees both disks where it went (and, running, moves back live with them). A
    libvirt refusal after the copy leaves the VM and its volumes where they were and
    nothing of them on the other node."""
    a, b = nodes.a, nodes.b
    params = guest_images.vm(
        "s1",
        MEMORY_MIB,
        "novacron.blockwatch",
        start=False,
        disks=[{"size_gib": 1}, {"size_gib": 1, "format": "raw"}],
    )
    try:
        with a.client() as c:
            made = c.call("vm.create", **params)
        on_a = [Path(d["path"]) for d in made["disks"]]
        assert [p.name for p in on_a] == ["s1-vda.qcow2", "s1-vdb.raw"]
        # what a guest would have written: data in the qcow2 image, a marker in the raw one
        qemu_io = ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 300M 3M"]
        subprocess.run([*qemu_io, "-c", "write -P 0 900M 64k", str(on_a[0])], check=True)
        with on_a[1].open("r+b") as f:
            f.seek(700 << 20)
            f.write(os.urandom(1 << 20) + b"\0" * (1 << 20) + b"x" * 4096)
        before = saved(on_a, tmp_path)

        doc = migrate(a, b, "s1")
        storage = doc["result"]["storage"]
        print("storage a->b", json.dumps(storage, sort_keys=True))
        assert storage["disks"] == 2 and storage["source_volumes"] == "deleted", storage
        logical = sum(p.stat().st_size for p in before)
        assert storage["bytes"] == logical, storage
        # holes and zero blocks do not travel; the random MiB does, the pattern packs
        assert (1 << 20) < storage["bytes_wire"] < (2 << 20), storage
        after = stopped_only_on("s1", b, a)
        on_b = [Path(d["path"]) for d in after["disks"]]
        assert [p.name for p in on_b] == ["s1-vda.qcow2", "s1-vdb.raw"]
        assert all(str(p).startswith(str(b.state_dir)) for p in on_b), on_b
        same_files(on_b, before)
        assert not any(p.exists() for p in on_a), "the source's volumes are deleted"
        assert incoming_op(b, "s1")["result"]["storage"]["disks"] == 2

        # the guest sees both disks where it went; running, it moves back live with them
        with b.client() as c:
            c.call("vm.start", name="s1")
        wait_until(
            lambda: all(
                f"{guest.BLOCK_MARKER} {d} 2097152" in b.console("s1").read_text(errors="replace")
                for d in ("vda", "vdb")
            ),
            180,
            "the guest's disks on hostb",
        )
        live = migrate(b, a, "s1")["result"]["storage"]
        assert live["disks"] == 2 and live["source_volumes"] == "deleted", live
        assert not any(p.exists() for p in on_b) and all(p.exists() for p in on_a)
        with a.client() as c:
            assert c.call("vm.stop", name="s1")["state"] == "stopped"

        # libvirt refuses after the copy: the copies on hostb go, the VM stays on hosta
        (tmp_path / "a").mkdir()
        before = saved(on_a, tmp_path / "a")
        refused_by_hook(a, b, "s1")
        wait_until(lambda: incoming_op(b, "s1")["state"] != "running", 30, "hostb's side")
        stopped_only_on("s1", a, b)
        same_files(on_a, before)
        wait_until(lambda: not any(p.exists() for p in on_b), 30, "hostb's copies deleted")

        # and there, with the hook quiet
        doc = migrate(a, b, "s1")
        assert doc["result"]["storage"]["source_volumes"] == "deleted"
        stopped_only_on("s1", b, a)
        same_files(on_b, before)
        assert not any(p.exists() for p in on_a)
    finally:
        for node in (a, b):
            if "s1" in node.records():
                retire(node, "s1")
