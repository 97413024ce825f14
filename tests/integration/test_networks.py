"""Host networks against the real kernel: each test runs a daemon (libvirt's test
driver) inside a network namespace the test creates, with veth pairs as uplinks and
underlays, and looks at the result through netlink itself."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from novacron import errors
from tests.daemon_harness import Daemon
from tests.netns import Namespace
from tests.pki_harness import Pki


@pytest.fixture
def ns() -> Iterator[Namespace]:
    space = Namespace("net")
    space.veth("up0", "up0p")
    space.veth("ul0", "ul0p", address="10.99.0.1")
    yield space
    space.remove()


def start_daemon(tmp_path: Path, ns: Namespace) -> Daemon:
    return Daemon.under(tmp_path, "--network-reconcile-interval-s", "1", prefix=ns.prefix).start()


@pytest.fixture
def daemon(tmp_path: Path, ns: Namespace) -> Iterator[Daemon]:
    d = start_daemon(tmp_path, ns)
    yield d
    rc = d.stop()
    assert rc in (0, None), d.log_text()
    assert "Traceback" not in d.log_text(), d.log_text()


def eventually(check: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


VXLAN = {"name": "ov1", "kind": "vxlan", "vni": 42, "local": "10.99.0.1"}


def test_bridge_with_uplink_and_vxlan_are_built(daemon: Daemon, ns: Namespace) -> None:
    with daemon.client() as c:
        br = c.call("net.create", name="br0", uplink="up0", mtu=1400)
        ov = c.call("net.create", **VXLAN, remotes=["10.99.0.2", "10.99.0.3"])
        links = ns.links()
        assert links["br0"]["kind"] == "bridge" and links["br0"]["up"]
        assert links["br0"]["mtu"] == 1400
        assert links["up0"]["master"] == "br0" and links["up0"]["up"]
        assert links["ov1"]["kind"] == "bridge" and links["ov1"]["mtu"] == 1450
        vx = links["ov1-x"]
        assert (vx["kind"], vx["master"], vx["vni"], vx["local"], vx["port"]) == (
            "vxlan",
            "ov1",
            42,
            "10.99.0.1",
            4789,
        )
        assert ns.fdb("ov1-x") == {"10.99.0.2", "10.99.0.3"}
        assert br["devices"][1] == {
            "name": "up0",
            "present": True,
            "up": True,
            "oper": "UP",
            "mtu": 1500,
            "master": "br0",
        }
        assert ov["mtu_effective"] == 1450 and ov["fdb"] == ["10.99.0.2", "10.99.0.3"]
        assert [n["name"] for n in c.call("net.list")] == ["br0", "ov1"]
        assert c.call("net.get", name="ov1")["vni"] == 42


def test_reconcile_repairs_what_was_changed_by_hand(daemon: Daemon, ns: Namespace) -> None:
    with daemon.client() as c, daemon.client(timeout=15) as watcher:
        c.call("net.create", name="br0", uplink="up0")
        c.call("net.create", **VXLAN, remotes=["10.99.0.2"])
        stream = watcher.events(["net.changed", "net.link"])
        ns.delete("br0")  # the uplink falls out of the bridge with it
        seen: list[dict[str, Any]] = []
        for event in stream:
            seen.append(event)
            if event["topic"] == "net.changed" and event["device"] == "up0":
                break
        assert any(e["topic"] == "net.link" and e["event"] == "removed" for e in seen)
        created = [e for e in seen if e["topic"] == "net.changed" and e["op"] == "create"]
        assert created[0]["device"] == "br0" and created[0]["reason"] == "reconcile"
        assert created[0]["network"] == "br0" and created[0]["tenant"] == "default"
        assert ns.links()["up0"]["master"] == "br0"
        # a forwarding entry removed by hand comes back on the timer (no link event)
        with ns.ipr() as ipr:
            index = ipr.link_lookup(ifname="ov1-x")[0]
            ipr.fdb("del", ifindex=index, lladdr="00:00:00:00:00:00", dst="10.99.0.2")
        assert ns.fdb("ov1-x") == set()
        eventually(lambda: ns.fdb("ov1-x") == {"10.99.0.2"}, "the FDB entry to come back")


def test_bad_input_changes_nothing(daemon: Daemon, ns: Namespace) -> None:
    bad: list[tuple[dict[str, Any], type[errors.NovaCronError]]] = [
        ({"name": "br0", "uplink": "nosuch0"}, errors.InvalidParams),
        ({"name": "averyveryverylong"}, errors.InvalidParams),
        ({"name": "v1", "kind": "vlan", "parent": "up0", "vlan_id": 5000}, errors.InvalidParams),
        (
            {**VXLAN, "name": "ov2", "vni": 7, "remotes": ["10.99.0.2"], "mtu": 1480},
            errors.InvalidParams,
        ),
        (
            {**VXLAN, "name": "ov2", "vni": 7, "local": "10.99.9.9", "remotes": ["10.99.0.2"]},
            errors.InvalidParams,
        ),
        ({"name": "lo", "uplink": "up0"}, errors.AlreadyExists),
        ({"name": "br1", "uplink": "ul0p", "bogus": 1}, errors.InvalidParams),
    ]
    with daemon.client() as c:
        c.call("net.create", **VXLAN, remotes=["10.99.0.2"])
        before = ns.links()
        for params, error in bad:
            with pytest.raises(error):
                c.call("net.create", **params)
        with pytest.raises(errors.InvalidParams, match="VNI 42"):
            c.call("net.create", **{**VXLAN, "name": "ov2", "remotes": ["10.99.0.3"]})
        assert ns.links() == before
        assert [n["name"] for n in c.call("net.list")] == ["ov1"]
        assert c.call("session.hello")  # still serving


def test_a_vni_held_by_a_device_not_novacrons_is_refused_cleanly(
    daemon: Daemon, ns: Namespace
) -> None:
    """The kernel allows one VXLAN device per VNI and port: one made by hand holds VNI
    42, so the network's link cannot be made. The call fails as a conflict naming the
    device, the bridge made before it is gone, and the stranger is left as it was."""
    with ns.ipr() as ipr:
        ipr.link("add", ifname="theirs", kind="vxlan", vxlan_id=42, vxlan_port=4789)
    before = ns.links()
    with daemon.client() as c:
        with pytest.raises(errors.Conflict) as refused:
            c.call("net.create", **VXLAN, remotes=["10.99.0.2"])
        assert refused.value.details["device"] == "ov1-x", refused.value.details
        assert "already has a device like it" in refused.value.message
        assert c.call("net.list") == []
    assert ns.links() == before


def test_a_repair_the_kernel_refuses_is_a_problem_until_it_can_be_made(
    daemon: Daemon, ns: Namespace
) -> None:
    """The network's VXLAN link is deleted by hand and a device not NovaCron's takes its
    VNI: the repair fails on every pass, the network shows why (logged once, not once a
    pass), and once that device goes the link is made again and the problem clears."""
    with daemon.client() as c:
        c.call("net.create", **VXLAN, remotes=["10.99.0.2"])
        with ns.ipr() as ipr:
            for _ in range(50):  # (the daemon may put its link back in between: again)
                found = ipr.link_lookup(ifname="ov1-x")
                if found:
                    ipr.link("del", index=found[0])
                try:
                    ipr.link("add", ifname="theirs", kind="vxlan", vxlan_id=42, vxlan_port=4789)
                    break
                except NetlinkError as exc:
                    assert exc.code == errno.EEXIST, exc
            else:
                raise AssertionError("could not take VNI 42 from the daemon")
        got = eventually(
            lambda: c.call("net.get", name="ov1")["problems"], "the refused repair shown"
        )
        assert "already has a device like it" in got[0], got
        time.sleep(3)  # three more passes (every second here)
        assert c.call("net.get", name="ov1")["problems"] == got
        said = daemon.log_text()
        assert said.count("event=net.problem network=ov1") == 1, said
        assert said.count("level=warning logger=novacron.net event=net.repair_failed") == 1, said
        assert "ov1-x" not in ns.links()
        ns.delete("theirs")
        eventually(lambda: "ov1-x" in ns.links(), "the link made again")
        eventually(lambda: not c.call("net.get", name="ov1")["problems"], "the problem cleared")
        assert ns.fdb("ov1-x") == {"10.99.0.2"}
        assert c.call("session.hello")


def test_vlan_network_is_built_or_refused_cleanly(daemon: Daemon, ns: Namespace) -> None:
    """A VLAN on a trunk bridge network. Kernels built without 802.1Q (as on these CI
    machines) refuse the VLAN link: the call fails with the kernel's reason and nothing
    of the half-built network is left."""
    with daemon.client() as c:
        c.call("net.create", name="trunk", uplink="up0")
        before = ns.links()
        try:
            got = c.call("net.create", name="t100", kind="vlan", parent="trunk", vlan_id=100)
        except errors.InvalidParams as exc:
            assert "does not support" in exc.message
            assert ns.links() == before
            assert [n["name"] for n in c.call("net.list")] == ["trunk"]
            return
        links = ns.links()
        assert links["t100-v"]["kind"] == "vlan" and links["t100-v"]["master"] == "t100"
        assert got["devices"][1]["present"]


def test_nics_hold_their_network_and_survive_a_restart(tmp_path: Path, ns: Namespace) -> None:
    d = start_daemon(tmp_path, ns)
    try:
        with d.client() as c:
            c.call("net.create", **VXLAN, remotes=["10.99.0.2"])
            with pytest.raises(errors.InvalidParams, match="not found"):
                c.call("vm.create", name="a", memory_mib=64, nics=[{"network": "nope"}])
            vm = c.call("vm.create", name="a", memory_mib=64, nics=[{"network": "ov1"}], start=True)
            (nic,) = vm["nics"]
            assert nic["network"] == "ov1" and nic["mac"].startswith("52:54:00:")
            with pytest.raises(errors.Conflict, match="in use"):
                c.call("net.delete", name="ov1")
            assert c.call("net.get", name="ov1")["nics"] == [{"vm": "a", "mac": nic["mac"]}]
        before = ns.links()
        d.signal(signal.SIGKILL)
        d.wait()
        d = start_daemon(tmp_path, ns)
        with d.client() as c:
            assert ns.links() == before  # nothing duplicated, nothing lost
            assert [n["name"] for n in c.call("net.list")] == ["ov1"]
            assert c.call("vm.get", name="a")["nics"] == [nic]
            c.call("vm.delete", name="a", force=True)
            assert c.call("net.delete", name="ov1") == {"name": "ov1", "deleted": True}
            assert "ov1" not in ns.links() and "ov1-x" not in ns.links()
    finally:
        d.stop()


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "novacron.cli.main", "--socket", str(daemon.socket), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # a wide table: rows stay on one line
    )


def test_cli(daemon: Daemon, ns: Namespace) -> None:
    made = cli(
        daemon,
        "net",
        "create",
        "ov1",
        "--kind",
        "vxlan",
        "--vni",
        "42",
        "--local",
        "10.99.0.1",
        "--remote",
        "10.99.0.2",
        "--remote",
        "10.99.0.3",
    )
    assert made.returncode == 0, made.stderr
    assert "10.99.0.2" in made.stdout and "1450" in made.stdout
    assert cli(daemon, "net", "create", "br0", "--uplink", "up0").returncode == 0
    listed = cli(daemon, "net", "list")
    assert listed.returncode == 0
    assert "vni 42 local 10.99.0.1 -> 10.99.0.2,10.99.0.3" in listed.stdout
    assert "uplink up0" in listed.stdout
    doc = json.loads(cli(daemon, "--json", "net", "get", "br0").stdout)
    assert doc["devices"][1]["master"] == "br0"
    vm = cli(
        daemon,
        "--json",
        "vm",
        "create",
        "c1",
        "--memory",
        "64",
        "--nic",
        "ov1",
        "--nic",
        "br0:52:54:00:00:00:c1",
    )
    assert vm.returncode == 0, vm.stderr
    nics = json.loads(vm.stdout)["nics"]
    assert [n["network"] for n in nics] == ["ov1", "br0"] and nics[1]["mac"] == "52:54:00:00:00:c1"
    refused = cli(daemon, "net", "delete", "br0")
    assert refused.returncode == 1 and "error: conflict:" in refused.stderr
    assert cli(daemon, "vm", "delete", "c1").returncode == 0
    bad = cli(
        daemon, "net", "create", "v1", "--kind", "vlan", "--parent", "br0", "--vlan-id", "4095"
    )
    assert bad.returncode == 1 and "error: invalid_params: vlan_id" in bad.stderr
    for name in ("br0", "ov1"):
        gone = cli(daemon, "net", "delete", name)
        assert gone.returncode == 0 and f"{name}: deleted" in gone.stdout
    assert "br0" not in ns.links()


# run inside the namespace (the daemon's TLS listener is on the namespace's loopback)
TENANT_PROBE = """
import json, sys
from pathlib import Path
from novacron import errors
from novacron.client import SyncClient, TlsFiles
port, certs, ca = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
def call(who, method, **params):
    files = TlsFiles(certs / f"{who}.crt", certs / f"{who}.key", ca)
    with SyncClient.tls(f"127.0.0.1:{port}", files, timeout=30, server_name="node1") as c:
        try:
            result = c.call(method, **params)
        except errors.NovaCronError as exc:
            return exc.code
        return [n["name"] for n in result] if method == "net.list" else "ok"
vx = {"kind": "vxlan", "vni": 9, "local": "10.99.0.1", "remotes": ["10.99.0.2"]}
print(json.dumps([
    call("op-acme", "net.create", name="acmenet", **vx),
    call("op-acme", "net.create", name="acmebr", uplink="up0"),
    call("admin1", "net.create", name="trunk", tenant="infra", uplink="up0"),
    call("view-globex", "net.get", name="acmenet"),
    call("view-acme", "net.get", name="acmenet"),
    call("view-globex", "net.list"),
    call("view-acme", "net.list"),
    call("op-globex", "net.delete", name="acmenet"),
    call("view-acme", "net.delete", name="acmenet"),
    call("op-globex", "vm.create", name="g1", memory_mib=64, nics=[{"network": "acmenet"}]),
    call("op-acme", "vm.create", name="a1", memory_mib=64, nics=[{"network": "acmenet"}]),
    call("admin1", "net.list"),
]))
"""


def test_networks_are_tenant_scoped(tmp_path: Path, ns: Namespace) -> None:
    pki = Pki.create(tmp_path / "pki")
    for name, role, tenants in [
        ("admin1", "admin", ()),
        ("op-acme", "operator", ("acme",)),
        ("op-globex", "operator", ("globex",)),
        ("view-acme", "viewer", ("acme",)),
        ("view-globex", "viewer", ("globex",)),
    ]:
        pki.issue(name, role, tenants)
    port = 7443
    d = Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
        prefix=ns.prefix,
        extra=pki.daemon_args(port),
    ).start()
    try:
        probe = subprocess.run(
            [
                *ns.prefix,
                sys.executable,
                "-c",
                TENANT_PROBE,
                str(port),
                str(pki.root / "certs"),
                str(pki.ca.dir / "ca.crt"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout) == [
            "ok",  # an operator builds an overlay in its tenant
            "permission_denied",  # a host interface as uplink needs an admin
            "ok",
            "not_found",  # another tenant's network does not exist for the caller
            "ok",
            [],
            ["acmenet"],
            "not_found",
            "permission_denied",  # a viewer changes nothing
            "invalid_params",  # a NIC on another tenant's network
            "ok",
            ["acmenet", "trunk"],
        ]
    finally:
        d.stop()
