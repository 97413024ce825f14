"""Placement decisions per second: the Rust engine (through ``novacron._core``)
against the same policy in plain Python (``bench/placement_py.py``).

    python -m bench.placebench [--decisions 20000] [--vms 1000] [--passes 5] [--json]

The host: 8 NUMA nodes of 16 cores x 2 threads (256 threads), 256 GiB per node with
32 GiB of 2 MiB hugepages; per node 24 threads dedicated, 8 shared (overcommit 16).
Both placers first receive the same 1,000 VMs (1 in 12 dedicated with 2 vCPUs, the
rest shared with 1 vCPU, 512 MiB each), checked to land identically. Then each makes
the same stream of decisions (a mix of shared and dedicated, 1-8 vCPUs, 1-64 GiB,
some on hugepages, some larger than a node); every decision is checked to be equal.
Measured twice: one ``place`` call per decision, and all decisions in one
``place_many`` call (one GIL release; what a cluster scorer does). A decision is
one request in, a placement out: arguments in, a placement out (the
engine's ``Placement`` object, whose ``to_dict()`` is compared with the Python dict
outside the timed loop). Each pass times both sides back to back (Rust, Python, then
the batched pair); the rates reported are the medians over the passes, with every
pass's figures under ``passes`` (these shared machines swing by 20-30 % from one
pass to the next).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as `python bench/placebench.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.placement_py import NoFit, PyPlacer
from novacron import errors
from novacron._core import Placer

NODES, CORES, SMT = 8, 16, 2


def topology() -> tuple[list[dict[str, Any]], list[int], list[int]]:
    nodes: list[dict[str, Any]] = []
    dedicated: list[int] = []
    shared: list[int] = []
    for n in range(NODES):
        cpus = []
        for t in range(CORES * SMT):
            cpu = n * CORES * SMT + t
            cpus.append((cpu, n * CORES + t // SMT))
            (dedicated if t < 24 else shared).append(cpu)
        nodes.append(
            {
                "id": n,
                "memory_mib": 256 * 1024,
                "cpus": cpus,
                "hugepages": {2048: 16384},
                "distances": {m: 10 if m == n else 21 for m in range(NODES)},
            }
        )
    return nodes, dedicated, shared


def requests(count: int, seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        cpu = "dedicated" if rng.random() < 0.3 else "shared"
        vcpus = rng.choice([1, 2, 4, 8] if cpu == "shared" else [2, 4, 8, 20])
        memory = rng.choice([1024, 4096, 16384, 65536, 300_000])
        huge = 2048 if rng.random() < 0.2 else None
        out.append((vcpus, memory, cpu, rng.choice(["strict", "preferred"]), huge))
    return out


def build(vms: int) -> tuple[Placer, PyPlacer]:
    nodes, dedicated, shared = topology()
    rust = Placer(
        nodes,
        dedicated_cpus=dedicated,
        shared_cpus=shared,
        reserved_memory_mib=4096,
        shared_overcommit=16.0,
    )
    py = PyPlacer(nodes, dedicated, shared, reserved_memory_mib=4096, shared_overcommit=16.0)
    for i in range(vms):
        req = (2, 512, "dedicated") if i % 12 == 0 else (1, 512, "shared")
        a, b = rust.allocate(f"vm{i}", *req).to_dict(), py.allocate(f"vm{i}", *req)
        if a != b:
            raise AssertionError(f"vm{i}: rust {a} != python {b}")
    return rust, py


def run(placer: Any, reqs: list[tuple[Any, ...]]) -> tuple[float, list[Any]]:
    """Times the decisions with the cyclic GC paused (as ``timeit`` does): the
    results kept for checking would otherwise make its scans dominate both sides."""
    out: list[Any] = []
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for req in reqs:
            try:
                out.append(placer.place(*req))
            except (errors.InsufficientResources, NoFit):
                out.append(None)
        return time.perf_counter() - start, out
    finally:
        gc.enable()


def run_batch(placer: Any, reqs: list[tuple[Any, ...]]) -> tuple[float, list[Any]]:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        out = placer.place_many(reqs)
        return time.perf_counter() - start, out
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rust, py = build(args.vms)
    reqs = requests(args.decisions, seed=7)
    run(rust, reqs[:1000])  # warm-up
    run(py, reqs[:200])
    passes: list[dict[str, float]] = []
    mismatches = 0
    for _ in range(args.passes):
        rust_s, rust_out = run(rust, reqs)
        py_s, py_out = run(py, reqs)
        rust_batch_s, rust_batch = run_batch(rust, reqs)
        py_batch_s, py_batch = run_batch(py, reqs)
        rust_dicts = [d.to_dict() if d is not None else None for d in rust_out]
        batch_dicts = [d.to_dict() if d is not None else None for d in rust_batch]
        mismatches += sum(1 for a, b in zip(rust_dicts, py_out, strict=True) if a != b)
        mismatches += sum(1 for a, b in zip(batch_dicts, py_batch, strict=True) if a != b)
        passes.append(
            {
                "rust_per_s": len(reqs) / rust_s,
                "python_per_s": len(reqs) / py_s,
                "speedup": py_s / rust_s,
                "batch_rust_per_s": len(reqs) / rust_batch_s,
                "batch_python_per_s": len(reqs) / py_batch_s,
                "batch_speedup": py_batch_s / rust_batch_s,
            }
        )

    def median(key: str) -> float:
        return statistics.median(p[key] for p in passes)

    result: dict[str, Any] = {
        "host": {"nodes": NODES, "threads": NODES * CORES * SMT, "vms_placed": len(rust)},
        "decisions": len(reqs),
        "placed": sum(1 for d in rust_out if d is not None),
        "split": sum(1 for d in rust_dicts if d is not None and len(d["cells"]) > 1),
        "passes": passes,
        "rust_per_s": median("rust_per_s"),
        "python_per_s": median("python_per_s"),
        "speedup": median("speedup"),
        "batch_rust_per_s": median("batch_rust_per_s"),
        "batch_python_per_s": median("batch_python_per_s"),
        "batch_speedup": median("batch_speedup"),
        "mismatches": mismatches,
        "machine": platform.platform(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"medians of {args.passes} passes: "
            f"{result['decisions']} decisions on {result['host']['threads']} threads / "
            f"{NODES} nodes with {result['host']['vms_placed']} VMs placed "
            f"({result['placed']} placeable, {result['split']} split over nodes)\n"
            f"  rust engine : {result['rust_per_s']:>12,.0f} decisions/s\n"
            f"  pure python : {result['python_per_s']:>12,.0f} decisions/s\n"
            f"  speed-up    : {result['speedup']:>12.1f}x\n"
            f"batched (place_many, one call for all {result['decisions']}):\n"
            f"  rust engine : {result['batch_rust_per_s']:>12,.0f} decisions/s\n"
            f"  pure python : {result['batch_python_per_s']:>12,.0f} decisions/s\n"
            f"  speed-up    : {result['batch_speedup']:>12.1f}x\n"
            f"per-call speed-up per pass: "
            + ", ".join(f"{p['speedup']:.1f}x" for p in passes)
            + "\n"
            f"decisions differing between the two: {result['mismatches']}"
        )
    if result["mismatches"]:
        raise SystemExit("the two implementations disagree")
    return result


if __name__ == "__main__":
    main()
