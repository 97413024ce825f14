from __future__ import annotations

from typing import Any

import pytest

from novacron import errors
from novacron.cluster.scoring import choose_among, free_placer, usable
from novacron.vm.spec import VmSpec


def capacity(free_mib: int, shared_used: int = 0, dedicated_in_use: int = 0) -> dict[str, Any]:
    """A one-node host of 4 threads (2 cores x 2): threads 0-1 dedicated, 2-3 shared
    (overcommit 4: capacity 8)."""
    cpus = [
        {"id": i, "socket": 0, "core": i // 2, "siblings": [i ^ 1], "pool": pool, "in_use": used}
        for i, (pool, used) in enumerate(
            [
                ("dedicated", dedicated_in_use > 0),
                ("dedicated", dedicated_in_use > 1),
                ("shared", False),
                ("shared", False),
            ]
        )
    ]
    return {
        "nodes": [
            {
                "id": 0,
                "memory_placeable_mib": free_mib,
                "hugepages": {"2048": {"total": 64, "free": 32, "placeable": 32}},
                "cpus": cpus,
                "shared_vcpus": shared_used,
                "shared_capacity": 8,
                "distances": {"0": 10},
            }
        ],
        "problem": None,
    }


def spec(vcpus: int = 1, memory_mib: int = 512, cpu: str = "shared") -> VmSpec:
    return VmSpec(name="v", vcpus=vcpus, memory_mib=memory_mib, cpu_policy=cpu)


def test_the_free_state_is_what_was_published() -> None:
    placer = free_placer(capacity(4096, shared_used=6, dedicated_in_use=1))
    assert placer is not None
    assert placer.score(2, 1024) is not None  # 2 of the 8 shared slots are left
    assert placer.score(3, 1024) is None
    assert placer.score(1, 1024, "dedicated") is not None  # one dedicated thread free
    assert placer.score(2, 1024, "dedicated") is None
    assert placer.score(1, 4097) is None
    # 32 free 2 MiB pages (64 MiB) on top of the normal memory
    assert placer.score(1, 64, hugepage_kib=2048) is not None
    assert placer.score(1, 66, hugepage_kib=2048) is None


def test_unusable_reports_give_no_placer() -> None:
    assert free_placer({}) is None
    assert free_placer({"nodes": [], "problem": None}) is None
    assert free_placer({**capacity(1024), "problem": "topology not read"}) is None
    broken = capacity(1024)
    broken["nodes"][0]["memory_placeable_mib"] = None
    assert free_placer(broken) is None


def node(name: str, cap: dict[str, Any], state: str = "up") -> dict[str, Any]:
    return {"node": name, "state": state, "address": f"{name}:7443", "capacity": cap}


def choose(vm: VmSpec, nodes: list[dict[str, Any]]) -> tuple[str, float]:
    """What the cluster service does with the registrations its watch holds."""
    return choose_among(vm, {d["node"]: free_placer(d["capacity"]) for d in nodes if usable(d)})


def test_choose_takes_the_roomiest_and_skips_down_nodes() -> None:
    nodes = [
        node("a", capacity(2048)),
        node("b", capacity(8192)),
        node("c", capacity(1 << 20), "down"),
    ]
    assert choose(spec(), nodes)[0] == "b"
    busy = [node("a", capacity(8192, shared_used=7)), node("b", capacity(4096))]
    assert choose(spec(vcpus=2), busy)[0] == "b"  # a has the memory but no shared slots
    assert choose(spec(), [node("a", capacity(4096)), node("b", capacity(4096))])[0] == "a"


def test_nowhere_is_insufficient_resources() -> None:
    with pytest.raises(errors.InsufficientResources, match="2 node"):
        choose(spec(memory_mib=10_000), [node("a", capacity(4096)), node("b", capacity(4096))])
    with pytest.raises(errors.InsufficientResources, match="0 node"):
        choose(spec(), [node("a", {})])


def test_a_cordoned_node_gets_no_new_vm() -> None:
    roomy = {**node("b", capacity(8192)), "cordon": {"since": 1.0, "reason": "", "by": "x"}}
    assert not usable(roomy)
    assert usable({**roomy, "cordon": None})
    assert choose(spec(), [node("a", capacity(2048)), roomy])[0] == "a"
    with pytest.raises(errors.InsufficientResources, match="0 node"):
        choose(spec(), [roomy])
