"""From what the store says and what the kernel has to the changes that reconcile them.

Pure functions over a :class:`~novacron.net.kernel.Snapshot`: the same code decides what
``net.create`` does, what the periodic reconcile repairs, and what ``net.delete``
removes, so the three never disagree. A device of a network's name that NovaCron did
not make is never changed: the plan reports it as a problem instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from novacron import errors
from novacron.net.kernel import ALIAS_PREFIX, Action, Link, Snapshot
from novacron.net.model import MIN_MTU, NetworkSpec, vxlan_overhead

VXLAN_KEYS = ("vni", "local", "group", "port", "underlay")


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def alias(spec: NetworkSpec) -> str:
    return ALIAS_PREFIX + spec.name


def underlay(spec: NetworkSpec, snap: Snapshot) -> Link | None:
    """The interface a VXLAN network's packets leave by (its device, else the one
    holding its local address)."""
    name = spec.device or (snap.addresses.get(spec.local) if spec.local else None)
    return snap.links.get(name) if name else None


def overlay_mtu(spec: NetworkSpec, snap: Snapshot) -> int | None:
    """The MTU the network's bridge gets: the one asked for, else (VXLAN) the
    underlay's less the overlay's headers, else the kernel's default."""
    if spec.mtu is not None:
        return spec.mtu
    if spec.kind == "vxlan":
        below = underlay(spec, snap)
        return below.mtu - vxlan_overhead(spec) if below is not None else None
    return None


def _wanted_link(spec: NetworkSpec) -> dict[str, object]:
    if spec.kind == "vlan":
        return {"kind": "vlan", "parent": spec.parent, "vlan_id": spec.vlan_id}
    return {
        "kind": "vxlan",
        "vni": spec.vni,
        "local": spec.local,
        "group": spec.group,
        "port": spec.port,
        "underlay": spec.device,
    }


def _matches(link: Link, wanted: dict[str, object]) -> bool:
    if link.kind != wanted["kind"]:
        return False
    if link.kind == "bridge":
        return True
    keys = ("vlan_id", "parent") if link.kind == "vlan" else VXLAN_KEYS
    return all(link.info.get(k) == wanted.get(k) for k in keys)


def _ensure(
    plan: Plan,
    spec: NetworkSpec,
    snap: Snapshot,
    name: str,
    create: dict[str, object],
    mtu: int | None,
    master: str | None,
) -> bool:
    """Adds what makes device ``name`` exist as wanted; False if a stranger holds the name."""
    have = snap.links.get(name)
    if have is not None and have.network != spec.name:
        plan.problems.append(
            f"interface {name!r} exists on this host and is not NovaCron's "
            f"network {spec.name!r}; left alone"
        )
        return False
    if have is not None and not _matches(have, create):
        why = "not a bridge" if create["kind"] == "bridge" else "settings differ"
        plan.actions.append(Action("delete", name, {"reason": why}))
        have = None
    if have is None:
        plan.actions.append(Action("create", name, {**create, "alias": alias(spec)}))
    change: dict[str, object] = {}
    if master is not None and (have is None or have.master != master):
        change["master"] = master
    if mtu is not None and (have is None or have.mtu != mtu):
        change["mtu"] = mtu
    if have is None or not have.up:
        change["up"] = True
    if change:
        plan.actions.append(Action("set", name, change))
    return True


def _flood_entries(spec: NetworkSpec) -> frozenset[str]:
    """Destinations of a VXLAN network's all-zero forwarding entries: one per remote
    (head-end replication), or its multicast group (the kernel adds that entry itself
    when it makes the link)."""
    return frozenset({spec.group}) if spec.group is not None else frozenset(spec.remotes)


def _plan_fdb(plan: Plan, spec: NetworkSpec, snap: Snapshot) -> None:
    assert spec.link is not None
    want = _flood_entries(spec)
    have = snap.fdb.get(spec.link, frozenset())
    link = snap.links.get(spec.link)
    if link is None or not _matches(link, _wanted_link(spec)):
        # (re)created: the kernel starts it with the group's entry, or with none
        have = frozenset({spec.group}) if spec.group is not None else frozenset()
    for dst in sorted(want - have):
        args = {"dst": dst}
        if dst == spec.group and spec.device is not None:
            args["via"] = spec.device  # a multicast destination goes out of the underlay
        plan.actions.append(Action("fdb_add", spec.link, args))
    for dst in sorted(have - want):
        args = {"dst": dst}
        if via := snap.fdb_via.get((spec.link, dst)):
            args["via"] = via
        plan.actions.append(Action("fdb_del", spec.link, args))


def plan_network(spec: NetworkSpec, snap: Snapshot) -> Plan:
    """What brings the host to ``spec`` (an empty plan when it is there already)."""
    plan = Plan()
    mtu = overlay_mtu(spec, snap)
    if not _ensure(plan, spec, snap, spec.bridge, {"kind": "bridge"}, mtu, None):
        return plan
    if spec.link is not None:
        parent = spec.parent if spec.kind == "vlan" else spec.device
        if parent is not None and parent not in snap.links:
            plan.problems.append(
                f"{spec.kind} network {spec.name!r}: interface {parent!r} is missing"
            )
            return plan
        if not _ensure(plan, spec, snap, spec.link, _wanted_link(spec), mtu, spec.bridge):
            return plan
        if spec.kind == "vxlan":
            _plan_fdb(plan, spec, snap)
    if spec.uplink is not None:
        up = snap.links.get(spec.uplink)
        if up is None:
            plan.problems.append(f"bridge network {spec.name!r}: uplink {spec.uplink!r} is missing")
        elif up.master != spec.bridge or not up.up:
            plan.actions.append(Action("set", spec.uplink, {"master": spec.bridge, "up": True}))
    return plan


def plan_removal(spec: NetworkSpec, snap: Snapshot) -> Plan:
    """What removes the network's devices (and gives its uplink back)."""
    plan = Plan()
    if spec.uplink is not None:
        up = snap.links.get(spec.uplink)
        if up is not None and up.master == spec.bridge:
            plan.actions.append(Action("release", spec.uplink))
    for name in (spec.link, spec.bridge):
        have = snap.links.get(name) if name else None
        if have is not None and have.network == spec.name and name is not None:
            plan.actions.append(Action("delete", name))
    return plan


def plan_orphans(snap: Snapshot, known: set[str]) -> Plan:
    """Devices NovaCron made for networks the store no longer has (a crash between
    removing a network's row and its devices): links first, then bridges."""
    plan = Plan()
    stale = [ln for ln in snap.links.values() if ln.network is not None and ln.network not in known]
    for link in sorted(stale, key=lambda ln: (ln.kind == "bridge", ln.name)):
        plan.actions.append(Action("delete", link.name, {"reason": "network no longer exists"}))
    return plan


def check_create(spec: NetworkSpec, snap: Snapshot, networks: dict[str, NetworkSpec]) -> None:
    """Refuses (``invalid_params``/``already_exists``/``conflict``) what cannot be built on
    this host, before anything is changed."""
    for name in (spec.bridge, spec.link):
        have = snap.links.get(name) if name else None
        if have is not None:
            raise errors.AlreadyExists(
                f"interface {name!r} already exists on this host", {"device": name}
            )
    if spec.kind == "bridge" and spec.uplink is not None:
        _check_uplink(spec.uplink, snap, networks)
    if spec.kind == "vlan":
        if spec.parent not in snap.links:
            raise errors.InvalidParams(
                f"parent {spec.parent!r} is not an interface of this host", {"param": "parent"}
            )
        for other in networks.values():
            if other.kind == "vlan" and (other.parent, other.vlan_id) == (
                spec.parent,
                spec.vlan_id,
            ):
                raise errors.InvalidParams(
                    f"VLAN {spec.vlan_id} on {spec.parent!r} is network {other.name!r} already",
                    {"param": "vlan_id"},
                )
    if spec.kind == "vxlan":
        _check_vxlan(spec, snap, networks)


def _check_uplink(uplink: str, snap: Snapshot, networks: dict[str, NetworkSpec]) -> None:
    have = snap.links.get(uplink)
    if have is None:
        raise errors.InvalidParams(
            f"uplink {uplink!r} is not an interface of this host", {"param": "uplink"}
        )
    if have.network is not None or have.kind == "bridge" or uplink == "lo":
        raise errors.InvalidParams(
            f"uplink {uplink!r} must be a physical or virtual Ethernet port, not a bridge, "
            "loopback or a NovaCron device",
            {"param": "uplink"},
        )
    users = [n.name for n in networks.values() if n.uplink == uplink]
    if users or have.master is not None:
        raise errors.Conflict(
            f"uplink {uplink!r} is already a port of {users[0] if users else have.master!r}",
            {"param": "uplink"},
        )


def _check_vxlan(spec: NetworkSpec, snap: Snapshot, networks: dict[str, NetworkSpec]) -> None:
    if spec.local not in snap.addresses:
        raise errors.InvalidParams(
            f"local {spec.local} is not an address of this host", {"param": "local"}
        )
    if spec.device is not None and spec.device not in snap.links:
        raise errors.InvalidParams(
            f"device {spec.device!r} is not an interface of this host", {"param": "device"}
        )
    for other in networks.values():
        if other.kind == "vxlan" and other.vni == spec.vni and other.port == spec.port:
            raise errors.InvalidParams(
                f"VNI {spec.vni} (port {spec.port}) is network {other.name!r} already",
                {"param": "vni"},
            )
    below = underlay(spec, snap)
    if below is None:
        return
    room = below.mtu - vxlan_overhead(spec)
    if room < MIN_MTU:
        raise errors.InvalidParams(
            f"the underlay {below.name!r} (MTU {below.mtu}) is too small for an overlay: "
            f"VXLAN takes {vxlan_overhead(spec)} bytes of every frame",
            {"param": "mtu"},
        )
    if spec.mtu is not None and spec.mtu > room:
        raise errors.InvalidParams(
            f"mtu {spec.mtu} does not fit the underlay {below.name!r} (MTU {below.mtu}): "
            f"VXLAN takes {vxlan_overhead(spec)} bytes, so at most {room}",
            {"param": "mtu"},
        )
