from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from novacron.errors import InvalidParams
from novacron.net.nic import NicSpec, check_unique, interface_xml, new_mac, parse_nic


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
