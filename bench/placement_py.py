"""The placement policy of ``novacron-placement`` written plainly in Python.

The benchmark's yardstick: the same decisions (``bench/placebench.py`` checks that
every one matches the Rust engine's), made the straightforward way — per-thread
free flags scanned when needed, nodes compared with tuples. Not used by the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class NoFit(Exception):
    pass


@dataclass
class Node:
    id: int
    mem_cap: int  # KiB
    mem_used: int = 0
    huge: dict[int, list[int]] = field(default_factory=dict)  # size -> [total, used]
    cores: list[list[int]] = field(default_factory=list)  # dedicated thread ids per core
    free: dict[int, bool] = field(default_factory=dict)  # dedicated thread -> free
    shared: list[int] = field(default_factory=list)
    shared_cap: int = 0
    shared_load: int = 0
    dist: list[int] = field(default_factory=list)

    def ded_free(self) -> int:
        return sum(1 for f in self.free.values() if f)

    def mem_free(self, huge: int | None) -> int:
        if huge is None:
            return self.mem_cap - self.mem_used
        pool = self.huge.get(huge)
        return (pool[0] - pool[1]) * huge if pool else 0


class PyPlacer:
    def __init__(
        self,
        nodes: list[dict[str, Any]],
        dedicated_cpus: list[int],
        shared_cpus: list[int],
        reserved_memory_mib: int = 0,
        shared_overcommit: float = 4.0,
    ) -> None:
        dedicated, shared = set(dedicated_cpus), set(shared_cpus)
        ordered = sorted(nodes, key=lambda n: n["id"])
        self.nodes: list[Node] = []
        for spec in ordered:
            huge = {size: [total, 0] for size, total in spec.get("hugepages", {}).items()}
            huge_kib = sum(size * total for size, (total, _) in huge.items())
            cap = max(0, spec["memory_mib"] * 1024 - huge_kib - reserved_memory_mib * 1024)
            by_core: dict[int, list[int]] = {}
            for cpu, core in spec["cpus"]:
                if cpu in dedicated:
                    by_core.setdefault(core, []).append(cpu)
            cores = sorted((sorted(t) for _, t in sorted(by_core.items())), key=lambda t: t[0])
            node_shared = sorted(c for c, _ in spec["cpus"] if c in shared)
            dists = spec.get("distances", {})
            self.nodes.append(
                Node(
                    id=spec["id"],
                    mem_cap=cap,
                    huge=huge,
                    cores=cores,
                    free={t: True for core in cores for t in core},
                    shared=node_shared,
                    shared_cap=int(len(node_shared) * shared_overcommit),
                    dist=[dists.get(o["id"], 10 if o["id"] == spec["id"] else 20) for o in ordered],
                )
            )
        self.allocations: dict[str, dict[str, Any]] = {}

    def _fit_key(self, node: Node, req: tuple[Any, ...], vcpus: int, mem: int) -> Any:
        _, _, cpu, _, huge = req
        free = node.mem_free(huge)
        if free < mem:
            return None
        left = free - mem
        if cpu == "dedicated":
            ded = node.ded_free()
            if ded < vcpus:
                return None
            return (ded - vcpus, left, node.id)
        threads = len(node.shared)
        load = node.shared_load + vcpus
        if threads == 0 or vcpus > threads or load > node.shared_cap:
            return None
        return (load * 1_000_000 // threads, (1 << 64) - 1 - left, node.id)

    def place(
        self,
        vcpus: int,
        memory_mib: int,
        cpu: str = "shared",
        memory: str = "strict",
        hugepage_kib: int | None = None,
    ) -> dict[str, Any]:
        req = (vcpus, memory_mib, cpu, memory, hugepage_kib)
        if hugepage_kib is not None and not any(hugepage_kib in n.huge for n in self.nodes):
            raise NoFit(f"this host has no {hugepage_kib} KiB hugepage pool")
        whole = memory_mib * 1024
        best = None
        for i, node in enumerate(self.nodes):
            key = self._fit_key(node, req, vcpus, whole)
            if key is not None and (best is None or key < best[0]):
                best = (key, i)
        if best is not None:
            return self._build(req, [(best[1], vcpus, whole)])
        for k in range(2, min(len(self.nodes), vcpus) + 1):
            cells = self._split(req, k)
            if cells is not None:
                return self._build(req, cells)
        raise NoFit("cannot place")

    def _split(self, req: tuple[Any, ...], k: int) -> list[tuple[int, int, int]] | None:
        vcpus, memory_mib, cpu, _, huge = req
        unit = huge or 1024
        units = memory_mib * 1024 // unit
        chosen: list[tuple[int, int, int]] = []
        for i in range(k):
            share_v = vcpus // k + (1 if i < vcpus % k else 0)
            share_m = (units // k + (1 if i < units % k else 0)) * unit
            best = None
            for ni, node in enumerate(self.nodes):
                if any(c[0] == ni for c in chosen):
                    continue
                if self._fit_key(node, req, share_v, share_m) is None:
                    continue
                dist = sum(node.dist[c[0]] for c in chosen)
                room_cpu = (
                    node.ded_free() if cpu == "dedicated" else node.shared_cap - node.shared_load
                )
                key = (dist, -room_cpu, -node.mem_free(huge), node.id)
                if best is None or key < best[0]:
                    best = (key, ni)
            if best is None:
                return None
            chosen.append((best[1], share_v, share_m))
        return chosen

    def _pick(self, node: Node, count: int) -> list[int]:
        free_in = [[t for t in core if node.free[t]] for core in node.cores]
        out: list[int] = []
        rest = count
        for ci, core in enumerate(node.cores):
            if rest >= len(core) and len(free_in[ci]) == len(core):
                out += free_in[ci]
                free_in[ci] = []
                rest -= len(core)
        while rest > 0:
            fits = [(len(f), ci) for ci, f in enumerate(free_in) if len(f) >= rest]
            if fits:
                ci = min(fits)[1]
            else:
                ci = max((len(f), -ci) for ci, f in enumerate(free_in) if f)[1] * -1
            take = free_in[ci][: min(rest, len(free_in[ci]))]
            free_in[ci] = free_in[ci][len(take) :]
            out += take
            rest -= len(take)
        return sorted(out)

    def _build(self, req: tuple[Any, ...], cells: list[tuple[int, int, int]]) -> dict[str, Any]:
        _, _, cpu, memory, huge = req
        first = 0
        out: list[dict[str, Any]] = []
        for ni, vcpus, mem in cells:
            node = self.nodes[ni]
            cpus = self._pick(node, vcpus) if cpu == "dedicated" else list(node.shared)
            out.append(
                {
                    "node": node.id,
                    "first_vcpu": first,
                    "vcpus": vcpus,
                    "memory_kib": mem,
                    "cpus": cpus,
                }
            )
            first += vcpus
        if cpu == "shared":
            emulator = sorted(c for cell in out for c in cell["cpus"])
        else:
            emulator = sorted(c for ni, _, _ in cells for c in self.nodes[ni].shared)
            emulator = emulator or sorted(c for cell in out for c in cell["cpus"])
        return {
            "cpu": cpu,
            "memory": memory,
            "hugepage_kib": huge,
            "cells": out,
            "emulator_cpus": emulator,
        }

    def place_many(self, requests: list[tuple[Any, ...]]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for req in requests:
            try:
                out.append(self.place(*req))
            except NoFit:
                out.append(None)
        return out

    def allocate(self, vm: str, *request: Any) -> dict[str, Any]:
        decided = self.place(*request)
        by_id = {n.id: n for n in self.nodes}
        for cell in decided["cells"]:
            node = by_id[cell["node"]]
            if decided["hugepage_kib"]:
                node.huge[decided["hugepage_kib"]][1] += (
                    cell["memory_kib"] // decided["hugepage_kib"]
                )
            else:
                node.mem_used += cell["memory_kib"]
            if decided["cpu"] == "dedicated":
                for t in cell["cpus"]:
                    node.free[t] = False
            else:
                node.shared_load += cell["vcpus"]
        self.allocations[vm] = decided
        return decided
