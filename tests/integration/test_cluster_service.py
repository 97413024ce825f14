"""ClusterService in-process against a real one-member etcd (mutual TLS) and a VmService
on libvirt's test driver: the ordering of ownership changes around (re)joining."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from novacron.cluster.etcd import EtcdClient
from novacron.cluster.service import ClusterService, vm_key
from novacron.config import dev_defaults
from novacron.daemon import etcd_context
from novacron.eventbus import EventBus
from novacron.state.db import StateStore
from novacron.vm.driver import Hypervisor
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec
from tests.etcd_harness import EtcdCluster
from tests.pki_harness import Pki

# Cancelling the service at the end of a test cuts its etcd calls wherever they are, and
# httpx/httpcore do not tidy up every such cut: httpcore 1.0.9 closes a connection whose
# TLS handshake fails with an Exception but not one cancelled mid-handshake (trio.Cancelled
# is a BaseException), and a request cut while sending leaves httpx's body generator
# unfinished. Both are released when collected, with a ResourceWarning; the fixture
# collects them while this filter holds.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    pki = Pki.create(tmp_path / "pki")
    cluster = EtcdCluster.start(tmp_path / "etcd", pki.ca, size=1)
    yield cluster
    cluster.stop()


@pytest.fixture
async def cluster(tmp_path: Path, etcd: EtcdCluster) -> AsyncIterator[ClusterService]:
    cert, key, ca = etcd.client_files()
    config = replace(
        dev_defaults(),
        state_dir=tmp_path / "state",
        storage_pool=f"pool-{tmp_path.name}",
        node_name="node1",
        tls_cert=cert,
        tls_key=key,
        tls_ca=ca,
        cluster_etcd_endpoints=etcd.endpoints,
        cluster_timeout_s=1.0,
        cluster_lease_ttl_s=3,
    )
    config.state_dir.mkdir()
    store = StateStore(config.state_dir / "state.db")
    hv = Hypervisor(config.hypervisor_uri)
    hv.ensure_pool(config.storage_pool, config.images_dir)
    vms = VmService(config, hv, store)
    vms.placement.load(hv.numa_nodes())
    client = EtcdClient(config.etcd_endpoints, etcd_context(config), config.cluster_timeout_s)
    service = ClusterService(config, vms, EventBus(), client)
    vms.ownership = service
    yield service
    await client.aclose()
    store.close()
    gc.collect()


async def test_a_claim_made_while_joining_waits_for_the_join(
    cluster: ClusterService, etcd: EtcdCluster
) -> None:
    async with trio.open_nursery() as nursery:
        with etcd.paused():  # the first registration hangs
            await nursery.start(cluster.run)
            connected_at_start = cluster.connected  # (mypy would keep the attribute narrowed)
            assert not connected_at_start
            with trio.move_on_after(0.3) as waited:
                await cluster.reachable()
            assert waited.cancelled_caught  # still joining: it waits
        await cluster.claim("default", "early")
        assert cluster.connected
        held = await cluster.etcd.get(vm_key("default", "early"))
        assert held is not None and held.value == b"node1"
        nursery.cancel_scope.cancel()


async def test_a_claim_made_with_etcd_down_is_deferred_after_one_attempt(
    cluster: ClusterService, etcd: EtcdCluster
) -> None:
    for m in etcd.members:
        etcd.kill(m)
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        with trio.fail_after(3 * cluster.config.cluster_timeout_s + 1):
            await cluster.claim("default", "lonely")  # deferred, not an error
        assert not cluster.connected
        assert cluster._deferred
        nursery.cancel_scope.cancel()


async def owner_of(cluster: ClusterService, name: str) -> bytes | None:
    held = await cluster.etcd.get(vm_key("default", name))
    return None if held is None else held.value


async def settles(cluster: ClusterService, name: str, owner: bytes | None) -> None:
    """Waits for the membership loop's next rounds to leave ``name`` owned by ``owner``."""
    with trio.fail_after(5 * cluster.config.cluster_lease_ttl_s):
        while await owner_of(cluster, name) != owner:  # noqa: ASYNC110 - polling etcd
            await trio.sleep(0.1)


async def test_reclaim_leaves_the_names_of_busy_vms_to_their_operation(
    cluster: ClusterService,
) -> None:
    """A name claimed by a create whose record is not written yet is not dropped by a
    reclaim running meanwhile, and a recorded VM being deleted is not claimed again;
    each is settled on a later round, once no operation holds it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        assert await cluster.reachable()
        async with cluster.vms.locked("fresh"):
            await cluster.claim("default", "fresh")  # the create's claim; no record yet
            await cluster._reclaim()
            assert await owner_of(cluster, "fresh") == b"node1"
        await settles(cluster, "fresh", None)  # never recorded: given back

        # a recorded VM whose claim is missing, while an operation holds it: not claimed
        name = f"kept-{id(cluster) % 100000}"
        await cluster.vms.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
        assert await cluster.etcd.delete_if(vm_key("default", name), b"node1")
        async with cluster.vms.locked(name):
            await cluster._reclaim()
            assert await owner_of(cluster, name) is None
        await settles(cluster, name, b"node1")  # idle again: claimed
        await cluster.vms.delete(name, force=True, keep_disks=False)
        assert await owner_of(cluster, name) is None
        nursery.cancel_scope.cancel()


async def test_after_the_first_join_a_claim_never_waits_for_etcd(
    cluster: ClusterService, etcd: EtcdCluster
) -> None:
    """With etcd hanging (stopped, so every attempt to rejoin takes a whole timeout),
    claims are deferred at once, whether or not an attempt is under way."""
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        assert await cluster.reachable()
        with etcd.paused():
            with trio.fail_after(5 * cluster.config.cluster_lease_ttl_s):
                while cluster.connected:  # noqa: ASYNC110 - the membership loop notices
                    await trio.sleep(0.05)
            for n in range(8):  # over several rejoin attempts and the pauses between
                with trio.fail_after(0.3):
                    await cluster.claim("default", f"offline{n}")
                assert cluster._deferred
                await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
