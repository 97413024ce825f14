"""Choosing a node for ``vm.create node=auto``: the Rust placement engine scores every
up node on what that node published as free.

A node's registration carries its placement report (``capacity``, as ``node.info``
shows it). :func:`free_placer` rebuilds from it a :class:`~novacron._core.Placer` that
holds exactly that free state: each NUMA node's placeable memory and hugepages, its
free dedicated threads, its shared threads with the shared vCPUs already placed on
them. :func:`choose_among` asks each such placer to ``score`` the VM (the smallest fraction of
any resource left after placing it; higher is roomier) and takes the best.
"""

from __future__ import annotations

from typing import Any

from novacron import errors
from novacron._core import Placer
from novacron.vm.spec import VmSpec


def free_placer(capacity: dict[str, Any]) -> Placer | None:
    """The engine state a node published, or None if it published none usable."""
    if capacity.get("problem") or not capacity.get("nodes"):
        return None
    nodes, dedicated, shared, loads = [], [], [], []
    overcommit = 1.0
    for n in capacity["nodes"]:
        if n.get("memory_placeable_mib") is None:
            return None
        cpus = n["cpus"]
        node_shared = sorted(c["id"] for c in cpus if c["pool"] == "shared")
        huge = {int(size): h.get("placeable") or 0 for size, h in n["hugepages"].items()}
        nodes.append(
            {
                "id": n["id"],
                # the engine carves hugepage pools out of a node's memory: add them back
                "memory_mib": n["memory_placeable_mib"]
                + sum(size * count for size, count in huge.items()) // 1024,
                "cpus": [(c["id"], min([c["id"], *c["siblings"]])) for c in cpus],
                "hugepages": huge,
                "distances": {int(k): v for k, v in n.get("distances", {}).items()},
            }
        )
        dedicated += [c["id"] for c in cpus if c["pool"] == "dedicated" and not c["in_use"]]
        shared += node_shared
        if node_shared and n.get("shared_capacity"):
            overcommit = n["shared_capacity"] / len(node_shared)
        if node_shared and n.get("shared_vcpus"):
            loads.append((n["id"], node_shared, int(n["shared_vcpus"])))
    try:
        placer = Placer(
            nodes,
            dedicated_cpus=sorted(dedicated),
            shared_cpus=sorted(shared),
            reserved_memory_mib=0,
            shared_overcommit=overcommit,
        )
        for node_id, threads, used in loads:  # the shared vCPUs already there
            placer.commit(
                f"(placed on node {node_id})",
                {
                    "cpu": "shared",
                    "memory": "strict",
                    "hugepage_kib": None,
                    "cells": [
                        {
                            "node": node_id,
                            "first_vcpu": 0,
                            "vcpus": used,
                            "memory_kib": 0,
                            "cpus": threads,
                        }
                    ],
                    "emulator_cpus": threads,
                },
            )
    except (ValueError, errors.NovaCronError):  # EngineError is a ValueError
        return None
    return placer


def usable(doc: dict[str, Any]) -> bool:
    """A registration a new VM can be sent to (up, with an address, not cordoned)."""
    return doc.get("state", "up") == "up" and bool(doc.get("address")) and not doc.get("cordon")


def short_of_storage(doc: dict[str, Any]) -> bool:
    """A registration saying its pool has less than its reserve free: no new volume
    goes there (``[hypervisor] storage_reserve_mib``)."""
    storage = doc.get("storage")
    return isinstance(storage, dict) and storage.get("short") is True


def with_storage_for(
    spec: VmSpec, placers: dict[str, Placer | None], docs: dict[str, dict[str, Any]]
) -> dict[str, Placer | None]:
    """``placers`` without the nodes whose registration (in ``docs``) says their pool is
    short, when ``spec`` makes volumes there; ``insufficient_resources`` when that leaves
    none (``details.nodes_short_of_storage``)."""
    if not any(disk.managed for disk in spec.disks):
        return placers
    short = {name for name in placers if short_of_storage(docs.get(name, {}))}
    if short and short == set(placers):
        raise errors.InsufficientResources(
            "no node of the cluster has room in its storage pool for new volumes "
            f"({len(short)} node(s) short of their [hypervisor] storage_reserve_mib)",
            {"nodes_short_of_storage": sorted(short)},
        )
    return {name: p for name, p in placers.items() if name not in short}


def choose_among(spec: VmSpec, placers: dict[str, Placer | None]) -> tuple[str, float]:
    """The best-scoring node of ``placers`` (ties: the first by name);
    ``insufficient_resources`` when the VM fits nowhere."""
    best: tuple[float, str] | None = None
    tried = 0
    for name in sorted(placers):
        placer = placers[name]
        if placer is None:
            continue
        tried += 1
        score = placer.score(
            spec.vcpu_slots,
            spec.memory_ceiling_mib,
            spec.cpu_policy,
            spec.memory_policy,
            spec.hugepage_kib,
        )
        if score is not None and (best is None or score > best[0]):
            best = (score, name)
    if best is None:
        raise errors.InsufficientResources(
            f"no node of the cluster can place {spec.vcpu_slots} {spec.cpu_policy} vCPU(s) and "
            f"{spec.memory_ceiling_mib} MiB ({tried} node(s) with usable capacity tried)",
            {"nodes_tried": tried},
        )
    return best[1], best[0]
