"""The daemon's placement state: the Rust engine loaded with this host's topology.

Calls are synchronous (the engine decides in well under a microsecond and never
blocks), so they run on the trio thread and need no lock: nothing can interleave
between a decision and its commit. Placements are stored with each VM record and
written into its domain XML; on start they are committed again from the records.
"""

from __future__ import annotations

import logging
from typing import Any

from novacron import errors
from novacron._core import Placer, format_cpuset, parse_cpuset
from novacron.config import Config
from novacron.logs import kv
from novacron.placement.topology import HostNode
from novacron.vm.spec import VmSpec

log = logging.getLogger("novacron.placement")


class PlacementService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.nodes: list[HostNode] = []
        self._placer: Placer | None = None
        self.problem: str | None = "host topology not read yet"
        self.dedicated: list[int] = []
        self.shared: list[int] = []

    def load(self, nodes: list[HostNode]) -> None:
        """Builds the engine for ``nodes`` with the configured partition."""
        self.nodes = nodes
        every = sorted(c.id for n in nodes for c in n.cpus)
        try:
            dedicated = parse_cpuset(self.config.dedicated_cpus)
            shared = parse_cpuset(self.config.shared_cpus)
            if not shared:
                shared = [c for c in every if c not in set(dedicated)]
            self._placer = Placer(
                [n.to_engine() for n in nodes],
                dedicated_cpus=dedicated,
                shared_cpus=shared,
                reserved_memory_mib=self.config.reserved_memory_mib,
                shared_overcommit=self.config.shared_overcommit,
            )
        except ValueError as exc:  # EngineError is a ValueError
            self._placer = None
            self.problem = f"placement configuration does not fit this host: {exc}"
            log.error("placement.unusable", extra=kv(error=self.problem))
            return
        self.dedicated, self.shared, self.problem = dedicated, shared, None
        log.info(
            "placement.ready",
            extra=kv(
                nodes=len(nodes),
                dedicated=format_cpuset(dedicated) or "-",
                shared=format_cpuset(shared) or "-",
            ),
        )

    @property
    def placer(self) -> Placer:
        if self._placer is None:
            raise errors.Unavailable(self.problem or "placement unavailable")
        return self._placer

    def allocate(self, vm: str, spec: VmSpec) -> dict[str, Any]:
        """Decides and records where ``vm`` goes; raises ``insufficient_resources``."""
        placement = self.placer.allocate(
            vm,
            spec.vcpu_slots,
            spec.memory_ceiling_mib,
            spec.cpu_policy,
            spec.memory_policy,
            spec.hugepage_kib,
        ).to_dict()
        log.info("placement.allocated", extra=kv(vm=vm, **summary(placement)))
        return placement

    def restore(self, vm: str, placement: dict[str, Any]) -> None:
        """Commits a placement read back from the state store (raises ``conflict``)."""
        try:
            self.placer.commit(vm, placement)
        except ValueError as exc:
            raise errors.Conflict(f"stored placement of {vm!r} is malformed: {exc}") from None

    def release(self, vm: str) -> None:
        if self._placer is not None and self._placer.release(vm):
            log.info("placement.released", extra=kv(vm=vm))

    def report(self) -> dict[str, Any]:
        """The topology and what is free, for ``node.info``."""
        free = {n["id"]: n for n in self._placer.free()} if self._placer is not None else {}
        dedicated, shared = set(self.dedicated), set(self.shared)
        nodes = []
        for node in self.nodes:
            f = free.get(node.id, {})
            free_threads = set(f.get("dedicated_free", []))
            nodes.append(
                {
                    "id": node.id,
                    "memory_mib": node.memory_mib,
                    "memory_free_mib": node.memory_free_mib,
                    "memory_placeable_mib": f.get("memory_free_mib"),
                    "memory_capacity_mib": f.get("memory_capacity_mib"),
                    "hugepages": {
                        str(size): {
                            "total": total,
                            "free": node.hugepages_free.get(size),
                            "placeable": f.get("hugepages", {}).get(size, (None, None))[0],
                        }
                        for size, total in sorted(node.hugepages.items())
                    },
                    "cpus": [
                        {
                            "id": c.id,
                            "socket": c.socket,
                            "core": c.core,
                            "siblings": list(c.siblings),
                            "pool": "dedicated"
                            if c.id in dedicated
                            else "shared"
                            if c.id in shared
                            else "host",
                            "in_use": c.id in dedicated and c.id not in free_threads,
                        }
                        for c in node.cpus
                    ],
                    "shared_vcpus": f.get("shared_vcpus"),
                    "shared_capacity": f.get("shared_capacity"),
                    "distances": {str(k): v for k, v in sorted(node.distances.items())},
                }
            )
        return {
            "nodes": nodes,
            "dedicated_cpus": format_cpuset(self.dedicated),
            "shared_cpus": format_cpuset(self.shared),
            "placed_vms": len(self._placer) if self._placer is not None else 0,
            "problem": self.problem,
        }


def summary(placement: dict[str, Any]) -> dict[str, Any]:
    """A short description for logs."""
    return {
        "cpu": placement["cpu"],
        "nodes": ",".join(str(c["node"]) for c in placement["cells"]),
        "pinned": ";".join(format_cpuset(c["cpus"]) for c in placement["cells"]),
    }
