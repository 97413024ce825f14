"""VM NICs: a network's bridge, a MAC address, a device model, and its bandwidth limits.

The NIC is written into the domain XML as ``<interface type='bridge'>`` on the
network's bridge (libvirt creates the tap and makes it a port of the bridge). A MAC not
given is generated in QEMU's locally administered range ``52:54:00:xx:xx:xx``. Limits
are not libvirt's (``<bandwidth>`` needs ``sch_sfq``): the daemon shapes the tap itself
(:mod:`novacron.net.shaping`).
"""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, fields
from typing import Any

from novacron.errors import InvalidParams
from novacron.rpc.params import check_int, check_name

MAX_NICS = 8
MODELS = ("virtio", "e1000", "rtl8139")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
QEMU_OUI = "52:54:00"


# a limit, bytes a second: at least 1,000 (8 kbit/s); at most what the kernel's token
# bucket takes in its 32-bit rate (about 34 Gbit/s)
MIN_NIC_LIMIT = 1000
MAX_NIC_LIMIT = (1 << 32) - 1


@dataclass(frozen=True)
class NicLimits:
    """How fast traffic may flow to (``inbound``) and from (``outbound``) the guest
    through a NIC, bytes a second (0: no limit)."""

    inbound_bytes_per_s: int = 0
    outbound_bytes_per_s: int = 0

    def to_dict(self) -> dict[str, int]:
        """The limits set (no key for one that is not)."""
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def of(cls, values: dict[str, int]) -> NicLimits | None:
        """The limits ``values`` names; None when it sets none."""
        limits = cls(**values)
        return limits if limits.to_dict() else None


NIC_LIMIT_KEYS = tuple(f.name for f in fields(NicLimits))


def parse_nic_limits(what: str, raw: Any) -> dict[str, int]:
    """A map of NIC limits (``what``: its name in errors): ``inbound_bytes_per_s`` and
    ``outbound_bytes_per_s``, each 0 (none) or 1,000 to 2^32 - 1."""
    if not isinstance(raw, dict):
        raise InvalidParams(f"{what} must be a map", {"param": what})
    unknown = set(raw) - set(NIC_LIMIT_KEYS)
    if unknown:
        raise InvalidParams(
            f"{what}: unknown key(s) {sorted(map(str, unknown))} (known: "
            f"{', '.join(NIC_LIMIT_KEYS)})",
            {"param": what},
        )
    out = {k: check_int(v, f"{what}.{k}", 0, MAX_NIC_LIMIT) for k, v in raw.items()}
    for k, v in out.items():
        if 0 < v < MIN_NIC_LIMIT:
            raise InvalidParams(
                f"{what}.{k} must be 0 (no limit) or at least {MIN_NIC_LIMIT} bytes a second",
                {"param": f"{what}.{k}"},
            )
    return out


@dataclass(frozen=True)
class NicSpec:
    network: str
    mac: str
    model: str = "virtio"
    limits: NicLimits | None = None  # None: unshaped

    def to_dict(self) -> dict[str, Any]:
        """As stored: ``limits`` only when set (a spec without them stays readable by
        releases before them)."""
        doc: dict[str, Any] = {"network": self.network, "mac": self.mac, "model": self.model}
        if self.limits is not None:
            doc["limits"] = self.limits.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NicSpec:
        limits = doc.get("limits")
        return cls(**{**doc, "limits": None if limits is None else NicLimits.of(limits)})


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
    """One NIC of a request: ``{network, mac?, model?, limits?}``."""
    if not isinstance(raw, dict):
        raise InvalidParams(f"{what} must be a map", {"param": what})
    unknown = set(raw) - {"network", "mac", "model", "limits"}
    if unknown:
        raise InvalidParams(f"{what}: unknown key(s) {sorted(map(str, unknown))}", {"param": what})
    network = check_name(raw.get("network"), f"{what}.network")
    mac = check_mac(raw["mac"], f"{what}.mac") if raw.get("mac") is not None else new_mac()
    model = raw.get("model", "virtio")
    if model not in MODELS:
        raise InvalidParams(f"{what}.model must be one of {', '.join(MODELS)}", {"param": what})
    limits = None
    if raw.get("limits") is not None:
        limits = NicLimits.of(parse_nic_limits(f"{what}.limits", raw["limits"]))
    return NicSpec(network=network, mac=mac, model=model, limits=limits)


def stored_nic(raw: Any, what: str) -> NicSpec:
    """One NIC of a spec as stored (``to_dict``'s form) that came from elsewhere, checked
    as :func:`parse_nic` checks a request's, its MAC required."""
    if not isinstance(raw, dict) or raw.get("mac") is None:
        raise InvalidParams(f"{what} must be a map with a mac", {"param": what})
    return parse_nic(raw, what)


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
