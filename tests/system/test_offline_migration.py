"""``vm.migrate`` of a stopped VM between two NovaCron nodes (two namespaced hosts, real
libvirtd): libvirt moves the definition, the daemons move the record and the placement,
the disks stay on storage both nodes reach. The VM must be defined on exactly one node
after every outcome, and start and run where it went."""

from __future__ import annotations

import json
from typing import Any

from tests.system import guest
from tests.system.nodes import Node, TwoNodes, cli, logs, migrate, wait_until
from tests.system.test_migration import (
    MEMORY_MIB,
    incoming_op,
    intact_on,
    retire,
    sparse_file,
)
from tests.system.twohosts import REFUSE_FLAG


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
        "novacron.workload",
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
        b.host.sh(f"touch {REFUSE_FLAG}")
        try:
            done = cli(a, "--json", "vm", "migrate", "o2", "--to", b.address)
        finally:
            b.host.sh(f"rm -f {REFUSE_FLAG}")
        assert done.returncode == 1, done.stdout
        assert "hook refuses migrations" in done.stderr, f"{done.stderr}\n{logs(a, b)}"
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
