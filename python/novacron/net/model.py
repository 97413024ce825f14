"""Network objects: the validated form of ``net.create`` and the kernel devices each
network is made of.

Every network is a Linux bridge named after it (VM NICs attach to that bridge). A
``vlan`` network adds an 802.1Q link ``<name>-v`` on its parent, a ``vxlan`` network a
VXLAN link ``<name>-x``; both are ports of the network's bridge. A ``bridge`` network
may take a host interface as its uplink. Names are short enough that the kernel name of
every device fits IFNAMSIZ (15 characters plus the terminating NUL).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from novacron.errors import InvalidParams
from novacron.rpc.params import Params

KINDS = ("bridge", "vlan", "vxlan")
IFNAMSIZ = 16  # bytes, NUL included: 15 usable
SUFFIX = {"vlan": "-v", "vxlan": "-x"}
MAX_NAME = IFNAMSIZ - 1 - 2  # room for the helper link's suffix
NET_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
MIN_MTU = 68
MAX_MTU = 65535
VXLAN_PORT = 4789
MAX_VNI = (1 << 24) - 1
MAX_REMOTES = 256
VXLAN_OVERHEAD = {4: 50, 6: 70}  # outer IP + UDP + VXLAN + inner Ethernet header


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    kind: str
    tenant: str = "default"
    mtu: int | None = (
        None  # None: the kernel's default (or, for vxlan, the underlay's less the overhead)
    )
    uplink: str | None = None  # bridge: a host interface made a port of the bridge
    parent: str | None = None  # vlan: a host interface or a bridge network carrying the tags
    vlan_id: int | None = None
    vni: int | None = None
    local: str | None = None  # vxlan: this host's underlay address
    remotes: tuple[str, ...] = field(default_factory=tuple)  # vxlan: unicast peers
    group: str | None = None  # vxlan: multicast group instead of remotes
    device: str | None = None  # vxlan: underlay interface (required with a group)
    port: int = VXLAN_PORT

    @property
    def bridge(self) -> str:
        """The kernel name of the network's bridge (what VM NICs attach to)."""
        return self.name

    @property
    def link(self) -> str | None:
        """The kernel name of the network's VLAN or VXLAN link, if it has one."""
        suffix = SUFFIX.get(self.kind)
        return self.name + suffix if suffix else None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["remotes"] = list(self.remotes)
        return {k: v for k, v in doc.items() if v is not None}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NetworkSpec:
        return cls(**{**doc, "remotes": tuple(doc.get("remotes", ()))})


def check_ifname(value: Any, what: str) -> str:
    if not isinstance(value, str) or not IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidParams(
            f"{what} must be an interface name of 1-15 characters (IFNAMSIZ)", {"param": what}
        )
    return value


def check_address(value: Any, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        raise InvalidParams(f"{what} must be an IPv4 or IPv6 address", {"param": what}) from None


def _net_name(p: Params) -> str:
    value = p.text("name", max_len=64)
    if len(value.encode()) > MAX_NAME:
        raise InvalidParams(
            f"name must be at most {MAX_NAME} characters: the kernel allows "
            f"{IFNAMSIZ - 1} per interface name (IFNAMSIZ) and NovaCron names the "
            "network's VLAN or VXLAN link after it with a 2-character suffix",
            {"param": "name"},
        )
    if not NET_NAME_RE.fullmatch(value):
        raise InvalidParams(
            "name must be lowercase letters, digits and '_', starting with a letter",
            {"param": "name"},
        )
    return value


def _vxlan(p: Params) -> dict[str, Any]:
    vni = p.integer("vni", 1, MAX_VNI)
    local = check_address(p.text("local", max_len=64), "local")
    group_raw = p.opt_text("group", max_len=64)
    remotes_raw = p.array("remotes", MAX_REMOTES)
    device = p.opt_text("device", max_len=64)
    if device is not None:
        check_ifname(device, "device")
    port = p.integer("port", 1, 65535, default=VXLAN_PORT)
    remotes = [check_address(r, f"remotes[{i}]") for i, r in enumerate(remotes_raw)]
    group = check_address(group_raw, "group") if group_raw is not None else None
    if group is not None and remotes:
        raise InvalidParams(
            "give either remotes or a multicast group, not both", {"param": "group"}
        )
    if group is None and not remotes:
        raise InvalidParams(
            "a vxlan network needs remotes or a multicast group", {"param": "remotes"}
        )
    if group is not None:
        if not group.is_multicast:
            raise InvalidParams("group must be a multicast address", {"param": "group"})
        if device is None:
            raise InvalidParams("a multicast group needs the underlay device", {"param": "device"})
    for what, addr in (("group", group), *((f"remotes[{i}]", r) for i, r in enumerate(remotes))):
        if addr is not None and addr.version != local.version:
            raise InvalidParams(f"{what} and local must be of the same IP version", {"param": what})
    if len({str(r) for r in remotes}) != len(remotes):
        raise InvalidParams("remotes lists an address twice", {"param": "remotes"})
    if str(local) in {str(r) for r in remotes}:
        raise InvalidParams("remotes lists this host's own local address", {"param": "remotes"})
    return {
        "vni": vni,
        "local": str(local),
        "remotes": tuple(str(r) for r in remotes),
        "group": str(group) if group is not None else None,
        "device": device,
        "port": port,
    }


def parse_create(p: Params) -> NetworkSpec:
    """Reads ``net.create`` arguments (checks that need the host are in the service)."""
    name = _net_name(p)
    kind = p.choice("kind", KINDS, "bridge")
    tenant = p.name("tenant", default="default")
    mtu = p.integer("mtu", MIN_MTU, MAX_MTU, default=0) or None
    extra: dict[str, Any] = {}
    if kind == "bridge":
        uplink = p.opt_text("uplink", max_len=64)
        extra["uplink"] = check_ifname(uplink, "uplink") if uplink is not None else None
    elif kind == "vlan":
        extra["parent"] = check_ifname(p.text("parent", max_len=64), "parent")
        extra["vlan_id"] = p.integer("vlan_id", 1, 4094)
    else:
        extra.update(_vxlan(p))
    p.done()
    return NetworkSpec(name=name, kind=kind, tenant=tenant, mtu=mtu, **extra)


def vxlan_overhead(spec: NetworkSpec) -> int:
    """Bytes the overlay adds to every frame on the underlay."""
    assert spec.local is not None
    return VXLAN_OVERHEAD[ipaddress.ip_address(spec.local).version]
