"""VM NICs: a network's bridge, a MAC address, a device model.

The NIC is written into the domain XML as ``<interface type='bridge'>`` on the
network's bridge (libvirt creates the tap and makes it a port of the bridge). A MAC not
given is generated in QEMU's locally administered range ``52:54:00:xx:xx:xx``.
"""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from novacron.errors import InvalidParams
from novacron.rpc.params import check_name

MAX_NICS = 8
MODELS = ("virtio", "e1000", "rtl8139")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
QEMU_OUI = "52:54:00"


@dataclass(frozen=True)
class NicSpec:
    network: str
    mac: str
    model: str = "virtio"

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network, "mac": self.mac, "model": self.model}


def new_mac() -> str:
    tail = secrets.token_bytes(3)
    return QEMU_OUI + "".join(f":{b:02x}" for b in tail)


def check_mac(value: Any, what: str) -> str:
    mac = value.lower() if isinstance(value, str) else ""
    if not MAC_RE.fullmatch(mac):
        raise InvalidParams(f"{what} must be a MAC address like 52:54:00:12:34:56", {"param": what})
    if int(mac[:2], 16) & 1:
        raise InvalidParams(f"{what} must be a unicast MAC address", {"param": what})
    if mac == "00:00:00:00:00:00":
        raise InvalidParams(f"{what} must not be all zeros", {"param": what})
    return mac


def parse_nic(raw: Any, what: str) -> NicSpec:
    """One NIC of a request: ``{network, mac?, model?}``."""
    if not isinstance(raw, dict):
        raise InvalidParams(f"{what} must be a map", {"param": what})
    unknown = set(raw) - {"network", "mac", "model"}
    if unknown:
        raise InvalidParams(f"{what}: unknown key(s) {sorted(map(str, unknown))}", {"param": what})
    network = check_name(raw.get("network"), f"{what}.network")
    mac = check_mac(raw["mac"], f"{what}.mac") if raw.get("mac") is not None else new_mac()
    model = raw.get("model", "virtio")
    if model not in MODELS:
        raise InvalidParams(f"{what}.model must be one of {', '.join(MODELS)}", {"param": what})
    return NicSpec(network=network, mac=mac, model=model)


def check_unique(nics: tuple[NicSpec, ...]) -> None:
    macs = [n.mac for n in nics]
    if len(set(macs)) != len(macs):
        raise InvalidParams("two NICs have the same MAC address", {"param": "nics"})
    if len(nics) > MAX_NICS:
        raise InvalidParams(f"a VM has at most {MAX_NICS} NICs", {"param": "nics"})


def interface_element(nic: NicSpec, bridge: str) -> ET.Element:
    """``<interface type='bridge'>`` for ``nic`` on ``bridge``."""
    iface = ET.Element("interface", {"type": "bridge"})
    ET.SubElement(iface, "mac", {"address": nic.mac})
    ET.SubElement(iface, "source", {"bridge": bridge})
    ET.SubElement(iface, "model", {"type": nic.model})
    return iface


def interface_xml(nic: NicSpec, bridge: str) -> str:
    return ET.tostring(interface_element(nic, bridge), encoding="unicode")
