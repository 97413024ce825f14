from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.errors import InvalidParams
from novacron.net.nic import (
    MAX_NIC_LIMIT,
    MIN_NIC_LIMIT,
    NicLimits,
    NicSpec,
    check_unique,
    interface_xml,
    new_mac,
    parse_nic,
    parse_nic_limits,
)


def test_generated_macs_are_local_unicast_and_distinct() -> None:
    macs = {new_mac() for _ in range(200)}
    assert len(macs) > 190
    for mac in macs:
        assert mac.startswith("52:54:00:")
        assert parse_nic({"network": "n", "mac": mac}, "nic").mac == mac


def test_parse_defaults_and_given() -> None:
    nic = parse_nic({"network": "ov1"}, "nics[0]")
    assert (nic.network, nic.model) == ("ov1", "virtio") and nic.mac.startswith("52:54:00")
    given = parse_nic({"network": "ov1", "mac": "52:54:00:AA:bb:01", "model": "e1000"}, "n")
    assert given == NicSpec("ov1", "52:54:00:aa:bb:01", "e1000")


@pytest.mark.parametrize(
    "raw",
    [
        {"mac": "52:54:00:00:00:01"},
        {"network": "n", "mac": "01:00:5e:00:00:01"},  # multicast
        {"network": "n", "mac": "00:00:00:00:00:00"},
        {"network": "n", "mac": "52:54:00:00:00"},
        {"network": "n", "mac": "52-54-00-00-00-01"},
        {"network": "n", "model": "ne2k"},
        {"network": "n", "vlan": 5},
        {"network": "../x"},
        "ov1",
    ],
)
def test_bad_nics_are_refused(raw: object) -> None:
    with pytest.raises(InvalidParams):
        parse_nic(raw, "nic")


def test_duplicate_macs_refused() -> None:
    a = NicSpec("n", "52:54:00:00:00:01")
    with pytest.raises(InvalidParams):
        check_unique((a, a))
    check_unique((a, NicSpec("m", "52:54:00:00:00:02")))


def test_interface_xml() -> None:
    el = ET.fromstring(interface_xml(NicSpec("ov1", "52:54:00:00:00:01"), "ov1"))
    assert el.tag == "interface" and el.get("type") == "bridge"
    assert el.find("mac").get("address") == "52:54:00:00:00:01"  # type: ignore[union-attr]
    assert el.find("source").get("bridge") == "ov1"  # type: ignore[union-attr]
    assert el.find("model").get("type") == "virtio"  # type: ignore[union-attr]


limit = st.one_of(st.just(0), st.integers(MIN_NIC_LIMIT, MAX_NIC_LIMIT))


@given(
    inbound=limit,
    outbound=limit,
    model=st.sampled_from(["virtio", "e1000", "rtl8139"]),
)
def test_limits_round_trip_as_stored_and_as_requested(
    inbound: int, outbound: int, model: str
) -> None:
    """A NIC with any limits is stored and read back the same, and a request naming
    them parses to it; no limit set is no limits (``None``), stored without the key."""
    limits = NicLimits.of({"inbound_bytes_per_s": inbound, "outbound_bytes_per_s": outbound})
    nic = NicSpec("lan", "52:54:00:00:00:07", model, limits)
    stored = nic.to_dict()
    assert ("limits" in stored) == bool(inbound or outbound)
    assert NicSpec.from_dict(stored) == nic
    requested: dict[str, Any] = {"network": "lan", "mac": nic.mac, "model": model}
    if limits is not None:
        requested["limits"] = limits.to_dict()
    assert parse_nic(requested, "nic") == nic


@given(value=st.one_of(st.integers(), st.text(max_size=3), st.booleans(), st.none()))
def test_a_limit_out_of_range_or_not_an_integer_is_refused(value: object) -> None:
    good = type(value) is int and (value == 0 or MIN_NIC_LIMIT <= value <= MAX_NIC_LIMIT)
    raw = {"inbound_bytes_per_s": value}
    if good:
        assert parse_nic_limits("limits", raw) == raw
    else:
        with pytest.raises(InvalidParams) as refused:
            parse_nic_limits("limits", raw)
        assert refused.value.details["param"].startswith("limits")


def test_unknown_limits_and_non_maps_are_refused() -> None:
    for raw in ({"burst_bytes": 5}, [5], "fast"):
        with pytest.raises(InvalidParams):
            parse_nic_limits("limits", raw)
    with pytest.raises(InvalidParams, match=r"nic\.limits"):
        parse_nic({"network": "n", "limits": {"inbound_bytes_per_s": 10}}, "nic")
