"""Networks across two namespaced hosts with real guests: a VXLAN overlay built by each
node's daemon over the veth between them carries ping between single-threaded TCG
guests (busybox, addresses from the kernel command line); a NIC hot-plugged into a
running guest on a second overlay works; a daemon killed and restarted leaves the
networks and NICs as they were, with nothing duplicated; the guest live-migrates with its
NIC to the other host's network of the same name."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from novacron import errors
from tests.system import guest
from tests.system.nodes import Node, TwoNodes, migrate, wait_until

MEMORY_MIB = 128


def console(node: Node, vm: str) -> str:
    return guest.console_text(node.console(vm))


def links(node: Node) -> dict[str, dict[str, Any]]:
    """The host's links as ``ip -d -j link`` shows them (by name)."""
    return {link["ifname"]: link for link in json.loads(node.host.sh("ip -d -j link show"))}


def overlay(node: Node, peer: Node, name: str, vni: int) -> dict[str, Any]:
    with node.client() as c:
        doc: dict[str, Any] = c.call(
            "net.create",
            name=name,
            kind="vxlan",
            vni=vni,
            local=node.host.address,
            remotes=[peer.host.address],
        )
        return doc


def pings(node: Node, vm: str, peer: str, after: int = 0) -> int:
    return console(node, vm)[after:].count(f"{guest.PING_OK} {peer}")


def test_overlay_between_hosts_hotplug_and_restart(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a, b = nodes.a, nodes.b
    for node, peer in ((a, b), (b, a)):
        made = overlay(node, peer, "ov", 100)
        assert made["mtu_effective"] == 1450 and made["fdb"] == [peer.host.address]
        overlay(node, peer, "ov2", 200)
    with b.client() as c:
        c.call(
            "vm.create",
            **guest_images.vm(
                "nb",
                MEMORY_MIB,
                "novacron.net=eth0:10.50.0.2/24,eth1:10.60.0.2/24",
                nics=[{"network": "ov"}, {"network": "ov2"}],
            ),
        )
    with a.client() as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "na",
                MEMORY_MIB,
                "novacron.net=eth0:10.50.0.1/24,eth1:10.60.0.1/24 "
                "novacron.ping=10.50.0.2,10.60.0.2",
                nics=[{"network": "ov"}],
            ),
        )
    assert [n["network"] for n in vm["nics"]] == ["ov"]
    wait_until(lambda: pings(a, "na", "10.50.0.2") >= 2, 300, "ping across the overlay")
    # the tap libvirt made is a port of the network's bridge
    ports = [n for n, link in links(a).items() if link.get("master") == "ov" and n != "ov-x"]
    assert len(ports) == 1, links(a)
    # its counters, from the guest's side: echo requests out, replies in
    with a.client() as c:
        doc = c.call("vm.stats", name="na")
    # this libvirtd (in the test host's namespaces) has no cgroups: the CPU time is the
    # process's, from /proc, and user/system time are not known
    assert doc["cpu"]["time_ns"] > 0 and doc["cpu"]["user_ns"] is None, doc["cpu"]
    [nic] = doc["nics"]
    assert (nic["mac"], nic["device"]) == (vm["nics"][0]["mac"], ports[0])
    assert nic["tx_packets"] >= 2 and nic["rx_packets"] >= 2, nic
    assert nic["rx_bytes"] >= 2 * 98 and nic["tx_bytes"] >= 2 * 98, nic  # ICMP echo frames
    # no NIC on the second overlay yet: nothing answers there
    assert pings(a, "na", "10.60.0.2") == 0
    assert f"{guest.PING_FAIL} 10.60.0.2" in console(a, "na")

    with a.client() as c:
        attached = c.call("vm.nic.attach", vm="na", network="ov2")
    assert [n["network"] for n in attached["nics"]] == ["ov", "ov2"]
    wait_until(lambda: f"{guest.NET_UP} eth1" in console(a, "na"), 120, "the hot-plugged NIC")
    wait_until(lambda: pings(a, "na", "10.60.0.2") >= 2, 120, "ping over the hot-plugged NIC")

    # killed and restarted: the same devices, the same NICs, the guest still reaches B
    before = {n: (link.get("master"), link.get("mtu")) for n, link in links(a).items()}
    a.daemon.signal(signal.SIGKILL)
    a.daemon.wait()
    a.daemon.start(timeout=90)
    after = {n: (link.get("master"), link.get("mtu")) for n, link in links(a).items()}
    assert after == before
    with a.client() as c:
        assert [n["name"] for n in c.call("net.list")] == ["ov", "ov2"]
        assert c.call("vm.get", name="na")["nics"] == attached["nics"]
    seen = len(console(a, "na"))
    wait_until(lambda: pings(a, "na", "10.50.0.2", seen) >= 2, 60, "ping after the restart")

    # detached: the guest keeps its first NIC only; answered once the guest let it go,
    # so the running domain has no tap on the second overlay's bridge any more
    def ov2_ports() -> list[str]:
        return [n for n, link in links(a).items() if link.get("master") == "ov2" and "-" not in n]

    assert len(ov2_ports()) == 1
    with a.client() as c:
        mac = attached["nics"][1]["mac"]
        assert [n["network"] for n in c.call("vm.nic.detach", vm="na", mac=mac)["nics"]] == ["ov"]
        live = c.call("vm.stats", name="na")["nics"]
        assert [n["mac"] for n in live] == [attached["nics"][0]["mac"]]
    wait_until(lambda: ov2_ports() == [], 10, "the detached NIC's tap to go")
    # live-migrated to B with its NIC: B has a network of the same name, the guest now
    # reaches its peer on B's own bridge
    migrated = migrate(a, b, "na")
    assert migrated["state"] == "succeeded"
    seen_b = len(console(b, "na"))
    wait_until(lambda: pings(b, "na", "10.50.0.2", seen_b) >= 2, 120, "ping after migrating")
    with b.client() as c:
        assert [n["network"] for n in c.call("vm.get", name="na")["nics"]] == ["ov"]
        with pytest.raises(errors.Conflict):
            c.call("net.delete", name="ov")
        for vm_name in ("na", "nb"):
            c.call("vm.delete", name=vm_name, force=True)
        for net in ("ov", "ov2"):
            c.call("net.delete", name=net)
    with a.client() as c:
        for net in ("ov", "ov2"):
            c.call("net.delete", name=net)
    for node in (a, b):
        assert not {"ov", "ov-x", "ov2", "ov2-x"} & set(links(node))
