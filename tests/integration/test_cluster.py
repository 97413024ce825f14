"""The cluster tier against a real three-member etcd cluster (mutual TLS, certificates
from NovaCron's CA) and real daemons (libvirt's test driver) registered in it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from novacron import errors
from novacron.client import SyncClient
from tests.daemon_harness import Daemon
from tests.etcd_harness import EtcdCluster
from tests.pki_harness import Pki, free_port, migration_listen

TTL_S = 3


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


@pytest.fixture
def etcd(tmp_path: Path, pki: Pki) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster.start(tmp_path / "etcd", pki.ca)
    yield cluster
    cluster.stop()


def node_daemon(tmp_path: Path, pki: Pki, etcd: EtcdCluster, name: str, *more: str) -> Daemon:
    certs = pki.root / "certs"
    if not (certs / f"{name}.crt").exists():
        pki.ca.issue(name, "node", certs, node=True, addresses=("127.0.0.1",))
    return Daemon(
        socket=tmp_path / name / "novacrond.sock",
        state_dir=tmp_path / name / "state",
        log=tmp_path / name / "novacrond.log",
        extra=[
            *("--node-name", name),
            *("--tls-listen", f"127.0.0.1:{free_port()}", *migration_listen()),
            *("--tls-cert", str(certs / f"{name}.crt"), "--tls-key", str(certs / f"{name}.key")),
            *("--tls-ca", str(pki.ca.dir / "ca.crt")),
            *("--cluster-etcd-endpoints", etcd.endpoints),
            *("--cluster-lease-ttl-s", str(TTL_S)),
            *("--cluster-timeout-s", "1"),
            *("--cluster-labels", f"zone=z-{name}"),
            *more,
        ],
    )


@pytest.fixture
def pair(tmp_path: Path, pki: Pki, etcd: EtcdCluster) -> Iterator[tuple[Daemon, Daemon]]:
    one = node_daemon(tmp_path, pki, etcd, "node1").start()
    try:
        two = node_daemon(tmp_path, pki, etcd, "node2").start()
    except BaseException:
        one.stop()
        raise
    yield one, two
    stop_clean(one, two)


def stop_clean(*daemons: Daemon) -> None:
    """Stops the daemons; none may have logged a traceback."""
    for d in daemons:
        d.stop()
        assert "Traceback" not in d.log_text(), d.log_text()


def eventually(
    check: Callable[[], Any], what: str, timeout: float = 15, logs: tuple[Daemon, ...] = ()
) -> Any:
    """``check()`` until truthy; on timeout the assertion carries the last answer and the
    cluster lines of the ``logs`` daemons' logs."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except errors.Unavailable as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    tails = ""
    for d in logs:
        lines = [line for line in d.log_text().splitlines() if "cluster." in line or "etcd" in line]
        tails += f"\n--- {d.log} (cluster and etcd lines) ---\n" + "\n".join(lines[-40:])
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}){tails}")


def states(d: Daemon) -> dict[str, str]:
    with d.client() as c:
        return {n["node"]: n["state"] for n in c.call("cluster.nodes")}


def vm_counts(d: Daemon) -> dict[str, int]:
    with d.client() as c:
        return {n["node"]: n["vms"] for n in c.call("cluster.nodes")}


def owners(d: Daemon) -> dict[str, str]:
    with d.client() as c:
        return {f"{v['tenant']}/{v['name']}": v["node"] for v in c.call("cluster.vms")}


def test_nodes_register_with_their_capacity(pair: tuple[Daemon, Daemon]) -> None:
    one, two = pair
    eventually(lambda: states(one) == {"node1": "up", "node2": "up"}, "both nodes up")
    with two.client() as c:
        nodes = {n["node"]: n for n in c.call("cluster.nodes")}
    assert nodes["node1"]["labels"] == {"zone": "z-node1"}
    assert nodes["node1"]["address"].startswith("127.0.0.1:")
    assert nodes["node1"]["capacity"]["nodes"], nodes["node1"]["capacity"]
    with one.client() as c:
        c.call("vm.create", name="v1", memory_mib=64)
    eventually(lambda: vm_counts(two)["node1"] == 1, "the registration to show the new VM")


def test_a_name_is_claimed_cluster_wide_from_the_first_call(
    tmp_path: Path, pki: Pki, etcd: EtcdCluster
) -> None:
    """A call that comes in while the node's first registration is still under way
    waits for it, and so still claims the name cluster-wide (etcd is held stopped for
    a moment, so node2 is ready well before it is registered)."""
    one = node_daemon(tmp_path, pki, etcd, "node1").start()
    two = node_daemon(tmp_path, pki, etcd, "node2")
    try:
        with one.client() as c:
            c.call("vm.create", name="early", memory_mib=64)
        assert owners(one) == {"default/early": "node1"}
        with etcd.paused():
            two.start()
            outcome: list[BaseException | None] = []

            def create() -> None:
                try:
                    with two.client() as c:
                        c.call("vm.create", name="early", memory_mib=64)
                    outcome.append(None)
                except errors.NovaCronError as exc:
                    outcome.append(exc)

            caller = threading.Thread(target=create)
            caller.start()
            time.sleep(0.3)  # the call is in, the registration is stuck
        caller.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], errors.AlreadyExists), outcome
        assert owners(two) == {"default/early": "node1"}
        with two.client() as c:
            assert c.call("vm.list") == []
    finally:
        stop_clean(one, two)


def test_a_name_is_claimed_once_cluster_wide(pair: tuple[Daemon, Daemon]) -> None:
    one, two = pair
    eventually(lambda: len(states(one)) == 2, "both nodes registered")
    for round_ in range(20):
        name = f"race{round_}"
        outcome: dict[str, str] = {}

        def create(
            d: Daemon, node: str, name: str = name, outcome: dict[str, str] = outcome
        ) -> None:
            with d.client() as c:
                try:
                    c.call("vm.create", name=name, memory_mib=64)
                    outcome[node] = "ok"
                except errors.AlreadyExists:
                    outcome[node] = "already_exists"

        threads = [
            threading.Thread(target=create, args=(one, "node1")),
            threading.Thread(target=create, args=(two, "node2")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcome.values()) == ["already_exists", "ok"], outcome
        winner = next(n for n, o in outcome.items() if o == "ok")
        assert owners(one)[f"default/{name}"] == winner
        loser = two if winner == "node1" else one
        with loser.client() as c:
            assert name not in [v["name"] for v in c.call("vm.list")]
    # a delete gives the name back
    with one.client() as c:
        mine = [v["name"] for v in c.call("vm.list")]
        c.call("vm.delete", name=mine[0])
    assert f"default/{mine[0]}" not in owners(two)
    with two.client() as c:
        c.call("vm.create", name=mine[0], memory_mib=64)
    assert owners(one)[f"default/{mine[0]}"] == "node2"


def test_a_killed_node_is_reported_down_and_comes_back(
    tmp_path: Path, pki: Pki, etcd: EtcdCluster, pair: tuple[Daemon, Daemon]
) -> None:
    one, two = pair
    eventually(lambda: len(states(one)) == 2, "both nodes registered")
    with two.client() as c:
        c.call("vm.create", name="kept", memory_mib=64)
    with one.client(timeout=30) as watcher:
        stream = watcher.events(["cluster.node"])
        killed = time.monotonic()
        two.signal(signal.SIGKILL)
        two.wait()
        event = next(stream)
        took = time.monotonic() - killed
    assert event == {"topic": "cluster.node", "node": "node2", "state": "down"}
    assert took <= TTL_S + 2, took
    assert states(one)["node2"] == "down"
    two.start()
    eventually(lambda: states(one).get("node2") == "up", "node2 back up")
    assert owners(one)["default/kept"] == "node2"


def test_etcd_losing_members(pair: tuple[Daemon, Daemon], etcd: EtcdCluster) -> None:
    one, two = pair
    eventually(lambda: len(states(one)) == 2, "both nodes registered")
    etcd.kill(etcd.members[0])
    # If the killed member led, the other two elect a new leader first. A node whose
    # keepalive fell in the election is "unreachable" until its next attempt (0.5 s
    # later) and defers claims meanwhile, by design; the claim must land all the same.
    etcd.wait_healthy()
    eventually(lambda: states(one) == {"node1": "up", "node2": "up"}, "one member down: fine")
    with one.client() as c:
        c.call("vm.create", name="during1", memory_mib=64)
    eventually(lambda: owners(two).get("default/during1") == "node1", "the claim", logs=(one, two))

    etcd.kill(etcd.members[1])  # no quorum
    with one.client() as c:
        started = time.monotonic()
        with pytest.raises(errors.Unavailable):
            c.call("cluster.nodes")
        assert time.monotonic() - started < 10  # fails fast
        # local work goes on; the claim is made when etcd is back
        c.call("vm.create", name="during2", memory_mib=64)
        assert "during2" in [v["name"] for v in c.call("vm.list")]
    for m in etcd.members[:2]:
        etcd.restart(m)
    etcd.wait_healthy()
    eventually(
        lambda: owners(two).get("default/during2") == "node1", "the deferred claim", logs=(one, two)
    )
    eventually(lambda: states(two) == {"node1": "up", "node2": "up"}, "both registered again")


def test_cli_and_a_quiet_cluster_writes_nothing(pair: tuple[Daemon, Daemon]) -> None:
    one, two = pair
    eventually(lambda: len(states(one)) == 2, "both nodes registered")
    with one.client() as c:
        c.call("vm.create", name="web1", memory_mib=64, tenant="acme")
    env = {**os.environ, "COLUMNS": "200"}
    run = [sys.executable, "-m", "novacron.cli.main", "--socket", str(two.socket)]
    nodes = subprocess.run([*run, "cluster", "nodes"], capture_output=True, text=True, env=env)
    assert nodes.returncode == 0, nodes.stderr
    assert "node1" in nodes.stdout and "zone=z-node2" in nodes.stdout and "up" in nodes.stdout
    vms = subprocess.run(
        [*run, "--json", "cluster", "vms", "--tenant", "acme"], capture_output=True, text=True
    )
    assert json.loads(vms.stdout) == [{"tenant": "acme", "name": "web1", "node": "node1"}]
    # nothing changes: leases are kept alive, but no key is written (the revision stands)
    eventually(lambda: vm_counts(two)["node1"] == 1, "the VM count published")
    before = revision(one)
    time.sleep(2 * TTL_S)
    assert revision(one) == before


def revision(d: Daemon) -> int:
    with d.client() as c:
        return int(c.call("cluster.status")["revision"])


def tls_address(d: Daemon) -> str:
    return d.extra[d.extra.index("--tls-listen") + 1]


def test_calls_about_a_vm_of_another_node_are_forwarded(
    pki: Pki, pair: tuple[Daemon, Daemon]
) -> None:
    one, two = pair
    eventually(lambda: len(states(one)) == 2, "both nodes registered")
    with one.client() as c:
        c.call("vm.create", name="shop", memory_mib=64, tenant="acme")
    users = {
        "viewer-acme": ("viewer", ("acme",)),
        "viewer-globex": ("viewer", ("globex",)),
        "op-acme": ("operator", ("acme",)),
    }
    files = {u: pki.issue(u, role, tenants) for u, (role, tenants) in users.items()}

    def via_two(user: str) -> SyncClient:
        return SyncClient.tls(tls_address(two), files[user], timeout=30, server_name="node2")

    with via_two("viewer-acme") as c:
        got = c.call("vm.get", name="shop")
        assert (got["name"], got["tenant"]) == ("shop", "acme")
        with pytest.raises(errors.PermissionDenied):
            c.call("vm.start", name="shop")  # re-checked on node1: a viewer may not
        with pytest.raises(errors.PermissionDenied):
            c.call("vm.console.open", name="shop")  # (to type: nor here)
        with pytest.raises(errors.Conflict, match="not running"):
            c.call("vm.console.watch", name="shop")  # (node1's answer: a viewer may watch)
    with via_two("viewer-globex") as c:
        with pytest.raises(errors.NotFound):
            c.call("vm.get", name="shop")  # another tenant's VM does not exist for it
        with pytest.raises(errors.NotFound):
            c.call("vm.console.watch", name="shop")  # nor its console
    with via_two("op-acme") as c:
        copy = c.call("vm.clone", name="shop", new_name="shop-copy")  # made beside its source
        assert (copy["tenant"], copy["state"]) == ("acme", "stopped")
        assert owners(two)["acme/shop-copy"] == "node1"
        assert c.call("vm.start", name="shop")["state"] == "running"
        counted = c.call("vm.stats", name="shop")  # read on node1, which runs it
        assert (counted["tenant"], counted["state"]) == ("acme", "running")
        assert counted["cpu"]["time_ns"] > 0
        assert c.call("vm.stats.list") == []  # node2's own VMs only
        with pytest.raises(errors.Conflict):
            c.call("vm.resume", name="shop")  # node1's own refusal comes back as is
        with pytest.raises(errors.Conflict, match="no console log"):
            c.call("vm.console.log", name="shop")  # (node1's answer: its VM has no serial port)
        # consoles are relayed from the VM's node (whose test-driver VM has none)
        with pytest.raises(errors.Conflict, match="no interactive console"):
            c.call("vm.console.open", name="shop")
        with pytest.raises(errors.Conflict, match="no interactive console"):
            c.call("vm.console.watch", name="shop", force=True)
        with pytest.raises(errors.NotFound):
            c.call("vm.console.write", console=1, data=b"x")  # (none was opened)
        with pytest.raises(errors.NotFound):
            c.call("vm.get", name="nowhere")
        with pytest.raises(errors.PermissionDenied):  # only nodes forward
            c.call("cluster.forward", call="vm.get", params={"name": "shop"}, identity={})
    with one.client() as c:
        assert c.call("vm.get", name="shop")["state"] == "running"
        audit = c.call("audit.tail", limit=20)
        started = [e for e in audit if e["method"] == "vm.start" and e["outcome"] == "ok"]
        assert started[-1]["principal"] == "forwarded:op-acme@node2"
    with two.client() as c:  # the relaying node audits the caller's console calls too
        tail = c.call("audit.tail", limit=50)
        opens = [e for e in tail if e["method"] == "vm.console.open"]
        assert [(e["principal"], e["tenant"], e["outcome"]) for e in opens] == [
            ("tls:viewer-acme", None, "permission_denied"),  # (refused before any lookup)
            ("tls:op-acme", "acme", "conflict"),  # (node1's refusal, relayed)
        ]


def test_stats_of_every_node_as_the_caller(pki: Pki, pair: tuple[Daemon, Daemon]) -> None:
    one, two = pair
    eventually(lambda: len(states(one)) == 2, "both nodes registered")
    with one.client() as c:
        c.call("vm.create", name="st1", memory_mib=64, tenant="acme", start=True)
    with two.client() as c:
        c.call("vm.create", name="st2", memory_mib=64, tenant="globex")

    def seen(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
        return sorted((r["node"], r["name"], r["tenant"], r["state"]) for r in doc["vms"])

    with two.client() as c:
        doc = c.call("cluster.stats")
        assert seen(doc) == [
            ("node1", "st1", "acme", "running"),
            ("node2", "st2", "globex", "stopped"),
        ]
        assert doc["nodes"] == [{"node": "node1", "vms": 1}, {"node": "node2", "vms": 1}]
        [running] = [r for r in doc["vms"] if r["name"] == "st1"]
        assert running["cpu"]["time_ns"] > 0  # vm.stats.list's rows, read on node1
        assert seen(c.call("cluster.stats", tenant="globex")) == [
            ("node2", "st2", "globex", "stopped")
        ]
    files = pki.issue("viewer-acme", "viewer", ("acme",))
    with SyncClient.tls(tls_address(two), files, timeout=30, server_name="node2") as c:
        assert seen(c.call("cluster.stats")) == [("node1", "st1", "acme", "running")]
        with pytest.raises(errors.PermissionDenied):  # only nodes forward, whatever call
            c.call("cluster.forward", call="vm.stats.list", params={}, identity={})
    env = {**os.environ, "COLUMNS": "200"}
    run = [sys.executable, "-m", "novacron.cli.main", "--socket", str(one.socket)]
    table = subprocess.run(
        [*run, "vm", "stats", "--cluster", "--interval", "0.5"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert table.returncode == 0, table.stderr
    cells = [[c.strip() for c in line.split("│")] for line in table.stdout.splitlines()]
    assert [c.strip() for c in table.stdout.splitlines()[0].split("┃")][:3] == [
        "NODE",
        "NAME",
        "TENANT",
    ]
    rows = {tuple(c[:4]): c for c in cells if len(c) > 4}
    assert set(rows) == {("node1", "st1", "acme", "running"), ("node2", "st2", "globex", "stopped")}
    assert re.fullmatch(r"\d+\.\d", rows[("node1", "st1", "acme", "running")][4])  # CPU %
    metrics = subprocess.run([*run, "metrics", "--cluster"], capture_output=True, text=True)
    assert metrics.returncode == 0, metrics.stderr
    lines = metrics.stdout.split("\n")
    assert 'novacron_vm_running{node="node1",tenant="acme",vm="st1"} 1' in lines
    assert 'novacron_vm_running{node="node2",tenant="globex",vm="st2"} 0' in lines
    assert 'novacron_cluster_node_answered{node="node2"} 1' in lines
    assert 'novacron_node_cordoned{node="node1"} 0' in lines
    # a node that does not answer (killed, its registration not yet expired) is named
    two.signal(signal.SIGKILL)
    two.wait()
    with one.client() as c:
        doc = c.call("cluster.stats")
    assert seen(doc) == [("node1", "st1", "acme", "running")]
    assert doc["nodes"][0] == {"node": "node1", "vms": 1}
    assert doc["nodes"][1]["node"] == "node2"
    assert doc["nodes"][1]["error"]["code"] == "unavailable"
    shown = subprocess.run(
        [*run, "--json", "vm", "stats", "--cluster", "--interval", "0"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert [n["node"] for n in json.loads(shown.stdout)["nodes"]] in (["node1", "node2"], ["node1"])
    metrics = subprocess.run([*run, "metrics", "--cluster"], capture_output=True, text=True)
    lines = metrics.stdout.split("\n")
    assert 'novacron_cluster_node_answered{node="node1"} 1' in lines
    assert not any('node="node2",tenant' in line for line in lines)  # no rows of node2
    two.start()


def placeable_mib(d: Daemon, node: str) -> int:
    with d.client() as c:
        doc = {n["node"]: n for n in c.call("cluster.nodes")}[node]
    return sum(n["memory_placeable_mib"] for n in doc["capacity"]["nodes"])


def test_create_on_the_roomiest_node(pair: tuple[Daemon, Daemon]) -> None:
    one, two = pair
    eventually(lambda: len(states(one)) == 2, "both nodes registered")
    room = placeable_mib(one, "node1")
    assert room == placeable_mib(one, "node2") > 1024
    # node1 gets a big VM: node2 is now the roomier one
    with one.client() as c:
        c.call("vm.create", name="big", memory_mib=room // 2)
    eventually(lambda: placeable_mib(two, "node1") < room, "node1's smaller room published")
    with one.client() as c:
        assert c.call("cluster.place", memory_mib=256)["node"] == "node2"
        placed = c.call("vm.create", name="auto1", memory_mib=256, node="auto")
        assert placed["name"] == "auto1"
        explicit = c.call("vm.create", name="there", memory_mib=64, node="node2")
        assert explicit["name"] == "there"
        with pytest.raises(errors.InsufficientResources, match="no node of the cluster"):
            c.call("vm.create", name="huge", memory_mib=room * 4, node="auto")
        with pytest.raises(errors.NotFound):
            c.call("vm.create", name="lost", memory_mib=64, node="node9")
    found = owners(one)
    assert (found["default/auto1"], found["default/there"], found["default/big"]) == (
        "node2",
        "node2",
        "node1",
    )
    with two.client() as c:
        assert {"auto1", "there"} <= {v["name"] for v in c.call("vm.list")}
    assert "default/huge" not in found and "default/lost" not in found


def test_vms_with_new_volumes_pass_by_a_node_short_of_storage(
    tmp_path: Path, pki: Pki, etcd: EtcdCluster
) -> None:
    """node2 keeps more free than its pool has (libvirt's test driver: a made-up 100
    GiB): it is short, says so in its registration, and gets no VM that makes volumes,
    though it is the roomier node."""
    one = node_daemon(tmp_path, pki, etcd, "node1").start()
    two = node_daemon(tmp_path, pki, etcd, "node2", "--storage-reserve-mib", "1000000")
    try:
        two.start()

        def shorts() -> dict[str, Any]:
            with one.client() as c:
                return {
                    n["node"]: (n.get("storage") or {}).get("short")
                    for n in c.call("cluster.nodes")
                }

        eventually(lambda: shorts() == {"node1": False, "node2": True}, "node2 short", logs=(two,))
        assert "event=storage.short pool=" in two.log_text()
        room = placeable_mib(one, "node1")
        with one.client() as c:
            c.call("vm.create", name="big", memory_mib=room // 2)
        eventually(lambda: placeable_mib(two, "node1") < room, "node1's smaller room published")
        with one.client() as c:
            assert c.call("cluster.place", memory_mib=256)["node"] == "node2"
            assert c.call("cluster.place", memory_mib=256, new_volumes=True)["node"] == "node1"
            c.call("vm.create", name="vol1", memory_mib=256, disks=[{"size_gib": 1}], node="auto")
            c.call("vm.create", name="novol", memory_mib=256, node="auto")
            # named, node2 refuses it itself
            with pytest.raises(errors.InsufficientResources, match="storage_reserve_mib"):
                c.call(
                    "vm.create", name="vol2", memory_mib=64, disks=[{"size_gib": 1}], node="node2"
                )
        found = owners(one)
        assert (found["default/vol1"], found["default/novol"]) == ("node1", "node2")
        assert "default/vol2" not in found
    finally:
        stop_clean(one, two)
