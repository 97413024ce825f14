"""A host's NUMA topology: libvirt's capabilities, then live figures from sysfs.

libvirt's ``<host><topology>`` gives the structure (nodes, threads with socket, die,
core and siblings, memory, hugepage pools, distances) for every driver, including
``test:///default``. On a local hypervisor ``/sys/devices/system/node`` then gives
current free memory and hugepage counts; elsewhere libvirt's free-memory call does.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SYSFS_NODES = Path("/sys/devices/system/node")


@dataclass(frozen=True)
class HostCpu:
    id: int
    socket: int
    core: int  # the kernel's core_id (unique within a socket/die)
    core_key: int  # unique per physical core on the host: siblings share it
    siblings: tuple[int, ...]


@dataclass(frozen=True)
class HostNode:
    id: int
    memory_mib: int
    cpus: tuple[HostCpu, ...]
    hugepages: dict[int, int] = field(default_factory=dict)  # size KiB -> pages in the pool
    hugepages_free: dict[int, int] = field(default_factory=dict)
    memory_free_mib: int | None = None
    distances: dict[int, int] = field(default_factory=dict)

    def to_engine(self) -> dict[str, Any]:
        """The node as :class:`novacron._core.Placer` takes it."""
        return {
            "id": self.id,
            "memory_mib": self.memory_mib,
            "cpus": [(c.id, c.core_key) for c in self.cpus],
            "hugepages": dict(self.hugepages),
            "distances": dict(self.distances),
        }


def _int(el: ET.Element, attr: str) -> int | None:
    value = el.get(attr)
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _siblings(text: str | None, own: int) -> tuple[int, ...]:
    found: set[int] = {own}
    for part in (text or "").split(","):
        lo, _, hi = part.strip().partition("-")
        if lo.isdigit():
            found.update(range(int(lo), int(hi if hi.isdigit() else lo) + 1))
    return tuple(sorted(found))


def parse_capabilities(caps: ET.Element, cpu_count: int = 1, memory_mib: int = 0) -> list[HostNode]:
    """Nodes from ``virConnectGetCapabilities`` XML.

    Offline threads (listed without a core) are left out. A driver that reports no
    topology gets one node holding ``cpu_count`` single-thread cores.
    """
    cells = caps.findall("host/topology/cells/cell")
    if not cells:
        only = tuple(HostCpu(i, 0, i, i, (i,)) for i in range(cpu_count))
        return [HostNode(0, memory_mib, only)]
    core_keys: dict[tuple[int, int, int, int], int] = {}
    nodes = []
    for cell in cells:
        node_id = _int(cell, "id")
        if node_id is None:
            continue
        mem = cell.find("memory")
        kib = int(mem.text or 0) if mem is not None else 0  # libvirt reports KiB
        sizes = {
            int(p.get("size", "0")): int(p.text or 0)
            for p in cell.findall("pages")
            if (p.get("size") or "").isdigit()
        }
        base = min(sizes) if sizes else 4
        cpus: list[HostCpu] = []
        for cpu in cell.findall("cpus/cpu"):
            cid, socket, core = _int(cpu, "id"), _int(cpu, "socket_id"), _int(cpu, "core_id")
            if cid is None or socket is None or core is None:
                continue  # offline thread
            die = _int(cpu, "die_id") or 0
            cluster = _int(cpu, "cluster_id") or 0
            key = core_keys.setdefault((socket, die, cluster, core), len(core_keys))
            cpus.append(HostCpu(cid, socket, core, key, _siblings(cpu.get("siblings"), cid)))
        distances = {}
        for sib in cell.findall("distances/sibling"):
            other, value = _int(sib, "id"), _int(sib, "value")
            if other is not None and value is not None:
                distances[other] = value
        nodes.append(
            HostNode(
                id=node_id,
                memory_mib=kib // 1024,
                cpus=tuple(sorted(cpus, key=lambda c: c.id)),
                hugepages={s: n for s, n in sizes.items() if s != base},
                distances=distances,
            )
        )
    return sorted(nodes, key=lambda n: n.id)


def _meminfo_free_mib(path: Path) -> int | None:
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            # "Node 0 MemFree:         3537620 kB"
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "MemFree:":
                return int(parts[3]) // 1024
    except (OSError, ValueError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def with_sysfs(nodes: list[HostNode], root: Path = SYSFS_NODES) -> list[HostNode]:
    """Current free memory and hugepage pools of each node, read from sysfs."""
    out = []
    for node in nodes:
        base = root / f"node{node.id}"
        pools, free = dict(node.hugepages), dict(node.hugepages_free)
        for pool in sorted(base.glob("hugepages/hugepages-*kB")):
            size = int(pool.name.removeprefix("hugepages-").removesuffix("kB"))
            total = _read_int(pool / "nr_hugepages")
            available = _read_int(pool / "free_hugepages")
            if total is not None:
                pools[size] = total
            if available is not None:
                free[size] = available
        out.append(
            replace(
                node,
                hugepages=pools,
                hugepages_free=free,
                memory_free_mib=_meminfo_free_mib(base / "meminfo"),
            )
        )
    return out
