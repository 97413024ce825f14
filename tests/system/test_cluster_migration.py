"""Live migration in a cluster: two namespaced hosts (each with its libvirtd and
novacrond) and a three-member etcd cluster in host A's namespaces, reached by both
daemons over the veth with their node certificates.

A migration takes the VM's lock in etcd and moves its ownership in the transaction
that lets the switch-over happen: two daemons asked at once to migrate the same VM
start exactly one migration, every time; a migration whose lock was lost is not
switched over, and the VM stays on its source. (And a console opened through the node
that does not run the VM is relayed from the one that does.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from novacron import errors
from novacron.cluster.etcd import b64
from novacron.state.db import StateStore
from tests.system import guest
from tests.system.console_client import Console
from tests.system.libvirt_host import LibvirtHost
from tests.system.nodes import Node, TwoNodes, cli, logs, running_nodes, wait_until
from tests.system.test_migration import (
    boot,
    console_has,
    ended,
    intact_on,
    only_on,
    retire,
    start_migration,
    stays_on_source,
)
from tests.system.twohosts import REFUSE_FLAG

ROUNDS = 4


@pytest.fixture(scope="module")
def cluster_nodes(
    libvirt_host: LibvirtHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoNodes]:
    with running_nodes(tmp_path_factory.mktemp("cluster"), cluster=True) as pair:
        for node in (pair.a, pair.b):
            wait_until(partial(registered, node), 60, "both nodes registered")
        yield pair


def members(node: Node) -> list[str]:
    with node.client() as c:
        return [n["node"] for n in c.call("cluster.nodes") if n["state"] == "up"]


def registered(node: Node) -> bool:
    return len(members(node)) == 2


def owner(node: Node, vm: str) -> dict[str, Any]:
    with node.client() as c:
        return next(v for v in c.call("cluster.vms") if v["name"] == vm)


def ask_to_migrate(via: Node, vm: str, to: Node, outcomes: list[Any]) -> None:
    """``vm.migrate`` through ``via`` (forwarded to the owner when ``via`` is not it),
    naming the destination by its node name."""
    try:
        with via.client() as c:
            outcomes.append(c.call("vm.migrate", name=vm, destination=to.name))
    except errors.NovaCronError as exc:
        outcomes.append(exc)


def test_two_daemons_racing_to_migrate_a_vm_start_one_migration(
    cluster_nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a, b = cluster_nodes.a, cluster_nodes.b
    boot(a, "race", guest_images)
    wait_until(lambda: owner(b, "race")["node"] == "hosta", 30, "hosta to own race")
    src, dst = a, b
    for round_ in range(ROUNDS):
        outcomes: list[Any] = []
        # one caller asks the owner, the other asks the destination (which forwards)
        callers = [
            threading.Thread(target=ask_to_migrate, args=(via, "race", dst, outcomes))
            for via in (src, dst)
        ]
        for t in callers:
            t.start()
        for t in callers:
            t.join(120)
        started = [o for o in outcomes if isinstance(o, dict)]
        refused = [o for o in outcomes if isinstance(o, errors.NovaCronError)]
        assert len(started) == 1 and len(refused) == 1, (round_, outcomes, logs(src, dst))
        assert isinstance(refused[0], errors.Conflict), refused[0]
        doc = ended(src, started[0]["op"], timeout=300)
        assert doc["state"] == "succeeded", (doc, logs(src, dst))
        only_on("race", dst, src)
        # the switch-over moved the ownership, and the lock is gone
        for node in (src, dst):
            held = owner(node, "race")
            assert held["node"] == dst.name and "migration" not in held, held
        src, dst = dst, src
    intact_on(src, "race")
    for node in (a, b):  # both daemons agree with etcd: nothing to reclaim
        with node.client() as c:
            assert c.call("cluster.status")["conflicts"] == []
    retire(src, "race")


def test_a_migration_that_lost_its_lock_is_not_switched_over(
    cluster_nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a, b = cluster_nodes.a, cluster_nodes.b
    assert cluster_nodes.etcd is not None
    boot(a, "locked", guest_images)
    wait_until(lambda: owner(a, "locked")["node"] == "hosta", 30, "hosta to own locked")
    op_id = start_migration(a, b, "locked")
    held = owner(b, "locked")
    assert held["migration"]["op"] == op_id and held["migration"]["node"] == "hosta", held
    shown = cli(b, "cluster", "vms")  # as an operator sees it
    assert shown.returncode == 0 and f"{op_id} to {b.address}" in shown.stdout, shown
    # the lock vanishes (as when the source's lease expires): the migration is aborted
    # then, not run on to a switch-over that would be refused
    status, text = cluster_nodes.etcd.gateway(
        "/v3/kv/deleterange", {"key": b64(b"/novacron/v1/locks/default/locked")}
    )
    assert status == 200 and '"deleted":"1"' in text, text
    doc = ended(a, op_id, timeout=300)
    # (it failed once in a dozen runs, cause unknown: the daemons' logs say what happened)
    assert doc["state"] == "failed", (doc, logs(a, b))
    assert "lock was lost" in doc["error"]["message"], (doc, logs(a, b))
    assert "aborted before the switch-over" in doc["error"]["message"], (doc, logs(a, b))
    held = owner(b, "locked")
    assert held["node"] == "hosta" and "migration" not in held, held
    stays_on_source("locked", a, b)  # (and retires it)


def test_a_restart_after_an_interrupted_switch_over_takes_the_vm_back(
    cluster_nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """The source daemon died between the switch-over's transaction and libvirt's end,
    and libvirt then kept the VM on the source: restarted, the daemon finds its
    interrupted migration and moves the ownership back from the destination."""
    a, etcd = cluster_nodes.a, cluster_nodes.etcd
    assert etcd is not None
    with a.client() as c:  # running is enough here: the guest need not boot
        c.call("vm.create", **guest_images.vm("back", 64, ""))
    wait_until(lambda: owner(a, "back")["node"] == "hosta", 30, "hosta to own back")
    a.daemon.stop()
    # the state that death leaves: etcd names the destination, the op still runs
    key = b"/novacron/v1/vms/default/back"
    status, _ = etcd.gateway("/v3/kv/put", {"key": b64(key), "value": b64(b"hostb")})
    assert status == 200
    store = StateStore(a.state_dir / "state.db")
    now = time.time()
    store.insert_operation(
        {
            "id": "op-interrupted",
            "kind": "migrate_out",
            "vm": "back",
            "tenant": "default",
            "peer": cluster_nodes.b.address,
            "state": "running",
            "params": {"destination_node": "hostb"},
            "created_at": now,
            "updated_at": now,
        }
    )
    store.close()
    a.restart()
    wait_until(lambda: owner(a, "back")["node"] == "hosta", 30, "the ownership back on hosta")
    with a.client() as c:
        assert c.call("cluster.status")["conflicts"] == []
        assert c.call("op.get", op="op-interrupted")["state"] == "failed"
    assert a.domstate("back") == "running"
    retire(a, "back")


def test_a_stopped_vm_moves_offline_with_its_ownership(
    cluster_nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """A stopped VM's offline move takes the lock and moves the name's ownership, asked
    through the node that does not own it; a move libvirt refuses keeps both at home."""
    a, b = cluster_nodes.a, cluster_nodes.b
    with a.client() as c:
        c.call("vm.create", **guest_images.vm("cold", 64, "", start=False))
    wait_until(lambda: owner(b, "cold")["node"] == "hosta", 30, "hosta to own cold")
    b.host.sh(f"touch {REFUSE_FLAG}")  # hostb's libvirt refuses (its QEMU hook)
    try:
        with b.client() as c:  # forwarded to the owner
            op_id = c.call("vm.migrate", name="cold", destination="hostb")["op"]
        doc = ended(a, op_id)
    finally:
        b.host.sh(f"rm -f {REFUSE_FLAG}")
    assert doc["state"] == "failed" and "hook refuses" in doc["error"]["message"], doc
    for node in (a, b):
        held = owner(node, "cold")
        assert held["node"] == "hosta" and "migration" not in held, held
    assert a.domstate("cold") == "shut off" and "cold" not in b.domains()

    with b.client() as c:
        op_id = c.call("vm.migrate", name="cold", destination="hostb")["op"]
    doc = ended(a, op_id)
    assert doc["state"] == "succeeded" and doc["result"]["offline"] is True, (doc, logs(a, b))
    for node in (a, b):
        held = owner(node, "cold")
        assert held["node"] == "hostb" and "migration" not in held, held
    assert b.domstate("cold") == "shut off" and "cold" not in a.domains()
    assert "cold" in b.records() and "cold" not in a.records()
    with a.client() as c:  # answered by its owner now
        assert c.call("vm.get", name="cold")["state"] == "stopped"
        assert c.call("cluster.status")["conflicts"] == []
    retire(b, "cold")


def test_a_drained_node_is_empty_cordoned_and_takes_no_vm_until_uncordoned(
    cluster_nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """``novacron node drain`` with no destination: the cluster places each VM (the
    other node: the drained one is cordoned first); a running guest moves live and
    intact, a stopped VM offline, ownership follows. The cordoned node then takes no
    new VM and no migration, until uncordoned."""
    a, b = cluster_nodes.a, cluster_nodes.b
    boot(a, "busy", guest_images)
    with a.client() as c:
        c.call("vm.create", **guest_images.vm("idle", 64, "", start=False))
    wait_until(lambda: owner(b, "idle")["node"] == "hosta", 30, "hosta to own idle")
    done = cli(a, "--json", "node", "drain", "--reason", "firmware")
    assert done.returncode == 0, (done.stdout, done.stderr, logs(a, b))
    doc = json.loads(done.stdout)
    assert doc["kind"] == "drain" and doc["state"] == "succeeded", doc
    result = doc["result"]
    assert sorted(m["vm"] for m in result["moved"]) == ["busy", "idle"], result
    assert result["failed"] == [] and result["kept"] == [] and result["left"] == []
    assert {m["destination"] for m in result["moved"]} == {b.address}
    assert [m["offline"] for m in sorted(result["moved"], key=lambda m: m["vm"])] == [
        False,
        True,
    ]
    only_on("busy", b, a)
    assert b.domstate("idle") == "shut off" and "idle" not in a.domains()
    assert "idle" in b.records() and "idle" not in a.records()
    for vm in ("busy", "idle"):
        assert owner(a, vm)["node"] == "hostb"
    intact_on(b, "busy")

    # cordoned: the cluster shows it, places nothing there, and hosta refuses VMs
    wait_until(
        lambda: any(n["node"] == "hosta" and n.get("cordon") for n in nodes_of(b)),
        30,
        "hosta's registration to show its cordon",
    )
    with b.client() as c:
        assert c.call("cluster.place", vcpus=1, memory_mib=64)["node"] == "hostb"
    with a.client() as c:
        assert c.call("node.info")["cordon"]["reason"] == "firmware"
    with b.client() as c:
        op_id = c.call("vm.migrate", name="busy", destination="hosta")["op"]
    back = ended(b, op_id)
    assert back["state"] == "failed" and "cordoned" in back["error"]["message"], back
    only_on("busy", b, a)
    assert owner(b, "busy")["node"] == "hostb"

    with a.client() as c:
        assert c.call("node.uncordon")["was_cordoned"] is True
    wait_until(
        lambda: any(n["node"] == "hosta" and not n.get("cordon") for n in nodes_of(b)),
        30,
        "hosta's registration without a cordon",
    )
    intact_on(b, "busy")
    retire(b, "busy")
    retire(b, "idle")


def nodes_of(node: Node) -> list[dict[str, Any]]:
    with node.client() as c:
        found: list[dict[str, Any]] = c.call("cluster.nodes")
    return found


def test_a_console_opened_through_another_node_is_relayed(
    cluster_nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    """A client of host B types into (and another watches) the console of a VM host A
    runs: B relays it from A, tells both when A's daemon goes away (the VM runs on) and,
    once A's daemon is back, relays it again until the VM stops."""
    a, b = cluster_nodes.a, cluster_nodes.b
    boot(a, "relayed", guest_images, "novacron.shell")
    wait_until(lambda: owner(b, "relayed")["node"] == "hosta", 30, "hosta to own relayed")
    with b.client() as typing, b.client() as watching:
        console = Console(typing, "relayed")
        watcher = Console(watching, "relayed", watch=True)
        with pytest.raises(errors.Conflict, match="read-only"):  # (hosta's refusal)
            watching.call("vm.console.write", console=watcher.number, data=b"reboot\r")
        typing.call("vm.console.write", console=console.number, data=b"echo RELAY-$((6*6))\r")
        console.wait_for(b"RELAY-36")
        watcher.wait_for(b"RELAY-36")
        with a.client() as c:  # hosta holds them for hostb's connections
            assert c.call("node.info")["daemon"]["consoles"]["sessions"] == 2
        a.daemon.stop()  # hosta's daemon goes away: hostb tells both, the VM runs on
        for ended in (console.wait_closed(), watcher.wait_closed()):
            assert ended == {
                "console": ended["console"],
                "vm": "relayed",
                "reason": "error",
                "message": "the connection to the VM's node ended",
            }
        assert a.domstate("relayed") == "running"
        a.restart()
        wait_until(lambda: "hosta" in members(b), 60, "hosta registered again")
        console = Console(typing, "relayed")  # and once it is back, a console is relayed again
        typing.call("vm.console.write", console=console.number, data=b"echo AGAIN-$((5*5))\r")
        console.wait_for(b"AGAIN-25")
        # a relayed watcher may begin with the log's end (hosta reads it): the answer
        # printed and logged before it opened (virtlogd writes the log a moment after the
        # output reaches live consoles, later still on a busy machine)
        wait_until(lambda: console_has(a, "relayed", "AGAIN-25"), 60, "the answer in hosta's log")
        watcher = Console(watching, "relayed", watch=True, scrollback=2048)
        watcher.wait_for(b"AGAIN-25")
        assert b"AGAIN-25" in watcher.chunks[0] and len(watcher.chunks[0]) <= 2048
        with a.client() as c:
            c.call("vm.stop", name="relayed")
        for ended in (console.wait_closed(), watcher.wait_closed()):
            assert ended["reason"] in ("ended", "error") and ended["vm"] == "relayed"
        with pytest.raises(errors.NotFound):  # gone from hostb's connection too
            typing.call("vm.console.write", console=console.number, data=b"x")
        with pytest.raises(errors.Conflict, match="not running"):
            typing.call("vm.console.open", name="relayed")
    retire(a, "relayed")
