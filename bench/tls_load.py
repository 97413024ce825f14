"""1,000 mutual-TLS clients held open against one daemon while 50 of them call.

    python -m bench.tls_load [--idle 1000] [--active 50] [--calls 200] [--json]

Starts its own ``novacrond --dev`` with the TLS listener on loopback and certificates
from NovaCron's CA (made in a temporary directory). Phase 1 (baseline): the ``active``
clients connect alone and each makes ``calls`` sequential ``vm.list`` calls (10 VMs
defined). Phase 2: ``idle`` further clients connect and stay connected (handshake
time reported), then the same ``active`` clients repeat the run. Latency is per call,
measured in the clients; all ``active`` clients run concurrently.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

if not __package__:  # run as `python bench/tls_load.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pki_harness import migration_listen

from bench import rpc_bench
from novacron.client import SyncClient, TlsFiles, connect_tls
from novacron.pki.ca import CertificateAuthority


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_daemon(root: Path, port: int, ca: CertificateAuthority) -> subprocess.Popen[bytes]:
    """The bench daemon with its TLS listener on loopback and 10 VMs defined."""
    certs = root / "certs"
    ca.issue("node1", "node", certs, node=True, addresses=("127.0.0.1",))
    proc, sock = rpc_bench.start_daemon(
        root,
        *("--tls-listen", f"127.0.0.1:{port}", "--rate-limit-per-s", "0"),
        # one certificate stands for all the clients: neither its call rate nor its
        # connections may be capped as one identity's would be
        *("--max-connections-per-identity", "0"),
        *migration_listen(),
        *("--tls-cert", str(certs / "node1.crt"), "--tls-key", str(certs / "node1.key")),
        *("--tls-ca", str(ca.dir / "ca.crt"), "--tls-crl", str(ca.dir / "crl.pem")),
    )
    with SyncClient(sock) as c:
        for i in range(10):
            c.call("vm.create", name=f"load-{i}", memory_mib=16)
    return proc


async def active_run(address: str, files: TlsFiles, active: int, calls: int) -> list[float]:
    latencies: list[float] = []

    async def one() -> None:
        async with connect_tls(address, files, server_name="node1") as c:
            for _ in range(calls):
                start = time.perf_counter()
                await c.call("vm.list")
                latencies.append(time.perf_counter() - start)

    async with trio.open_nursery() as n:
        for _ in range(active):
            n.start_soon(one)
    return latencies


async def run(args: argparse.Namespace, address: str, files: TlsFiles) -> dict[str, Any]:
    start = time.perf_counter()
    base = await active_run(address, files, args.active, args.calls)
    base_s = time.perf_counter() - start
    limiter = trio.CapacityLimiter(64)  # handshakes in flight at once
    connected, done = 0, trio.Event()
    all_in = trio.Event()

    async def idle_client() -> None:
        # each idle client lives in its own task (a trio client's nursery must be
        # entered and left by the same task), connected until the run ends
        nonlocal connected
        async with limiter:
            ctx = connect_tls(address, files, server_name="node1")
            client = await ctx.__aenter__()
        try:
            await client.call("session.hello")
            connected += 1
            if connected == args.idle:
                all_in.set()
            await done.wait()
        finally:
            await ctx.__aexit__(None, None, None)

    async with trio.open_nursery() as n:
        handshake_start = time.perf_counter()
        for _ in range(args.idle):
            n.start_soon(idle_client)
        await all_in.wait()
        handshake_s = time.perf_counter() - handshake_start
        start = time.perf_counter()
        loaded = await active_run(address, files, args.active, args.calls)
        loaded_s = time.perf_counter() - start
        done.set()
    opened = connected

    def figures(lat: list[float], elapsed: float) -> dict[str, float]:
        return {
            "p50_ms": percentile(lat, 0.50) * 1e3,
            "p99_ms": percentile(lat, 0.99) * 1e3,
            "mean_ms": statistics.fmean(lat) * 1e3,
            "calls_per_s": len(lat) / elapsed,
        }

    return {
        "idle_connections": opened,
        "connect_all_s": handshake_s,
        "active_clients": args.active,
        "calls_each": args.calls,
        "baseline": figures(base, base_s),
        "with_idle": figures(loaded, loaded_s),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--active", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    root = Path(tempfile.mkdtemp(prefix="novacron-tls-load-"))
    try:
        ca = CertificateAuthority.init(root / "ca")
        cert, key = ca.issue("loader", "admin", root / "certs")
        files = TlsFiles(cert, key, ca.dir / "ca.crt")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start_daemon(root, port, ca)
        try:
            result = trio.run(run, args, f"127.0.0.1:{port}", files)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        result["machine"] = f"{os.cpu_count()} cpus"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        b, w = result["baseline"], result["with_idle"]
        print(
            f"{result['idle_connections']} idle TLS clients connected in "
            f"{result['connect_all_s']:.2f} s; {args.active} active x {args.calls} vm.list calls\n"
            f"  alone     : p50 {b['p50_ms']:.2f} ms  p99 {b['p99_ms']:.2f} ms  "
            f"{b['calls_per_s']:,.0f} calls/s\n"
            f"  with idle : p50 {w['p50_ms']:.2f} ms  p99 {w['p99_ms']:.2f} ms  "
            f"{w['calls_per_s']:,.0f} calls/s"
        )
    return result


if __name__ == "__main__":
    main()
