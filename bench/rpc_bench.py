"""RPC round trip: novacrond over its Unix socket vs libvirtd's own RPC, same machine.

    python bench/rpc_bench.py [--calls 5000] [--pipelined 64] [--json]

Measures, for NovaCron (``session.hello``; ``vm.list`` with 100 VMs on the test driver)
and for libvirt over ``qemu:///system`` (``getVersion()``; ``listAllDomains()`` with 100
defined domains):

* p50/p99 latency of one client making one call at a time;
* calls/s with 64 calls kept in flight on one connection (NovaCron: pipelined
  MessagePack-RPC; libvirt: 64 threads sharing one connection, its way of overlapping).

It starts its own novacrond (``--dev``); libvirtd must be running for the libvirt side
(``./bootstrap.sh test`` installs it; the system tests start it). Targets (issue #2):
p99 no worse than libvirt's; >= 20,000 calls/s pipelined on one connection.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from novacron.client import SyncClient
from novacron.rpc import codec

VMS = 100


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_us": round(q[49] * 1e6, 1),
        "p99_us": round(q[98] * 1e6, 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
    }


def latency(call: Callable[[], Any], count: int) -> dict[str, float]:
    for _ in range(min(200, count)):
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def nc_pipelined(
    path: Path, method: str, params: dict[str, Any] | None, total: int, depth: int
) -> float:
    """Calls/s on one connection keeping ``depth`` requests in flight."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    decoder = codec.Decoder()
    requests = [codec.encode_request(i % 2**32, method, params) for i in range(total)]
    sent = received = 0
    start = time.perf_counter()
    while received < total:
        window = min(depth - (sent - received), total - sent)
        if window > 0:
            sock.sendall(b"".join(requests[sent : sent + window]))
            sent += window
        data = sock.recv(1 << 20)
        if not data:
            raise RuntimeError("daemon closed the connection")
        for m in decoder.feed(data):
            if not isinstance(m, codec.Response) or m.error is not None:
                raise RuntimeError(f"unexpected answer: {m}")
            received += 1
    elapsed = time.perf_counter() - start
    sock.close()
    return total / elapsed


def threaded_rate(call: Callable[[], Any], total: int, depth: int) -> float:
    per_thread = total // depth
    barrier = threading.Barrier(depth + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            call()

    threads = [threading.Thread(target=worker) for _ in range(depth)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return per_thread * depth / (time.perf_counter() - start)


def start_daemon(tmp: Path, *flags: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A ``novacrond --dev`` of its own in ``tmp`` (extra ``flags`` appended), once it
    answers; its socket."""
    sock = tmp / "bench.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "novacron.daemon",
            "--dev",
            "--socket",
            str(sock),
            "--state-dir",
            str(tmp / "state"),
            "--log-level",
            "warning",
            *flags,
        ],
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            with SyncClient(sock, timeout=5) as c:
                c.call("session.hello")
            return proc, sock
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("novacrond did not start")


SEPARATE = False  # --separate: each call measured in its own loop instead of in turns


def interleaved(calls: dict[str, Callable[[], Any]], count: int) -> dict[str, dict[str, float]]:
    """Latency of several calls measured in turns, so every side sees the same noise
    (or, with ``--separate``, each in a loop of its own)."""
    if SEPARATE:
        return {name: latency(fn, count) for name, fn in calls.items()}
    for fn in calls.values():
        for _ in range(min(200, count)):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(count):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: percentiles(values) for name, values in samples.items()}


def define_libvirt_domains(conn: Any) -> list[Any]:
    defined = []
    for i in range(VMS):
        xml = (
            f"<domain type='qemu'><name>nc-bench-{os.getpid()}-{i:03d}</name>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64'>hvm</type></os></domain>"
        )
        defined.append(conn.defineXML(xml))
    return defined


def run(calls: int, depth: int, with_libvirt: bool = True) -> dict[str, Any]:
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = None
    reason = "not asked for (--no-libvirt)"
    try:
        if with_libvirt:
            conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        reason = f"qemu:///system unavailable: {exc.get_error_message()}"
    with tempfile.TemporaryDirectory() as tmp_name:
        # 100 one-vCPU VMs of 16 MiB on the test driver's fake host (16 threads, 4 GiB):
        # more shared vCPUs than the default overcommit (4 per thread) places
        proc, sock = start_daemon(Path(tmp_name), "--shared-overcommit", "8")
        defined = define_libvirt_domains(conn) if conn is not None else []
        try:
            with SyncClient(sock, timeout=60) as c:
                for i in range(VMS):
                    c.call("vm.create", name=f"bench-{i:03d}", memory_mib=16)
                small = {"novacron session.hello": lambda: c.call("session.hello")}
                lists = {"novacron vm.list(100 VMs)": lambda: c.call("vm.list")}
                if conn is not None:
                    small["libvirt getVersion()"] = conn.getVersion
                    lists["libvirt listAllDomains()(100 domains)"] = lambda: conn.listAllDomains(0)
                figures: dict[str, dict[str, Any]] = interleaved(small, calls)
                figures.update(interleaved(lists, max(200, calls // 10)))
            figures["novacron session.hello"]["calls_per_s"] = round(
                nc_pipelined(sock, "session.hello", None, calls * 4, depth)
            )
            figures["novacron vm.list(100 VMs)"]["calls_per_s"] = round(
                nc_pipelined(sock, "vm.list", None, max(1000, calls // 2), depth)
            )
            if conn is not None:
                total = calls * 4 // depth * depth
                figures["libvirt getVersion()"]["calls_per_s"] = round(
                    threaded_rate(conn.getVersion, total, depth)
                )
                figures["libvirt listAllDomains()(100 domains)"]["calls_per_s"] = round(
                    threaded_rate(
                        lambda: conn.listAllDomains(0),
                        max(1000, calls // 2) // depth * depth,
                        depth,
                    )
                )
            else:
                figures["libvirt"] = {"skipped": reason}
        finally:
            proc.terminate()
            proc.wait(30)
            for dom in defined:
                dom.undefine()
            if conn is not None:
                conn.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--pipelined", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--separate", action="store_true", help="measure each call in its own loop, not in turns"
    )
    parser.add_argument(
        "--no-libvirt", action="store_true", help="NovaCron's side only (no qemu:///system)"
    )
    args = parser.parse_args()
    global SEPARATE  # noqa: PLW0603 - a command-line switch for this script
    SEPARATE = args.separate
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "calls": args.calls,
        "in_flight": args.pipelined,
        "latency_mode": "separate" if args.separate else "interleaved",
        "figures": run(args.calls, args.pipelined, not args.no_libvirt),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'call':40} {'p50 us':>9} {'p99 us':>9} {'calls/s @' + str(args.pipelined):>14}")
    for name, fig in result["figures"].items():
        if "skipped" in fig:
            print(f"{name}: {fig['skipped']}")
            continue
        print(f"{name:40} {fig['p50_us']:>9} {fig['p99_us']:>9} {fig['calls_per_s']:>14}")


if __name__ == "__main__":
    main()
