"""The placement engine through ``novacron._core.Placer``: hypothesis properties over
synthetic topologies (1-8 nodes, SMT on/off, uneven memory, hugepage pools) and
random sequences of VMs created and deleted."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron import errors
from novacron._core import Placer, format_cpuset, parse_cpuset


@st.composite
def hosts(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int], list[int], dict[int, int]]:
    count = draw(st.integers(1, 8))
    smt = draw(st.sampled_from([1, 2]))
    nodes, node_of = [], {}
    cpu = core = 0
    for n in range(count):
        cpus = []
        for _ in range(draw(st.integers(1, 6))):
            for _ in range(smt):
                cpus.append((cpu, core))
                node_of[cpu] = n
                cpu += 1
            core += 1
        memory = draw(st.integers(1024, 32768))
        huge = draw(st.integers(0, memory // 8))
        nodes.append(
            {
                "id": n,
                "memory_mib": memory,
                "cpus": cpus,
                "hugepages": {2048: huge},
                "distances": {m: 10 if m == n else 20 + abs(m - n) for m in range(count)},
            }
        )
    roles = draw(st.lists(st.sampled_from("dsh"), min_size=cpu, max_size=cpu))
    dedicated = [c for c in range(cpu) if roles[c] == "d"]
    shared = [c for c in range(cpu) if roles[c] == "s"]
    return nodes, dedicated, shared, node_of


requests = st.tuples(
    st.integers(1, 16),
    st.sampled_from([64, 512, 2048, 8192, 40000]),
    st.sampled_from(["shared", "dedicated"]),
    st.sampled_from(["strict", "preferred", "interleave"]),
    st.sampled_from([None, None, 2048]),
)

steps = st.lists(st.one_of(requests, st.integers(0, 50)), min_size=1, max_size=40)


def fits_one_node(free: list[dict[str, Any]], req: tuple[Any, ...]) -> bool:
    vcpus, memory, cpu, _mode, huge = req
    for n in free:
        mem = n["memory_free_mib"] if huge is None else n["hugepages"][huge][0] * huge // 1024
        if cpu == "dedicated":
            ok = len(n["dedicated_free"]) >= vcpus
        else:
            ok = (
                len(n["shared_cpus"]) >= vcpus and n["shared_vcpus"] + vcpus <= n["shared_capacity"]
            )
        if ok and mem >= memory:
            return True
    return False


@given(hosts(), steps)
def test_vms_coming_and_going_keep_every_invariant(host: Any, plan: list[Any]) -> None:
    nodes, dedicated, shared, node_of = host
    placer = Placer(nodes, dedicated_cpus=dedicated, shared_cpus=shared, reserved_memory_mib=256)
    empty = placer.free()
    live: dict[str, dict[str, Any]] = {}
    for i, step in enumerate(plan):
        if isinstance(step, int):
            if live:
                vm = sorted(live)[step % len(live)]
                assert placer.release(vm)
                del live[vm]
            continue
        vcpus, memory, cpu, mode, huge = step
        before = placer.free()
        try:
            decision = placer.place(vcpus, memory, cpu, mode, huge)
        except errors.InsufficientResources as exc:
            assert "cannot place" in str(exc) or "hugepage" in str(exc)
            assert not fits_one_node(before, step)
            assert placer.free() == before
            continue
        # deterministic: the same state and request, the same answer
        assert placer.place(vcpus, memory, cpu, mode, huge) == decision
        allocated = placer.allocate(f"vm{i}", vcpus, memory, cpu, mode, huge)
        assert allocated == decision and allocated.cpu == cpu
        got = allocated.to_dict()
        assert got == decision.to_dict()
        assert allocated.nodes == [c["node"] for c in got["cells"]]
        if cpu == "dedicated":
            assert allocated.vcpu_cpus(vcpus - 1) == [got["cells"][-1]["cpus"][-1]]
        assert allocated.vcpu_cpus(vcpus) is None
        if fits_one_node(before, step):
            assert len(got["cells"]) == 1, "a VM that fits one node was split"
        assert sum(c["vcpus"] for c in got["cells"]) == vcpus
        assert sum(c["memory_kib"] for c in got["cells"]) == memory * 1024
        for cell in got["cells"]:
            # memory binding (the cell's node) matches its CPUs' node
            assert {node_of[c] for c in cell["cpus"]} == {cell["node"]}
        live[f"vm{i}"] = got
        # releasing it now restores exactly the state before
        assert placer.release(f"vm{i}")
        assert placer.free() == before
        placer.commit(f"vm{i}", got)
        # dedicated threads are never shared between VMs
        held = [
            c
            for p in live.values()
            if p["cpu"] == "dedicated"
            for x in p["cells"]
            for c in x["cpus"]
        ]
        assert len(held) == len(set(held))
        assert set(held) <= set(dedicated)
    for vm in list(live):
        placer.release(vm)
    assert placer.free() == empty
    assert len(placer) == 0


def two_nodes() -> list[dict[str, Any]]:
    return [
        {"id": n, "memory_mib": 4096, "cpus": [(n * 8 + t, n * 4 + t // 2) for t in range(8)]}
        for n in range(2)
    ]


def test_refusal_names_the_scarce_resource() -> None:
    placer = Placer(two_nodes(), dedicated_cpus=parse_cpuset("2-7,10-15"))
    placer.allocate("a", 4, 512, "dedicated")
    with pytest.raises(errors.InsufficientResources) as err:
        placer.place(6, 7000, "dedicated")
    assert err.value.code == "insufficient_resources"
    assert "MiB" in err.value.message


def test_commit_refuses_a_taken_thread() -> None:
    placer = Placer(two_nodes(), dedicated_cpus=parse_cpuset("2-7,10-15"))
    got = placer.allocate("a", 2, 512, "dedicated")
    with pytest.raises(errors.Conflict):
        placer.commit("b", got.to_dict())
    with pytest.raises(ValueError, match="cells"):
        placer.commit("c", {"cpu": "dedicated"})
    assert placer.allocation("a") == got
    assert placer.allocation("b") is None


def test_bad_topology_and_partition_are_refused() -> None:
    with pytest.raises(errors.EngineError, match="both dedicated and shared"):
        Placer(two_nodes(), dedicated_cpus=[1], shared_cpus=[1])
    with pytest.raises(errors.EngineError, match="not in the host topology"):
        Placer(two_nodes(), dedicated_cpus=[99])
    with pytest.raises(ValueError, match="missing"):
        Placer([{"id": 0}])
    with pytest.raises(ValueError, match="unknown cpu policy"):
        Placer(two_nodes()).place(1, 64, "exclusive")


def test_score_prefers_room() -> None:
    empty = Placer(two_nodes(), shared_cpus=parse_cpuset("0-15"))
    busy = Placer(two_nodes(), shared_cpus=parse_cpuset("0-15"))
    busy.allocate("x", 8, 4096)
    empty_score, busy_score = empty.score(2, 512), busy.score(2, 512)
    assert empty_score is not None and busy_score is not None and empty_score > busy_score
    assert busy.score(2, 100_000) is None


@given(st.lists(st.integers(0, 300), max_size=40))
def test_cpuset_text_round_trips(cpus: list[int]) -> None:
    text = format_cpuset(cpus)
    assert parse_cpuset(text) == sorted(set(cpus))


@given(hosts(), st.lists(requests, max_size=20))
def test_place_many_is_place_for_each(host: Any, reqs: list[Any]) -> None:
    nodes, dedicated, shared, _ = host
    placer = Placer(nodes, dedicated_cpus=dedicated, shared_cpus=shared)
    if shared or dedicated:
        try:
            placer.allocate("seed", 1, 64, "shared" if shared else "dedicated")
        except errors.InsufficientResources:
            pass
    expected: list[Any] = []
    for req in reqs:
        try:
            expected.append(placer.place(*req))
        except errors.InsufficientResources:
            expected.append(None)
    assert placer.place_many(reqs) == expected
