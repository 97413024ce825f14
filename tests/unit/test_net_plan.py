"""The planner over kernel snapshots built by hand (the real kernel is exercised in
tests/integration/test_networks.py)."""

from __future__ import annotations

from typing import Any

import pytest

from novacron import errors
from novacron.net.kernel import ALIAS_PREFIX, Link, Snapshot
from novacron.net.model import NetworkSpec
from novacron.net.plan import check_create, plan_network, plan_orphans, plan_removal


def link(name: str, kind: str | None = "veth", **kw: Any) -> Link:
    base: dict[str, Any] = {"index": 1, "master": None, "mtu": 1500, "up": True, "oper": "UP"}
    return Link(name=name, kind=kind, **{**base, **kw})


def ours(name: str, net: str, kind: str = "bridge", **kw: Any) -> Link:
    return link(name, kind, alias=ALIAS_PREFIX + net, **kw)


def snap(*links: Link, fdb: dict[str, frozenset[str]] | None = None) -> Snapshot:
    return Snapshot({ln.name: ln for ln in links}, fdb or {}, {"10.0.0.1": "eth1"})


BRIDGE = NetworkSpec(name="br0", kind="bridge", uplink="eth0")
VX = NetworkSpec(name="ov", kind="vxlan", vni=7, local="10.0.0.1", remotes=("10.0.0.2", "10.0.0.3"))
VX_INFO = {"vni": 7, "local": "10.0.0.1", "group": None, "port": 4789, "underlay": None}


def ops(plan: Any) -> list[tuple[str, str]]:
    return [(a.op, a.device) for a in plan.actions]


def test_bridge_from_nothing() -> None:
    plan = plan_network(BRIDGE, snap(link("eth0")))
    assert ops(plan) == [("create", "br0"), ("set", "br0"), ("set", "eth0")]
    assert plan.actions[0].args == {"kind": "bridge", "alias": ALIAS_PREFIX + "br0"}
    assert plan.actions[2].args == {"master": "br0", "up": True}
    assert not plan.problems


def test_nothing_to_do_when_the_kernel_matches() -> None:
    have = snap(link("eth0", master="br0"), ours("br0", "br0"))
    assert plan_network(BRIDGE, have).actions == []


def test_a_stranger_holding_the_name_is_left_alone() -> None:
    plan = plan_network(BRIDGE, snap(link("eth0"), link("br0", "bridge")))
    assert plan.actions == [] and "not NovaCron's" in plan.problems[0]


def test_missing_uplink_is_a_problem_not_an_action() -> None:
    plan = plan_network(BRIDGE, snap(ours("br0", "br0")))
    assert plan.actions == [] and "uplink 'eth0' is missing" in plan.problems[0]


def test_vxlan_from_nothing_takes_the_underlay_mtu_less_the_overhead() -> None:
    plan = plan_network(VX, snap(link("eth1", mtu=9000)))
    assert ops(plan) == [
        ("create", "ov"),
        ("set", "ov"),
        ("create", "ov-x"),
        ("set", "ov-x"),
        ("fdb_add", "ov-x"),
        ("fdb_add", "ov-x"),
    ]
    assert plan.actions[1].args == {"mtu": 8950, "up": True}
    assert plan.actions[3].args == {"master": "ov", "mtu": 8950, "up": True}
    assert [a.args["dst"] for a in plan.actions[4:]] == ["10.0.0.2", "10.0.0.3"]


def test_vxlan_changed_settings_recreate_the_link_and_its_fdb() -> None:
    have = snap(
        link("eth1"),
        ours("ov", "ov", mtu=1450),
        ours("ov-x", "ov", "vxlan", master="ov", mtu=1450, info={**VX_INFO, "vni": 8}),
        fdb={"ov-x": frozenset({"10.0.0.2", "10.0.0.3"})},
    )
    plan = plan_network(VX, have)
    assert ops(plan)[:3] == [("delete", "ov-x"), ("create", "ov-x"), ("set", "ov-x")]
    assert [a.op for a in plan.actions[3:]] == ["fdb_add", "fdb_add"]


def test_vxlan_fdb_drift_is_repaired_both_ways() -> None:
    have = snap(
        link("eth1"),
        ours("ov", "ov", mtu=1450),
        ours("ov-x", "ov", "vxlan", master="ov", mtu=1450, info=VX_INFO),
        fdb={"ov-x": frozenset({"10.0.0.2", "10.0.0.9"})},
    )
    plan = plan_network(VX, have)
    assert [(a.op, a.args["dst"]) for a in plan.actions] == [
        ("fdb_add", "10.0.0.3"),
        ("fdb_del", "10.0.0.9"),
    ]


VX_GROUP = NetworkSpec(
    name="ov", kind="vxlan", vni=7, local="10.0.0.1", group="239.1.1.7", device="eth1"
)
GROUP_INFO = {**VX_INFO, "group": "239.1.1.7", "underlay": "eth1"}


def group_snap(entries: frozenset[str]) -> Snapshot:
    return snap(
        link("eth1"),
        ours("ov", "ov", mtu=1450),
        ours("ov-x", "ov", "vxlan", master="ov", mtu=1450, info=GROUP_INFO),
        fdb={"ov-x": entries},
    )


def test_a_multicast_overlay_keeps_the_entry_the_kernel_gave_its_group() -> None:
    assert plan_network(VX_GROUP, group_snap(frozenset({"239.1.1.7"}))).actions == []
    # made from nothing: the kernel adds the group's entry itself
    made = plan_network(VX_GROUP, snap(link("eth1")))
    assert [a.op for a in made.actions] == ["create", "set", "create", "set"]


def test_a_multicast_overlay_gets_its_group_entry_back_and_loses_strays() -> None:
    plan = plan_network(VX_GROUP, group_snap(frozenset({"10.0.0.9"})))
    assert [(a.op, a.args) for a in plan.actions] == [
        ("fdb_add", {"dst": "239.1.1.7", "via": "eth1"}),
        ("fdb_del", {"dst": "10.0.0.9"}),
    ]


def test_removal_releases_the_uplink_then_deletes_link_and_bridge() -> None:
    have = snap(
        link("eth1"),
        ours("ov", "ov"),
        ours("ov-x", "ov", "vxlan", master="ov", info=VX_INFO),
        link("eth0", master="br0"),
        ours("br0", "br0"),
    )
    assert ops(plan_removal(VX, have)) == [("delete", "ov-x"), ("delete", "ov")]
    assert ops(plan_removal(BRIDGE, have)) == [("release", "eth0"), ("delete", "br0")]
    stranger = snap(link("br0", "bridge"))
    assert plan_removal(BRIDGE, stranger).actions == []


def test_orphans_links_before_bridges_and_only_ours() -> None:
    have = snap(
        ours("gone", "gone"),
        ours("gone-x", "gone", "vxlan"),
        ours("br0", "br0"),
        link("x", "bridge"),
    )
    assert ops(plan_orphans(have, {"br0"})) == [("delete", "gone-x"), ("delete", "gone")]


@pytest.mark.parametrize(
    ("spec", "have", "error"),
    [
        (BRIDGE, snap(link("eth0"), link("br0", "bridge")), errors.AlreadyExists),
        (BRIDGE, snap(), errors.InvalidParams),
        (BRIDGE, snap(link("eth0", master="other")), errors.Conflict),
        (BRIDGE, snap(link("eth0", "bridge")), errors.InvalidParams),
        (
            NetworkSpec(name="v", kind="vlan", parent="eth9", vlan_id=5),
            snap(),
            errors.InvalidParams,
        ),
        (
            NetworkSpec(name="ov", kind="vxlan", vni=7, local="10.9.9.9", remotes=("10.0.0.2",)),
            snap(link("eth1")),
            errors.InvalidParams,
        ),
        (
            NetworkSpec(
                name="ov", kind="vxlan", vni=7, local="10.0.0.1", remotes=("10.0.0.2",), mtu=1451
            ),
            snap(link("eth1")),
            errors.InvalidParams,
        ),
        (VX, snap(link("eth1", mtu=100)), errors.InvalidParams),
    ],
)
def test_check_create_refuses(spec: NetworkSpec, have: Snapshot, error: type) -> None:
    with pytest.raises(error):
        check_create(spec, have, {})


def test_check_create_refuses_overlaps() -> None:
    with pytest.raises(errors.InvalidParams, match="VNI 7"):
        check_create(
            VX,
            snap(link("eth1")),
            {
                "old": NetworkSpec(
                    name="old", kind="vxlan", vni=7, local="10.0.0.1", remotes=("10.0.0.5",)
                )
            },
        )
    vlan = NetworkSpec(name="v", kind="vlan", parent="eth0", vlan_id=5)
    with pytest.raises(errors.InvalidParams, match="VLAN 5"):
        check_create(
            vlan,
            snap(link("eth0")),
            {"w": NetworkSpec(name="w", kind="vlan", parent="eth0", vlan_id=5)},
        )
    with pytest.raises(errors.Conflict):
        check_create(
            BRIDGE, snap(link("eth0")), {"b2": NetworkSpec(name="b2", kind="bridge", uplink="eth0")}
        )
    check_create(VX, snap(link("eth1")), {})  # fits: no error
