"""Network namespaces the test suite creates (and removes): the only place tests touch
netlink, so nothing reaches the machine's own interfaces."""

from __future__ import annotations

import ctypes
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pyroute2 import NetNS, netns

IFA_F_NODAD = 0x02  # linux/if_addr.h
CLONE_NEWNET = 0x40000000  # linux/sched.h

T = TypeVar("T")


class Namespace:
    def __init__(self, tag: str) -> None:
        self.name = f"nc-{tag}-{uuid.uuid4().hex[:6]}"
        netns.create(self.name)
        with self.ipr() as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")

    @property
    def prefix(self) -> list[str]:
        """Runs a command inside the namespace."""
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def inside(self, make: Callable[[], T]) -> T:
        """``make()`` run by a thread that joined the namespace first: a socket it
        connects (a client of a daemon listening on the namespace's loopback) stays in
        the namespace and is usable from any thread. The caller's thread stays where
        it is."""
        made: list[T] = []
        failed: list[BaseException] = []

        def run() -> None:
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into the test namespace failed")
            finally:
                os.close(fd)
            try:
                made.append(make())
            except BaseException as e:
                failed.append(e)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return made[0]

    @contextmanager
    def ipr(self) -> Iterator[Any]:
        ns = NetNS(self.name)
        try:
            yield ns
        finally:
            ns.close()

    def veth(self, name: str, peer: str, address: str | None = None, mtu: int = 1500) -> None:
        """A veth pair inside the namespace, ``name`` up (with ``address``/24 if given)."""
        with self.ipr() as ns:
            ns.link("add", ifname=name, kind="veth", peer=peer)
            for dev in (name, peer):
                ns.link("set", index=ns.link_lookup(ifname=dev)[0], state="up", mtu=mtu)
            if address is not None:
                ns.addr("add", index=ns.link_lookup(ifname=name)[0], address=address, prefixlen=24)

    def veth_across(self, other: Namespace, name: str, peer: str) -> None:
        """A veth pair joining this namespace (``name``) to ``other`` (``peer``), both up."""
        staged = f"x{uuid.uuid4().hex[:8]}"  # the peer's name while it is still here
        with self.ipr() as ns:
            ns.link("add", ifname=name, kind="veth", peer=staged)
            ns.link("set", index=ns.link_lookup(ifname=staged)[0], net_ns_fd=other.name)
            ns.link("set", index=ns.link_lookup(ifname=name)[0], state="up")
        with other.ipr() as ns:
            ns.link("set", index=ns.link_lookup(ifname=staged)[0], ifname=peer, state="up")

    def address(self, device: str, address: str, prefixlen: int) -> None:
        """``address``/``prefixlen`` on ``device``, usable at once (IPv6: no duplicate
        address detection)."""
        with self.ipr() as ns:
            ns.addr(
                "add",
                index=ns.link_lookup(ifname=device)[0],
                address=address,
                prefixlen=prefixlen,
                flags=IFA_F_NODAD if ":" in address else 0,
            )

    def links(self) -> dict[str, dict[str, Any]]:
        """name -> {kind, master, mtu, up, alias, vxlan...} of every link."""
        with self.ipr() as ns:
            raw = list(ns.get_links())
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in raw}
            out = {}
            for m in raw:
                info = m.get_attr("IFLA_LINKINFO")
                data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
                doc: dict[str, Any] = {
                    "kind": info.get_attr("IFLA_INFO_KIND") if info is not None else None,
                    "master": names.get(m.get_attr("IFLA_MASTER") or -1),
                    "mtu": m.get_attr("IFLA_MTU"),
                    "up": bool(m["flags"] & 1),
                    "alias": m.get_attr("IFLA_IFALIAS"),
                }
                if doc["kind"] == "vxlan" and data is not None:
                    doc["vni"] = data.get_attr("IFLA_VXLAN_ID")
                    doc["local"] = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr(
                        "IFLA_VXLAN_LOCAL6"
                    )
                    doc["port"] = data.get_attr("IFLA_VXLAN_PORT")
                    doc["group"] = data.get_attr("IFLA_VXLAN_GROUP") or data.get_attr(
                        "IFLA_VXLAN_GROUP6"
                    )
                    doc["underlay"] = names.get(data.get_attr("IFLA_VXLAN_LINK") or -1)
                out[m.get_attr("IFLA_IFNAME")] = doc
            return out

    def fdb(self, device: str) -> set[str]:
        """Destinations of ``device``'s all-zero (flood) forwarding entries."""
        return set(self.fdb_via(device))

    def fdb_via(self, device: str) -> dict[str, str | None]:
        """Destination -> the interface it goes out of, of ``device``'s all-zero entries."""
        with self.ipr() as ns:
            index = ns.link_lookup(ifname=device)[0]
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ns.get_links()}
            return {
                str(e.get_attr("NDA_DST")): names.get(e.get_attr("NDA_IFINDEX") or -1)
                for e in ns.fdb("dump")
                if e["ifindex"] == index and e.get_attr("NDA_LLADDR") == "00:00:00:00:00:00"
            }

    def delete(self, device: str) -> None:
        with self.ipr() as ns:
            ns.link("del", index=ns.link_lookup(ifname=device)[0])

    def remove(self) -> None:
        netns.remove(self.name)
