from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron import errors
from novacron.cluster.scoring import (
    choose_among,
    free_placer,
    short_of_storage,
    usable,
    with_storage_for,
)
from novacron.vm.spec import DiskSpec, VmSpec


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


def spec(
    vcpus: int = 1, memory_mib: int = 512, cpu: str = "shared", disks: tuple[DiskSpec, ...] = ()
) -> VmSpec:
    return VmSpec(name="v", vcpus=vcpus, memory_mib=memory_mib, cpu_policy=cpu, disks=disks)


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


def test_a_node_short_of_storage_gets_no_vm_with_new_volumes() -> None:
    short = {**node("b", capacity(8192)), "storage": {"short": True}}
    nodes = [node("a", capacity(2048)), short]
    docs = {d["node"]: d for d in nodes}
    placers = {d["node"]: free_placer(d["capacity"]) for d in nodes}
    volumes = spec(disks=(DiskSpec(size_gib=10),))
    assert choose_among(volumes, with_storage_for(volumes, placers, docs))[0] == "a"
    # no new volume (no disk, or an image given by path): the roomiest, as ever
    for without in (spec(), spec(disks=(DiskSpec(path="/srv/vm.qcow2"),))):
        assert choose_among(without, with_storage_for(without, placers, docs))[0] == "b"
    with pytest.raises(errors.InsufficientResources, match="storage pool") as caught:
        with_storage_for(volumes, {"b": placers["b"]}, docs)
    assert caught.value.details == {"nodes_short_of_storage": ["b"]}
    # not known yet, or an older release's registration: not short
    assert not short_of_storage({**short, "storage": {"short": None}})
    assert not short_of_storage(node("c", capacity(1)))


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from([None, {}, {"short": True}, {"short": False}, {"short": None}]),
        min_size=1,
    ),
    st.booleans(),
)
def test_new_volumes_go_only_where_the_pool_is_not_short(
    storage: dict[str, Any], volumes: bool
) -> None:
    docs = {name: {"node": name, "storage": s} for name, s in storage.items()}
    placers = {name: free_placer(capacity(4096)) for name in storage}
    vm = spec(disks=(DiskSpec(size_gib=1),) if volumes else ())
    short = {n for n, s in storage.items() if isinstance(s, dict) and s.get("short") is True}
    if volumes and short == set(storage):
        with pytest.raises(errors.InsufficientResources):
            with_storage_for(vm, placers, docs)
        return
    kept = with_storage_for(vm, placers, docs)
    assert set(kept) == (set(storage) - short if volumes else set(storage))
