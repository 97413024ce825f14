"""A VXLAN overlay on an IPv6 underlay, against the real kernel: two "hosts" (network
namespaces joined by a veth pair with IPv6 addresses), a daemon in each building the
same overlay, and a datagram carried across it (the overlay's bridges get IPv4
addresses, the frames travel inside IPv6/UDP on the veth)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron import errors
from tests.daemon_harness import Daemon
from tests.integration.test_networks import eventually, start_daemon
from tests.netns import Namespace

UNDERLAY = {"a": "fd00:99::1", "b": "fd00:99::2"}
OVERLAY = {"a": "192.168.77.1", "b": "192.168.77.2"}
NET = {"name": "ov6", "kind": "vxlan", "vni": 4242}
GROUP = "ff05::4242"
STRAY = "fd00:99::7"

ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
print("ready", flush=True)
while True:  # every datagram answered (the asker may send more than one)
    data, peer = s.recvfrom(2048)
    s.sendto(data.upper(), peer)
"""

ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for _ in range(20):  # the first datagrams may wait on neighbour discovery
    s.sendto(b"over ipv6", (sys.argv[1], 9999))
    try:
        print(s.recvfrom(2048)[0].decode())
        break
    except TimeoutError:
        pass
"""


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[dict[str, Namespace]]:
    spaces = {"a": Namespace("v6a"), "b": Namespace("v6b")}
    try:
        spaces["a"].veth_across(spaces["b"], "ul6", "ul6")
        for side, space in spaces.items():
            space.address("ul6", UNDERLAY[side], 64)
        yield spaces
    finally:
        for space in spaces.values():
            space.remove()


@pytest.fixture
def daemons(tmp_path: Path, hosts: dict[str, Namespace]) -> Iterator[dict[str, Daemon]]:
    started: dict[str, Daemon] = {}
    try:
        for side, space in hosts.items():
            started[side] = start_daemon(tmp_path / side, space)
        yield started
    finally:
        for d in started.values():
            rc = d.stop()
            assert rc in (0, None), d.log_text()
            assert "Traceback" not in d.log_text(), d.log_text()


def test_an_overlay_on_an_ipv6_underlay_carries_traffic(
    hosts: dict[str, Namespace], daemons: dict[str, Daemon]
) -> None:
    for side, other in (("a", "b"), ("b", "a")):
        with daemons[side].client() as c:
            made = c.call("net.create", **NET, local=UNDERLAY[side], remotes=[UNDERLAY[other]])
        # IPv6 and UDP and VXLAN and the inner Ethernet header: 70 bytes of the veth's 1500
        assert made["mtu_effective"] == 1430, made
        assert made["fdb"] == [UNDERLAY[other]], made
        links = hosts[side].links()
        vx = links["ov6-x"]
        assert (vx["kind"], vx["master"], vx["vni"], vx["local"]) == (
            "vxlan",
            "ov6",
            4242,
            UNDERLAY[side],
        )
        assert links["ov6"]["mtu"] == 1430 and links["ov6"]["up"]
        assert hosts[side].fdb("ov6-x") == {UNDERLAY[other]}
        hosts[side].address("ov6", OVERLAY[side], 24)

    with subprocess.Popen(
        [*hosts["b"].prefix, sys.executable, "-c", ECHO, OVERLAY["b"]],
        stdout=subprocess.PIPE,
        text=True,
    ) as echo:
        try:
            assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
            asked = subprocess.run(
                [*hosts["a"].prefix, sys.executable, "-c", ASK, OVERLAY["b"]],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert asked.stdout.strip() == "OVER IPV6", asked
        finally:
            echo.kill()

    # the IPv6 forwarding entry, removed by hand, comes back on the timer
    with hosts["a"].ipr() as ipr:
        index = ipr.link_lookup(ifname="ov6-x")[0]
        ipr.fdb("del", ifindex=index, lladdr="00:00:00:00:00:00", dst=UNDERLAY["b"])
    assert hosts["a"].fdb("ov6-x") == set()
    eventually(lambda: hosts["a"].fdb("ov6-x") == {UNDERLAY["b"]}, "the FDB entry to come back")


def test_an_ipv6_overlay_with_an_ipv4_remote_is_refused(
    hosts: dict[str, Namespace], daemons: dict[str, Daemon]
) -> None:
    with daemons["a"].client() as c:
        with pytest.raises(errors.InvalidParams) as refused:
            c.call("net.create", **NET, local=UNDERLAY["a"], remotes=["10.99.0.2"])
        assert refused.value.details == {"param": "remotes[0]"}
        assert "same IP version" in refused.value.message
        assert c.call("net.list") == []
    assert "ov6" not in hosts["a"].links() and "ov6-x" not in hosts["a"].links()


def test_an_overlay_on_an_ipv6_multicast_group(
    hosts: dict[str, Namespace], daemons: dict[str, Daemon]
) -> None:
    """The kernel gives a multicast overlay its group's forwarding entry: reconciliation
    keeps it (it is no drift), and puts it back, out of the underlay, when it is gone."""
    with daemons["a"].client() as c:
        made = c.call("net.create", **NET, local=UNDERLAY["a"], group=GROUP, device="ul6")
        assert made["mtu_effective"] == 1430 and made["fdb"] == [GROUP], made
    vx = hosts["a"].links()["ov6-x"]
    assert (vx["local"], vx["group"], vx["underlay"]) == (UNDERLAY["a"], GROUP, "ul6")
    time.sleep(2.5)  # two reconcile passes (every second here)
    assert hosts["a"].fdb("ov6-x") == {GROUP}
    assert "net.repaired" not in daemons["a"].log_text()

    with hosts["a"].ipr() as ipr:
        index = ipr.link_lookup(ifname="ov6-x")[0]
        ul6 = ipr.link_lookup(ifname="ul6")[0]
        ipr.fdb("del", ifindex=index, lladdr="00:00:00:00:00:00", dst=GROUP, NDA_IFINDEX=ul6)
    assert hosts["a"].fdb("ov6-x") == set()
    eventually(lambda: hosts["a"].fdb("ov6-x") == {GROUP}, "the group's entry to come back")
    assert hosts["a"].fdb_via("ov6-x") == {GROUP: "ul6"}
    assert "event=net.repaired network=ov6 op=fdb_add" in daemons["a"].log_text()

    # an entry added by hand, out of the underlay, is drift: removed
    with hosts["a"].ipr() as ipr:
        ipr.fdb("append", ifindex=index, lladdr="00:00:00:00:00:00", dst=STRAY, NDA_IFINDEX=ul6)
    assert hosts["a"].fdb_via("ov6-x") == {GROUP: "ul6", STRAY: "ul6"}
    eventually(lambda: hosts["a"].fdb("ov6-x") == {GROUP}, "the stray entry to go")
