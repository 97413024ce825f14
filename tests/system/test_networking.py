"""Networks across two namespaced hosts with real guests: a VXLAN overlay built by each
node's daemon over the veth between them carries ping between single-threaded TCG
guests (busybox, addresses from the kernel command line); a NIC hot-plugged into a
running guest on a second overlay works; a daemon killed and restarted leaves the
networks and NICs as they were, with nothing duplicated; the guest live-migrates with its
NIC to the other host's network of the same name."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from novacron import errors
from tests.system import guest
from tests.system.libvirt_host import LibvirtHost
from tests.system.nodes import Node, TwoNodes, migrate, running_nodes, wait_until

MEMORY_MIB = 128
RECONCILE = ("--network-reconcile-interval-s", "2")


@pytest.fixture(scope="module")
def nodes(
    libvirt_host: LibvirtHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoNodes]:
    """The two hosts, their daemons putting networks and NIC limits right every 2 s."""
    with running_nodes(tmp_path_factory.mktemp("nodes"), extra=(RECONCILE, RECONCILE)) as pair:
        yield pair


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


def shaped(node: Node, tap: str) -> tuple[int, int]:
    """``tap``'s limits as ``tc`` shows them (bytes a second, 0: none): its root token
    bucket's rate, and that of the IFB its ingress filter redirects to."""
    root = json.loads(node.host.sh(f"tc -j qdisc show dev {tap}"))
    inbound = next((q["options"]["rate"] for q in root if q["kind"] == "tbf"), 0)
    outbound = 0
    if any(q["kind"] == "ingress" for q in root):
        filters = json.loads(node.host.sh(f"tc -j filter show dev {tap} ingress"))
        targets = [
            action["to_dev"]
            for f in filters
            for action in f.get("options", {}).get("actions", [])
            if action.get("kind") == "mirred"
        ]
        if targets:
            ifb = json.loads(node.host.sh(f"tc -j qdisc show dev {targets[0]}"))
            outbound = next((q["options"]["rate"] for q in ifb if q["kind"] == "tbf"), 0)
    return inbound, outbound


def ifbs(node: Node) -> set[str]:
    return {name for name, link in links(node).items() if name.startswith("ncq")}


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

    # bandwidth limits on its NIC: the daemon shapes the tap at once (a token bucket for
    # traffic to the guest, one on an IFB for traffic from it); the guest still pings
    mac = vm["nics"][0]["mac"]
    assert shaped(a, ports[0]) == (0, 0) and not ifbs(a)
    with a.client() as c:
        c.call(
            "vm.nic.limit",
            vm="na",
            mac=mac,
            inbound_bytes_per_s=2_000_000,
            outbound_bytes_per_s=1_000_000,
        )
    assert shaped(a, ports[0]) == (2_000_000, 1_000_000)
    assert len(ifbs(a)) == 1
    with a.client() as c:
        shaping = c.call("node.info")["daemon"]["shaping"]
    assert shaping["shaped_vms"] == 1 and shaping["changes"] >= 1, shaping
    seen = len(console(a, "na"))
    wait_until(lambda: pings(a, "na", "10.50.0.2", seen) >= 2, 60, "ping through the limits")
    # a limit taken away behind the daemon's back is put back (the daemon's reconcile
    # interval is 2 s here)
    a.host.sh(f"tc qdisc del dev {ports[0]} root")
    wait_until(lambda: shaped(a, ports[0]) == (2_000_000, 1_000_000), 30, "the limit put back")
    # no NIC on the second overlay yet: nothing answers there
    assert pings(a, "na", "10.60.0.2") == 0
    assert f"{guest.PING_FAIL} 10.60.0.2" in console(a, "na")

    # the tenant's default NIC limits reach the NIC plugged in next
    with a.client() as c:
        tenant = c.call("vm.get", name="na")["tenant"]
        c.call("quota.set", tenant=tenant, nic_limits={"inbound_bytes_per_s": 3_000_000})
        attached = c.call("vm.nic.attach", vm="na", network="ov2")
        c.call("quota.set", tenant=tenant)
    assert [n["network"] for n in attached["nics"]] == ["ov", "ov2"]
    assert attached["nics"][1]["limits"] == {"inbound_bytes_per_s": 3_000_000}
    [tap2] = [n for n, link in links(a).items() if link.get("master") == "ov2" and "-" not in n]
    assert shaped(a, tap2) == (3_000_000, 0)
    wait_until(lambda: f"{guest.NET_UP} eth1" in console(a, "na"), 120, "the hot-plugged NIC")
    wait_until(lambda: pings(a, "na", "10.60.0.2") >= 2, 120, "ping over the hot-plugged NIC")

    # killed and restarted: the same devices, the same NICs, the guest still reaches B
    before = {n: (link.get("master"), link.get("mtu")) for n, link in links(a).items()}
    a.daemon.signal(signal.SIGKILL)
    a.daemon.wait()
    a.daemon.start(timeout=90)
    after = {n: (link.get("master"), link.get("mtu")) for n, link in links(a).items()}
    assert after == before
    assert shaped(a, ports[0]) == (2_000_000, 1_000_000) and shaped(a, tap2) == (3_000_000, 0)
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
    assert len(ifbs(a)) == 1  # (the detached NIC had no outbound limit: no IFB of its own)
    # live-migrated to B with its NIC: B has a network of the same name, the guest now
    # reaches its peer on B's own bridge
    migrated = migrate(a, b, "na")
    assert migrated["state"] == "succeeded"
    # the limits went with it: B shapes its new tap, A's IFB went with A's tap
    with b.client() as c:
        [tap_b] = [n["device"] for n in c.call("vm.stats", name="na")["nics"]]
    wait_until(lambda: shaped(b, tap_b) == (2_000_000, 1_000_000), 30, "B's tap shaped")
    wait_until(lambda: not ifbs(a), 30, "A's IFB swept")
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
