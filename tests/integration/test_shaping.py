"""Shaping a tap (``novacron.net.shaping``) on the real kernel: a veth pair between two
namespaces stands for a VM's tap (the end in namespace ``host``) and the guest (the
other end). Real traffic through it is held to the limits in both directions; changing
and lifting limits leaves exactly what they ask for; the IFBs of taps that are gone are
swept, and nothing of anyone else's is touched."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from novacron import errors
from novacron.net import shaping
from novacron.net.nic import NicLimits
from tests.netns import Namespace

HOST, GUEST = "10.231.0.1", "10.231.0.2"
PORT = 5301

# one side sends `n` bytes on a TCP connection, the other reads them all; the reader
# prints how long it took from the first byte
RECEIVE = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); n = 0; began = None
while (d := c.recv(65536)):
    began = began or time.monotonic(); n += len(d)
print(n, time.monotonic() - began, flush=True)
"""
SEND = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(b"x" * int(sys.argv[3])); c.close()
"""


@pytest.fixture
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    """``tap0`` in namespace host (HOST), its peer ``eth0`` in namespace guest (GUEST)."""
    host, guest = Namespace("shost"), Namespace("sguest")
    try:
        with host.ipr() as ns:
            ns.link("add", ifname="tap0", kind="veth", peer="eth0")
            ns.link("set", index=ns.link_lookup(ifname="eth0")[0], net_ns_fd=guest.name)
            tap = ns.link_lookup(ifname="tap0")[0]
            ns.link("set", index=tap, state="up")
            ns.addr("add", index=tap, address=HOST, prefixlen=24)
        with guest.ipr() as ns:
            eth = ns.link_lookup(ifname="eth0")[0]
            ns.link("set", index=eth, state="up")
            ns.addr("add", index=eth, address=GUEST, prefixlen=24)
        yield host, guest
    finally:
        host.remove()
        guest.remove()


def transfer(sender: Namespace, receiver: Namespace, to: str, size: int) -> float:
    """Seconds the receiver took to read ``size`` bytes sent across the pair."""
    with subprocess.Popen(
        [*receiver.prefix, sys.executable, "-c", RECEIVE, to, str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    ) as reader:
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "ready"
            subprocess.run(
                [*sender.prefix, sys.executable, "-c", SEND, to, str(PORT), str(size)],
                check=True,
                timeout=120,
            )
            got, seconds = reader.stdout.readline().split()
            assert int(got) == size
            return float(seconds)
        finally:
            reader.kill()


def qdiscs(ns: Namespace, device: str) -> list[tuple[str, int]]:
    with ns.ipr() as ipr:
        index = ipr.link_lookup(ifname=device)[0]
        return sorted((q.get_attr("TCA_KIND"), q["parent"]) for q in ipr.get_qdiscs(index=index))


def links(ns: Namespace) -> dict[str, dict[str, Any]]:
    return ns.links()


def shape(ns: Namespace, tap: str, limits: NicLimits | None) -> list[str]:
    with ns.ipr() as ipr:
        return shaping.shape(ipr, tap, limits)


def test_traffic_is_held_to_the_limits_both_ways(pair: tuple[Namespace, Namespace]) -> None:
    host, guest = pair
    rate, size = 250_000, 750_000
    limits = NicLimits(inbound_bytes_per_s=rate, outbound_bytes_per_s=rate)
    assert shape(host, "tap0", limits) == ["inbound", "outbound"]
    with host.ipr() as ipr:
        assert shaping.state(ipr, "tap0") == shaping.Shape(rate, rate)
    # at the rate, what the bucket does not let through at once takes its time: a
    # lower bound only (a slow machine is slower still)
    least = (size - shaping.burst(rate)) / rate * 0.8
    to_guest = transfer(host, guest, GUEST, size)
    from_guest = transfer(guest, host, HOST, size)
    assert to_guest >= least, to_guest
    assert from_guest >= least, from_guest
    print(f"{size} bytes at {rate} B/s: to the guest {to_guest:.2f} s, from it {from_guest:.2f} s")


def test_changes_and_lifts_leave_exactly_what_they_ask(pair: tuple[Namespace, Namespace]) -> None:
    host, _ = pair
    with host.ipr() as ipr:
        index = ipr.link_lookup(ifname="tap0")[0]
    ifb = shaping.ifb_name(index)
    default = qdiscs(host, "tap0")

    assert shape(host, "tap0", NicLimits(inbound_bytes_per_s=1_000_000)) == ["inbound"]
    assert ("tbf", shaping.ROOT) in qdiscs(host, "tap0") and ifb not in links(host)
    assert shape(host, "tap0", NicLimits(inbound_bytes_per_s=1_000_000)) == []  # as it is

    both = NicLimits(inbound_bytes_per_s=2_000_000, outbound_bytes_per_s=3_000_000)
    assert shape(host, "tap0", both) == ["inbound", "outbound"]
    made = links(host)[ifb]
    assert (made["kind"], made["alias"], made["up"]) == ("ifb", "novacron:shape:tap0", True)
    assert ("ingress", shaping.INGRESS_PARENT) in qdiscs(host, "tap0")
    with host.ipr() as ipr:
        assert shaping.state(ipr, "tap0") == shaping.Shape(2_000_000, 3_000_000)

    # only the outbound limit changes: the IFB and its redirect stay, its bucket changes
    assert shape(host, "tap0", NicLimits(2_000_000, 1_000_000)) == ["outbound"]
    with host.ipr() as ipr:
        assert shaping.state(ipr, "tap0") == shaping.Shape(2_000_000, 1_000_000)

    # the redirect removed behind the daemon's back: put back
    with host.ipr() as ipr:
        ipr.tc("del", index=index, handle=shaping.INGRESS_HANDLE, parent=shaping.INGRESS_PARENT)
        assert shaping.state(ipr, "tap0").outbound == 0
    assert shape(host, "tap0", NicLimits(2_000_000, 1_000_000)) == ["outbound"]
    with host.ipr() as ipr:
        assert shaping.state(ipr, "tap0") == shaping.Shape(2_000_000, 1_000_000)

    # lifted: the tap has the kernel's default again and the IFB is gone
    assert shape(host, "tap0", None) == ["inbound", "outbound"]
    assert qdiscs(host, "tap0") == default
    assert ifb not in links(host)
    assert shape(host, "tap0", None) == []

    # a bucket put on by hand with a handle of its own is replaced, then lifted
    by_hand = "tc qdisc add dev tap0 root handle 5: tbf rate 500000bps burst 40000 latency 50ms"
    subprocess.run([*host.prefix, *by_hand.split()], check=True)
    assert shape(host, "tap0", NicLimits(inbound_bytes_per_s=1_000_000)) == ["inbound"]
    with host.ipr() as ipr:
        assert shaping.state(ipr, "tap0") == shaping.Shape(1_000_000, 0)
    assert shape(host, "tap0", None) == ["inbound"]
    assert qdiscs(host, "tap0") == default


def test_sweep_removes_ifbs_of_taps_that_are_gone_and_nothing_else(
    pair: tuple[Namespace, Namespace],
) -> None:
    host, _ = pair
    host.veth("tap1", "tap1p")
    for tap in ("tap0", "tap1"):
        shape(host, tap, NicLimits(outbound_bytes_per_s=1_000_000))
    with host.ipr() as ipr:
        gone_ifb = shaping.ifb_name(ipr.link_lookup(ifname="tap1")[0])
        kept_ifb = shaping.ifb_name(ipr.link_lookup(ifname="tap0")[0])
        # an IFB of someone else's (no mark) and one with the prefix but no mark
        ipr.link("add", ifname="other0", kind="ifb")
        ipr.link("add", ifname="ncq999", kind="ifb")
        assert shaping.sweep(ipr) == []
    host.delete("tap1")  # (a VM stopped: libvirt removed its tap)
    with host.ipr() as ipr:
        assert shaping.sweep(ipr) == [gone_ifb]
    now = links(host)
    assert kept_ifb in now and gone_ifb not in now
    assert {"other0", "ncq999"} <= set(now)


def test_a_tap_that_is_gone_is_not_found(pair: tuple[Namespace, Namespace]) -> None:
    host, _ = pair
    with pytest.raises(errors.NotFound):
        shape(host, "vnet404", NicLimits(inbound_bytes_per_s=1_000_000))
    assert shape(host, "tap0", None) == []  # unshaped: nothing to do
