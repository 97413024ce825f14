"""The host's links as netlink reports them, and the changes NovaCron makes to them.

Everything here is blocking pyroute2 and runs on a worker thread (the network
service's pool, one call at a time, one long-lived command socket). The link watch
owns a second socket on a thread of its own: pyroute2 0.9 only delivers broadcast
messages to the thread that created the socket.

Devices NovaCron creates carry the interface alias ``novacron:net:<network>``: that is
how a device is known to be the daemon's (and an unmarked device of the same name is
never touched).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from novacron import errors
from novacron.logs import kv

log = logging.getLogger("novacron.net")

ALIAS_PREFIX = "novacron:net:"
ZERO_MAC = "00:00:00:00:00:00"
IFF_UP = 0x1


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    master: str | None
    mtu: int
    up: bool
    oper: str
    alias: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # kind-specific: vlan_id, vni, ...

    @property
    def network(self) -> str | None:
        """The network this device was made for, if NovaCron made it."""
        if self.alias and self.alias.startswith(ALIAS_PREFIX):
            return self.alias[len(ALIAS_PREFIX) :]
        return None


@dataclass(frozen=True)
class Snapshot:
    links: dict[str, Link]
    fdb: dict[str, frozenset[str]]  # vxlan device -> destinations of its all-zero entries
    addresses: dict[str, str]  # address -> the interface holding it
    # (vxlan device, destination) -> the interface an entry goes out of, where it names one
    fdb_via: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """One change to the host; ``op`` is what :meth:`Kernel.apply` does."""

    op: str  # create, set, release, fdb_add, fdb_del, delete
    device: str
    args: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"op": self.op, "device": self.device, **self.args}


def _link(msg: Any, names: dict[int, str]) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    extra: dict[str, Any] = {}
    if kind == "vlan" and data is not None:
        extra["vlan_id"] = data.get_attr("IFLA_VLAN_ID")
        parent = msg.get_attr("IFLA_LINK")
        extra["parent"] = names.get(parent) if parent else None
    elif kind == "vxlan" and data is not None:
        dev = data.get_attr("IFLA_VXLAN_LINK")
        extra = {
            "vni": data.get_attr("IFLA_VXLAN_ID"),
            "local": data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6"),
            "group": data.get_attr("IFLA_VXLAN_GROUP") or data.get_attr("IFLA_VXLAN_GROUP6"),
            "port": data.get_attr("IFLA_VXLAN_PORT"),
            "underlay": names.get(dev) if dev else None,
        }
    master = msg.get_attr("IFLA_MASTER")
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        master=names.get(master) if master else None,
        mtu=msg.get_attr("IFLA_MTU"),
        up=bool(msg["flags"] & IFF_UP),
        oper=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
        alias=msg.get_attr("IFLA_IFALIAS"),
        info=extra,
    )


def link_event(msg: Any) -> dict[str, Any] | None:
    """A link message from the watch as ``{device, event, up, oper}`` (None if unnamed)."""
    name = msg.get_attr("IFLA_IFNAME")
    if not name:
        return None
    return {
        "device": name,
        "event": "removed" if msg["event"] == "RTM_DELLINK" else "changed",
        "up": bool(msg["flags"] & IFF_UP),
        "oper": str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
    }


def _failed(action: Action, exc: NetlinkError) -> errors.NovaCronError:
    code = exc.code
    what = f"{action.op} {action.device}"
    if code == errno.EOPNOTSUPP:
        return errors.InvalidParams(
            f"{what}: this kernel does not support it (netlink: {exc})",
            {"device": action.device, "errno": code},
        )
    if code == errno.EEXIST:
        return errors.Conflict(
            f"{what}: the kernel already has a device like it (netlink: {exc})",
            {"device": action.device, "errno": code},
        )
    return errors.Internal(f"{what} failed: {exc}", {"device": action.device, "errno": code})


class Kernel:
    """The command socket (blocking; call from one worker thread at a time)."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def snapshot(self) -> Snapshot:
        raw = list(self.ipr.get_links())
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in raw}
        links = {link.name: link for link in (_link(m, names) for m in raw)}
        fdb: dict[str, set[str]] = {n: set() for n, ln in links.items() if ln.kind == "vxlan"}
        via: dict[tuple[str, str], str] = {}
        if fdb:
            for entry in self.ipr.fdb("dump"):
                dev = names.get(entry["ifindex"])
                dst = entry.get_attr("NDA_DST")
                if dev in fdb and dst and entry.get_attr("NDA_LLADDR") == ZERO_MAC:
                    fdb[dev].add(str(dst))
                    if out := names.get(entry.get_attr("NDA_IFINDEX") or -1):
                        via[(dev, str(dst))] = out
        addresses = {
            str(a.get_attr("IFA_ADDRESS")): names.get(a["index"], "") for a in self.ipr.get_addr()
        }
        return Snapshot(links, {k: frozenset(v) for k, v in fdb.items()}, addresses, via)

    def _index(self, name: str) -> int:
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise errors.NotFound(f"interface {name!r} not found", {"device": name})
        return int(found[0])

    def apply(self, action: Action) -> None:
        try:
            self._apply(action)
        except NetlinkError as exc:
            raise _failed(action, exc) from exc
        log.info("net.kernel", extra=kv(**action.describe()))

    def _apply(self, action: Action) -> None:
        a, name = action.args, action.device
        if action.op == "create":
            spec: dict[str, Any] = {"ifname": name, "kind": a["kind"]}
            if a["kind"] == "vlan":
                spec.update(link=self._index(a["parent"]), vlan_id=a["vlan_id"])
            elif a["kind"] == "vxlan":
                spec.update(vxlan_id=a["vni"], vxlan_port=a["port"], vxlan_learning=1)
                spec["vxlan_local6" if ":" in a["local"] else "vxlan_local"] = a["local"]
                if a.get("group"):
                    spec["vxlan_group6" if ":" in a["group"] else "vxlan_group"] = a["group"]
                if a.get("underlay"):
                    spec["vxlan_link"] = self._index(a["underlay"])
            self.ipr.link("add", **spec)
            self.ipr.link("set", index=self._index(name), ifalias=a["alias"])
        elif action.op == "set":
            change: dict[str, Any] = {}
            if "master" in a:
                change["master"] = self._index(a["master"])
            if "mtu" in a:
                change["mtu"] = a["mtu"]
            if a.get("up"):
                change["state"] = "up"
            self.ipr.link("set", index=self._index(name), **change)
        elif action.op == "release":
            self.ipr.link("set", index=self._index(name), master=0)
        elif action.op in ("fdb_add", "fdb_del"):
            # (the kernel matches an entry to delete by the interface it names, too)
            command = "append" if action.op == "fdb_add" else "del"
            via = {"NDA_IFINDEX": self._index(a["via"])} if a.get("via") else {}
            self.ipr.fdb(command, ifindex=self._index(name), lladdr=ZERO_MAC, dst=a["dst"], **via)
        elif action.op == "delete":
            self.ipr.link("del", index=self._index(name))
        else:
            raise ValueError(f"unknown netlink action {action.op!r}")


def watch_links(deliver: Callable[[list[dict[str, Any]]], bool]) -> None:
    """Blocks on a socket of its own, handing every batch of link events to ``deliver``
    until it returns False. Runs on a dedicated thread (see the module docstring)."""
    with IPRoute() as mon:
        mon.bind()
        while True:
            batch = [e for e in (link_event(m) for m in mon.get() if _is_link(m)) if e]
            if batch and not deliver(batch):
                return


def _is_link(msg: Any) -> bool:
    return msg.get("event") in ("RTM_NEWLINK", "RTM_DELLINK")
