"""The cluster tier at scale: 1,000 registered nodes and 10,000 VMs in a real etcd.

    python -m bench.cluster_bench [--nodes 1000] [--vms 10000] [--calls 300] [--json]

Starts a three-member etcd cluster with mutual TLS (certificates from NovaCron's CA, as
the test suite does) and one real ``novacrond`` (libvirt's test driver) in it. The
other nodes are simulated: lightweight registrations written straight to etcd under one
lease, each with a realistic placement report (2 NUMA nodes of 16 threads, 8 of them
dedicated, uneven free memory, some threads and shared slots in use), and VM ownership
keys spread over them. Then, through the daemon's Unix socket:

* ``cluster.place`` (the decision of ``vm.create node=auto``: every node scored by the
  Rust engine on its published free state) — p50/p99 over ``--calls`` calls;
* ``vm.create node=auto`` end to end — the simulated nodes are made busier than the
  real one, so the real one wins and creates the VM — p50/p99 over ``--creates`` calls;
* ``cluster.vms`` (all 10,000 owners) — p50/p99;
* etcd's write rate while nothing changes: the store revision over ``--quiet-s`` seconds
  (the daemon keeps its lease alive, which is not a write);
* the migration switch-over's transaction (``cluster/locks.py``: lock still held, VM
  still the source's, destination registered → ownership moved, lock removed), which a
  clustered migration adds to its downtime — p50/p99 over ``--calls`` transactions.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import trio

if not __package__:  # run as `python bench/cluster_bench.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.daemon_harness import Daemon
from tests.etcd_harness import EtcdCluster
from tests.pki_harness import Pki, free_port, migration_listen

from novacron.cluster.etcd import EtcdClient
from novacron.cluster.locks import MigrationLocks
from novacron.cluster.service import NODES, VMS, ClusterService
from novacron.config import Config
from novacron.daemon import etcd_context
from novacron.eventbus import EventBus
from novacron.vm.service import VmService


def report(rng: random.Random, free_mib: int) -> dict[str, Any]:
    """A placement report like ``node.info``'s for a 2 x 16-thread host."""
    nodes = []
    for n in range(2):
        cpus = []
        for t in range(16):
            cid = n * 16 + t
            pool = "dedicated" if t < 8 else "shared"
            cpus.append(
                {
                    "id": cid,
                    "socket": n,
                    "core": t // 2,
                    "siblings": [cid ^ 1],
                    "pool": pool,
                    "in_use": pool == "dedicated" and rng.random() < 0.3,
                }
            )
        nodes.append(
            {
                "id": n,
                "memory_mib": 131072,
                "memory_free_mib": free_mib,
                "memory_placeable_mib": free_mib,
                "memory_capacity_mib": 129024,
                "hugepages": {"2048": {"total": 1024, "free": 512, "placeable": 512}},
                "cpus": cpus,
                # busier than the real node stays through --creates (its 64 slots fill up)
                "shared_vcpus": rng.randrange(24, 31),
                "shared_capacity": 32,
                "distances": {"0": 10 if n == 0 else 21, "1": 21 if n == 0 else 10},
            }
        )
    return {
        "nodes": nodes,
        "dedicated_cpus": "0-7,16-23",
        "shared_cpus": "8-15,24-31",
        "placed_vms": 0,
        "problem": None,
    }


async def populate(etcd: EtcdClient, nodes: int, vms: int, seed: int) -> None:
    rng = random.Random(seed)
    lease = await etcd.grant(3600)
    names = [f"sim{i:04d}" for i in range(nodes)]

    async def put_node(name: str) -> None:
        doc = {
            "node": name,
            "address": "127.0.0.1:1",
            "version": "sim",
            "labels": {},
            "capacity": report(rng, rng.randrange(256, 2048)),
            "vms": vms // nodes,
        }
        await etcd.put(NODES + name.encode(), json.dumps(doc).encode(), lease)

    async def put_vm(i: int) -> None:
        key = VMS + f"t{i % 50}/vm{i:05d}".encode()
        await etcd.put(key, names[i % nodes].encode())

    limit = trio.CapacityLimiter(32)

    async def run(fn: Any, arg: Any) -> None:
        async with limit:
            await fn(arg)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(run, put_node, name)
    async with trio.open_nursery() as nursery:
        for i in range(vms):
            nursery.start_soon(run, put_vm, i)


async def switch_overs(etcd: EtcdClient, config: Config, calls: int) -> list[float]:
    """The commit transaction of ``calls`` migrations (ms each), from a registered
    source to a simulated node, each VM claimed and locked first (not timed)."""
    source = ClusterService(config, cast(VmService, None), EventBus(), etcd)
    source.node = "bench-src"
    source.lease = await etcd.grant(600)
    await etcd.put(NODES + b"bench-src", b'{"node": "bench-src"}', source.lease)
    source.connected = True
    locks = MigrationLocks(source)
    samples = []
    for i in range(calls):
        await source.claim("bench", f"moving{i}")
        lock = await locks.acquire("bench", f"moving{i}", f"op-{i}", "127.0.0.1:1")
        lock.destination = "sim0000"
        started = time.perf_counter()
        await locks.commit(lock)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def ready(nodes: list[dict[str, Any]], expected: int) -> bool:
    """Every node registered, the real one with its topology read."""
    real = [n for n in nodes if n["node"] == "node1"]
    return (
        len(nodes) >= expected
        and bool(real)
        and not (real[0].get("capacity") or {}).get("problem", "missing")
    )


def timed(calls: int, fn: Any) -> dict[str, float]:
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    calls = len(samples)
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "calls": calls,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--creates", type=int, default=40, help="vm.create node=auto calls")
    parser.add_argument("--quiet-s", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="novacron-cluster-bench-") as tmp_name:
        tmp = Path(tmp_name)
        pki = Pki.create(tmp / "pki")
        cluster = EtcdCluster.start(tmp / "etcd", pki.ca)
        certs = pki.root / "certs"
        daemon = Daemon(
            socket=tmp / "d" / "novacrond.sock",
            state_dir=tmp / "d" / "state",
            log=tmp / "d" / "novacrond.log",
            extra=[
                *("--node-name", "node1", "--tls-listen", f"127.0.0.1:{free_port()}"),
                *migration_listen(),
                *("--tls-cert", str(certs / "node1.crt"), "--tls-key", str(certs / "node1.key")),
                *("--tls-ca", str(pki.ca.dir / "ca.crt")),
                *("--cluster-etcd-endpoints", cluster.endpoints),
                *("--rate-limit-per-s", "0"),
            ],
        )
        try:
            config = Config(
                tls_cert=str(certs / "node1.crt"),
                tls_key=str(certs / "node1.key"),
                tls_ca=str(pki.ca.dir / "ca.crt"),
            )

            async def fill() -> tuple[float, list[float]]:
                etcd = EtcdClient(cluster.endpoints.split(","), etcd_context(config), 5.0)
                started = time.perf_counter()
                await populate(etcd, args.nodes, args.vms, seed=7)
                took = time.perf_counter() - started
                commits = await switch_overs(etcd, config, args.calls)
                await etcd.aclose()
                return took, commits

            fill_s, commits = trio.run(fill)
            switch_over = percentiles(commits)
            daemon.start(timeout=60)
            with daemon.client(timeout=120) as c:
                deadline = time.monotonic() + 60
                while not ready(c.call("cluster.nodes"), args.nodes + 1):
                    if time.monotonic() > deadline:
                        raise SystemExit("the daemon did not see every node")
                    time.sleep(0.5)
                deadline = time.monotonic() + 60  # the daemon's watch catches up
                first_choice = c.call("cluster.place", memory_mib=16)
                while first_choice["node"] != "node1" and time.monotonic() < deadline:
                    time.sleep(0.5)
                    first_choice = c.call("cluster.place", memory_mib=16)
                if first_choice["node"] != "node1":
                    raise SystemExit(f"the real node should be the roomiest: {first_choice}")
                place = timed(args.calls, lambda i: c.call("cluster.place", memory_mib=64))
                create = timed(
                    args.creates,
                    lambda i: c.call("vm.create", name=f"auto{i}", memory_mib=16, node="auto"),
                )
                listing = timed(min(args.calls, 30), lambda i: c.call("cluster.vms"))
                first = int(c.call("cluster.status")["revision"])
                time.sleep(args.quiet_s)
                last = int(c.call("cluster.status")["revision"])
                chosen = {c.call("cluster.place", memory_mib=64)["node"]}
        finally:
            daemon.stop()
            cluster.stop()
    result = {
        "nodes": args.nodes,
        "vms": args.vms,
        "populate_s": fill_s,
        "cluster_place": place,
        "vm_create_auto": create,
        "cluster_vms": listing,
        "quiet_writes_per_s": (last - first) / args.quiet_s,
        "switch_over_txn": switch_over,
        "quiet_s": args.quiet_s,
        "placed_on": sorted(chosen),
        "machine": platform.platform(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.nodes} nodes, {args.vms} VMs registered in {fill_s:.1f} s\n"
            f"  cluster.place (node=auto decision): p50 {place['p50_ms']:.1f} ms, "
            f"p99 {place['p99_ms']:.1f} ms\n"
            f"  vm.create node=auto (end to end):   p50 {create['p50_ms']:.1f} ms, "
            f"p99 {create['p99_ms']:.1f} ms\n"
            f"  cluster.vms ({args.vms} owners):     p50 {listing['p50_ms']:.1f} ms, "
            f"p99 {listing['p99_ms']:.1f} ms\n"
            f"  etcd writes while quiet: {result['quiet_writes_per_s']:.2f}/s "
            f"over {args.quiet_s:.0f} s\n"
            f"  migration switch-over txn:        p50 {switch_over['p50_ms']:.1f} ms, "
            f"p99 {switch_over['p99_ms']:.1f} ms"
        )
    return result


if __name__ == "__main__":
    main()
