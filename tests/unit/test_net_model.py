from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novacron.errors import InvalidParams
from novacron.net.model import IFNAMSIZ, NetworkSpec, parse_create, vxlan_overhead
from novacron.rpc.params import Params


def create(**args: Any) -> NetworkSpec:
    return parse_create(Params(dict(args)))


def test_bridge_defaults_and_devices() -> None:
    spec = create(name="br0")
    assert (spec.kind, spec.tenant, spec.mtu, spec.uplink, spec.link) == (
        "bridge",
        "default",
        None,
        None,
        None,
    )
    assert spec.bridge == "br0"
    assert NetworkSpec.from_dict(spec.to_dict()) == spec


def test_vlan_and_vxlan_name_their_link_after_the_network() -> None:
    vlan = create(name="t1", kind="vlan", parent="eth0", vlan_id=100, mtu=1400)
    assert (vlan.link, vlan.vlan_id, vlan.parent, vlan.mtu) == ("t1-v", 100, "eth0", 1400)
    vx = create(name="ov", kind="vxlan", vni=7, local="10.0.0.1", remotes=["10.0.0.2"])
    assert (vx.link, vx.port, vx.remotes, vx.group) == ("ov-x", 4789, ("10.0.0.2",), None)
    assert vxlan_overhead(vx) == 50
    six = create(name="ov6", kind="vxlan", vni=7, local="fd00::1", remotes=["fd00::2"])
    assert vxlan_overhead(six) == 70
    mc = create(name="mc", kind="vxlan", vni=9, local="10.0.0.1", group="239.1.1.1", device="eth1")
    assert (mc.group, mc.device, mc.remotes) == ("239.1.1.1", "eth1", ())
    for spec in (vlan, vx, six, mc):
        assert NetworkSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("args", "param"),
    [
        ({"name": "averyveryverylong"}, "name"),  # 17 > 13: the link name would pass IFNAMSIZ
        ({"name": "Br0"}, "name"),
        ({"name": "0br"}, "name"),
        ({"name": "br-0"}, "name"),
        ({"name": "br0", "kind": "ovs"}, "kind"),
        ({"name": "br0", "mtu": 67}, "mtu"),
        ({"name": "br0", "mtu": 65536}, "mtu"),
        ({"name": "br0", "uplink": "a" * 16}, "uplink"),
        ({"name": "br0", "uplink": "eth/0"}, "uplink"),
        ({"name": "v", "kind": "vlan", "parent": "eth0", "vlan_id": 0}, "vlan_id"),
        ({"name": "v", "kind": "vlan", "parent": "eth0", "vlan_id": 4095}, "vlan_id"),
        ({"name": "v", "kind": "vlan", "vlan_id": 5}, "parent"),
        ({"name": "v", "kind": "vlan", "parent": "eth0", "vlan_id": 5, "vni": 3}, None),
        (
            {"name": "x", "kind": "vxlan", "vni": 0, "local": "10.0.0.1", "remotes": ["10.0.0.2"]},
            "vni",
        ),
        (
            {
                "name": "x",
                "kind": "vxlan",
                "vni": 1 << 24,
                "local": "10.0.0.1",
                "remotes": ["1.1.1.1"],
            },
            "vni",
        ),
        ({"name": "x", "kind": "vxlan", "vni": 5, "local": "10.0.0.1"}, "remotes"),
        (
            {"name": "x", "kind": "vxlan", "vni": 5, "local": "nope", "remotes": ["1.1.1.1"]},
            "local",
        ),
        (
            {"name": "x", "kind": "vxlan", "vni": 5, "local": "10.0.0.1", "remotes": ["fd00::2"]},
            "remotes[0]",
        ),
        (
            {"name": "x", "kind": "vxlan", "vni": 5, "local": "10.0.0.1", "remotes": ["10.0.0.1"]},
            "remotes",
        ),
        (
            {
                "name": "x",
                "kind": "vxlan",
                "vni": 5,
                "local": "10.0.0.1",
                "remotes": ["1.1.1.1", "1.1.1.1"],
            },
            "remotes",
        ),
        (
            {
                "name": "x",
                "kind": "vxlan",
                "vni": 5,
                "local": "10.0.0.1",
                "group": "10.1.1.1",
                "device": "e",
            },
            "group",
        ),
        (
            {"name": "x", "kind": "vxlan", "vni": 5, "local": "10.0.0.1", "group": "239.1.1.1"},
            "device",
        ),
        (
            {
                "name": "x",
                "kind": "vxlan",
                "vni": 5,
                "local": "10.0.0.1",
                "group": "239.1.1.1",
                "device": "e",
                "remotes": ["1.1.1.1"],
            },
            "group",
        ),
        (
            {
                "name": "x",
                "kind": "vxlan",
                "vni": 5,
                "local": "10.0.0.1",
                "remotes": ["1.1.1.1"],
                "port": 0,
            },
            "port",
        ),
    ],
)
def test_bad_input_is_refused(args: dict[str, Any], param: str | None) -> None:
    with pytest.raises(InvalidParams) as caught:
        create(**args)
    if param is not None:
        assert caught.value.details.get("param") == param, caught.value.message


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {"name": st.text(min_size=0, max_size=20)},
        optional={
            "kind": st.sampled_from(["bridge", "vlan", "vxlan", "x"]),
            "uplink": st.text(max_size=20),
            "parent": st.text(max_size=20),
            "vlan_id": st.integers(-1, 5000),
            "vni": st.integers(-1, 1 << 25),
            "local": st.sampled_from(["10.0.0.1", "fd00::1", "x", ""]),
            "remotes": st.lists(
                st.sampled_from(["10.0.0.2", "10.0.0.3", "fd00::2", "?"]), max_size=3
            ),
            "mtu": st.integers(0, 70000),
        },
    )
)
def test_anything_accepted_fits_the_kernel(args: dict[str, Any]) -> None:
    """Whatever is accepted names devices that fit IFNAMSIZ and round-trips."""
    try:
        spec = create(**args)
    except InvalidParams:
        return
    for dev in (spec.bridge, spec.link, spec.uplink, spec.parent):
        if dev is not None:
            assert 0 < len(dev.encode()) < IFNAMSIZ
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
