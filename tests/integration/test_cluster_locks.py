"""Migration locks and the switch-over transaction against a real three-member etcd
cluster (mutual TLS): the cluster services are NovaCron's own, run in this process
without the rest of a daemon (a lock only needs the node's lease and etcd)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from novacron import errors
from novacron.client import TlsFiles
from novacron.cluster.etcd import EtcdClient, WatchCompacted, b64
from novacron.cluster.locks import MigrationLock, MigrationLocks
from novacron.cluster.service import NODES, ClusterService, lock_key, vm_key
from novacron.config import Config
from novacron.eventbus import EventBus
from novacron.vm.service import VmService
from tests.etcd_harness import EtcdCluster
from tests.pki_harness import Pki


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    pki = Pki.create(tmp_path / "pki")
    cluster = EtcdCluster.start(tmp_path / "etcd", pki.ca)
    yield cluster
    cluster.stop()


def client(etcd: EtcdCluster) -> EtcdClient:
    cert, key, ca = etcd.client_files()
    context = TlsFiles(Path(cert), Path(key), Path(ca)).context()
    return EtcdClient(etcd.endpoints.split(","), context, timeout_s=2)


async def node(etcd: EtcdCluster, name: str) -> ClusterService:
    """A registered node: its lease and its record, as the membership task makes them."""
    svc = ClusterService(Config(node_name=name), cast(VmService, None), EventBus(), client(etcd))
    svc.lease = await svc.etcd.grant(10)
    await svc.etcd.put(NODES + name.encode(), json.dumps({"node": name}).encode(), svc.lease)
    svc.connected = True
    return svc


@pytest.fixture
async def three(etcd: EtcdCluster) -> AsyncIterator[list[ClusterService]]:
    nodes = [await node(etcd, n) for n in ("node1", "node2", "node3")]
    yield nodes
    for n in nodes:
        await n.etcd.aclose()


async def owner(svc: ClusterService, name: str) -> str | None:
    held = await svc.etcd.get(vm_key("acme", name))
    return held.value.decode() if held is not None else None


async def test_one_migration_of_a_vm_at_a_time(three: list[ClusterService]) -> None:
    one, two, _ = three
    await one.claim("acme", "web")
    locks = MigrationLocks(one)
    for round_ in range(20):  # two migrations started at once: one lock, every time
        won: list[str] = []
        refused: list[errors.NovaCronError] = []

        async def migrate(op: str) -> None:
            try:
                lock = await locks.acquire("acme", "web", op, "node2:7443")
            except errors.Conflict as exc:
                refused.append(exc)  # noqa: B023
            else:
                won.append(op)  # noqa: B023
                await locks.end(lock, moved=False)

        async with trio.open_nursery() as n:
            n.start_soon(migrate, f"op-{round_}-a")
            n.start_soon(migrate, f"op-{round_}-b")
        # the loser either met the lock or came after the winner gave it back
        assert len(won) + len(refused) == 2 and won, (won, refused)
        for exc in refused:
            assert exc.details["node"] == "node1" and exc.details["op"] in won
    # a node that does not own the vm cannot lock it
    with pytest.raises(errors.Conflict, match="owned by node 'node1'"):
        await MigrationLocks(two).acquire("acme", "web", "op-x", "node3:7443")
    assert await owner(one, "web") == "node1"


async def test_the_switch_over_moves_ownership_and_the_lock_in_one_step(
    three: list[ClusterService],
) -> None:
    one, two, _ = three
    await one.claim("acme", "db")
    locks = MigrationLocks(one)
    lock = await locks.acquire("acme", "db", "op-1", "node2:7443")
    held = {
        f"{v['tenant']}/{v['name']}": v["migration"]
        for v in await one.list_vms(locks=True)
        if "migration" in v
    }
    assert held["acme/db"]["op"] == "op-1" and held["acme/db"]["node"] == "node1"
    with pytest.raises(errors.Conflict, match="being migrated by 'node1'"):
        await locks.acquire("acme", "db", "op-2", "node3:7443")
    # the lock lives on the source's lease
    lock_kv = await one.etcd.get(lock_key("acme", "db"))
    assert lock_kv is not None and lock_kv.lease == one.lease
    lock.destination = "node2"
    await locks.commit(lock)
    assert await owner(one, "db") == "node2"
    assert await one.etcd.get(lock_key("acme", "db")) is None
    await locks.end(lock, moved=True)
    assert await owner(one, "db") == "node2"
    # the new owner can migrate it on; the old one cannot
    with pytest.raises(errors.Conflict):
        await locks.acquire("acme", "db", "op-3", "node3:7443")
    await MigrationLocks(two).acquire("acme", "db", "op-4", "node1:7443")


async def test_a_lost_lock_refuses_the_switch_over(three: list[ClusterService]) -> None:
    one, _, _ = three
    await one.claim("acme", "app")
    locks = MigrationLocks(one)
    lock = await locks.acquire("acme", "app", "op-1", "node2:7443")
    lock.destination = "node2"
    assert await locks.held(lock)
    await one.etcd.call("/v3/kv/deleterange", {"key": b64(lock_key("acme", "app"))})
    assert not await locks.held(lock)  # what a running migration checks
    with pytest.raises(errors.MigrationFailed, match="lock was lost"):
        await locks.commit(lock)
    assert await owner(one, "app") == "node1"
    await locks.end(lock, moved=False)
    assert await owner(one, "app") == "node1"
    # a lock taken again, but the destination is not in the cluster
    lock = await locks.acquire("acme", "app", "op-2", "node9:7443")
    lock.destination = "node9"
    stale = MigrationLock("acme", "app", b'{"op": "op-1"}')  # an earlier migration's
    assert await locks.held(lock) and not await locks.held(stale)
    endpoints, one.etcd.endpoints = one.etcd.endpoints, ["https://127.0.0.1:9"]  # etcd away
    try:
        assert await locks.held(lock)
    finally:
        one.etcd.endpoints = endpoints
    with pytest.raises(errors.MigrationFailed, match="'node9' is not registered"):
        await locks.commit(lock)
    await locks.end(lock, moved=False)
    assert await one.etcd.get(lock_key("acme", "app")) is None


async def test_a_source_that_dies_loses_its_lock(three: list[ClusterService]) -> None:
    one, _, _ = three
    await one.claim("acme", "batch")
    await MigrationLocks(one).acquire("acme", "batch", "op-1", "node2:7443")
    await one.etcd.revoke(one.lease)  # what a lease expiry does, without the wait
    assert await one.etcd.get(lock_key("acme", "batch")) is None
    assert await owner(one, "batch") == "node1"  # ownership is not bound to the lease


async def test_a_failed_migration_after_the_commit_gives_ownership_back(
    three: list[ClusterService],
) -> None:
    """libvirt failed after the switch-over's transaction (the destination could not
    load the device state): the VM runs on the source, and so does its ownership."""
    one, _, _ = three
    await one.claim("acme", "api")
    locks = MigrationLocks(one)
    lock = await locks.acquire("acme", "api", "op-1", "node2:7443")
    lock.destination = "node2"
    await locks.commit(lock)
    assert await owner(one, "api") == "node2"
    await locks.end(lock, moved=False)
    assert await owner(one, "api") == "node1"
    # and with etcd away at that moment, the next reclaim does it
    lock = await locks.acquire("acme", "api", "op-2", "node2:7443")
    lock.destination = "node2"
    await locks.commit(lock)
    one.connected = False
    await locks.end(lock, moved=False)
    assert await owner(one, "api") == "node2" and one._transfers == {"acme/api": "node2"}


async def test_cluster_vms_shows_the_lock(three: list[ClusterService]) -> None:
    one, _, _ = three
    await one.claim("acme", "shown")
    await MigrationLocks(one).acquire("acme", "shown", "op-9", "node2:7443")
    listed: dict[str, Any] = {v["name"]: v for v in await one.list_vms(locks=True)}
    assert listed["shown"]["migration"]["op"] == "op-9"
    assert "migration" not in {v["name"]: v for v in await one.list_vms()}["shown"]


async def test_a_watch_from_a_compacted_revision_is_told(etcd: EtcdCluster) -> None:
    c = client(etcd)
    first = await c.put(b"/novacron/v1/nodes/x", b"1")
    for i in range(3):
        last = await c.put(b"/novacron/v1/nodes/x", str(i).encode())
    await c.call("/v3/kv/compaction", {"revision": str(last), "physical": True})
    with trio.fail_after(10), pytest.raises(WatchCompacted) as caught:
        async for _ in c.watch_prefix(b"/novacron/v1/nodes/", first):
            pass
    assert caught.value.compact_revision == last
    await c.aclose()


async def test_after_a_compaction_the_nodes_are_read_again(three: list[ClusterService]) -> None:
    """What a resumed watch missed is found by reading the registrations again: a node
    that vanished meanwhile is reported down, one that came is reported up."""
    one, _, _ = three
    one.nodes = {"node1": {"node": "node1"}, "ghost": {"node": "ghost"}}
    await one._read_nodes(announce=True)
    assert set(one.nodes) == {"node1", "node2", "node3"}
    assert "ghost" in one.down and "node2" not in one.down
