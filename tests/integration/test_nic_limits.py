"""NIC limits through the daemon (libvirt's test driver, whose domains have no taps:
the shaping of real taps is in ``test_shaping.py`` and ``tests/system/test_networking.py``).

Over mutual TLS: limits are the node's administrators' (as disk limits are), so an
operator can give them neither at create, nor at attach, nor with ``vm.nic.limit``, and
each refusal changes nothing. In a network namespace, as root (an admin): limits given at
create, changed and lifted one at a time, shown by ``vm.get``, kept across a
restart of the daemon, and bad requests refused with nothing changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from novacron import errors
from novacron.sync_client import SyncClient
from tests.daemon_harness import Daemon
from tests.integration.conftest import by_id
from tests.integration.test_cli import cli
from tests.netns import Namespace

MAC = "52:54:00:aa:00:01"


def test_only_an_admin_limits_nics(callers: tuple[SyncClient, SyncClient]) -> None:
    alice, admin = callers
    alice.call("vm.create", name="web", tenant="acme", memory_mib=64)
    limits = {"inbound_bytes_per_s": 1_000_000}
    with pytest.raises(errors.PermissionDenied) as denied:
        alice.call(
            "vm.create",
            name="web2",
            tenant="acme",
            memory_mib=64,
            nics=[{"network": "lan", "limits": limits}],
        )
    assert denied.value.details["param"] == "nics[0].limits"
    with pytest.raises(errors.PermissionDenied) as denied:
        alice.call("vm.nic.attach", vm="web", network="lan", limits=limits)
    assert denied.value.details["param"] == "limits"
    with pytest.raises(errors.PermissionDenied):
        alice.call("vm.nic.limit", vm="web", mac=MAC, **limits)
    assert [vm["name"] for vm in alice.call("vm.list")] == ["web"]
    assert alice.call("vm.get", name="web")["nics"] == []
    # the admin gets past the role: on to the VM's NICs (none) and the network
    with pytest.raises(errors.NotFound) as missing:
        admin.call("vm.nic.limit", vm="web", mac=MAC, **limits)
    assert missing.value.details == {"vm": "web", "mac": MAC}
    with pytest.raises(errors.InvalidParams, match="network 'lan' not found"):
        admin.call("vm.nic.attach", vm="web", network="lan", limits=limits)
    audit = admin.call("audit.tail", limit=50)
    refused = [e for e in audit if e.get("method") == "vm.nic.limit"]
    assert [(e["principal"], e["outcome"]) for e in sorted(refused, key=by_id)] == [
        ("tls:alice", "permission_denied"),
        ("tls:root", "not_found"),
    ]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    space = Namespace("nicl")
    d = Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
        prefix=space.prefix,
    ).start()
    try:
        yield d
        assert d.stop() in (0, None), d.log_text()
        assert "Traceback" not in d.log_text(), d.log_text()
    finally:
        d.stop()
        space.remove()


def test_limits_are_kept_changed_and_lifted(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("net.create", name="lan")
        both = {"inbound_bytes_per_s": 2_000_000, "outbound_bytes_per_s": 1_000_000}
        vm = c.call(
            "vm.create",
            name="web",
            memory_mib=64,
            nics=[{"network": "lan", "mac": MAC, "limits": both}, {"network": "lan"}],
        )
        assert [n.get("limits") for n in vm["nics"]] == [both, None]
        other = vm["nics"][1]["mac"]

        # one limit changed, the other stays; a 0 lifts one
        got = c.call("vm.nic.limit", vm="web", mac=MAC, inbound_bytes_per_s=3_000_000)
        assert got["nics"][0]["limits"] == {**both, "inbound_bytes_per_s": 3_000_000}
        got = c.call("vm.nic.limit", vm="web", mac=MAC, outbound_bytes_per_s=0)
        assert got["nics"][0]["limits"] == {"inbound_bytes_per_s": 3_000_000}
        got = c.call("vm.nic.limit", vm="web", mac=other.upper(), outbound_bytes_per_s=5000)
        assert got["nics"][1]["limits"] == {"outbound_bytes_per_s": 5000}
        kept = got["nics"]

        # refused, and nothing changes
        bad: list[tuple[dict[str, Any], str]] = [
            ({"mac": MAC}, "name at least one limit"),
            ({"mac": MAC, "inbound_bytes_per_s": 999}, "at least 1000"),
            ({"mac": MAC, "inbound_bytes_per_s": 1 << 32}, "inbound_bytes_per_s"),
            ({"mac": MAC, "inbound_bytes_per_s": -1}, "inbound_bytes_per_s"),
            ({"mac": MAC, "inbound_bytes_per_s": "fast"}, "integer"),
            ({"mac": MAC, "burst": 5}, "unknown key"),
            ({"mac": "01:00:5e:00:00:01", "inbound_bytes_per_s": 5000}, "unicast"),
        ]
        for params, why in bad:
            with pytest.raises(errors.InvalidParams, match=why):
                c.call("vm.nic.limit", vm="web", **params)
        with pytest.raises(errors.InvalidParams, match="at least 1000"):
            c.call("vm.nic.attach", vm="web", network="lan", limits={"inbound_bytes_per_s": 1})
        assert c.call("vm.get", name="web")["nics"] == kept

    daemon.stop()
    daemon.start()
    with daemon.client() as c:
        assert c.call("vm.get", name="web")["nics"] == kept
        lifted = c.call(
            "vm.nic.limit", vm="web", mac=MAC, inbound_bytes_per_s=0, outbound_bytes_per_s=0
        )
        assert "limits" not in lifted["nics"][0]

    # a tenant's default: given to each new NIC without limits of its own (an admin's own
    # win), written into the NIC's spec, so a later change or lift changes no NIC
    cli(daemon, "quota", "set", "default", "--nic-inbound", "4000000", "--nic-outbound", "2000")
    with daemon.client() as c:
        quota = c.call("quota.get", tenant="default")
        default = {"inbound_bytes_per_s": 4_000_000, "outbound_bytes_per_s": 2000}
        assert quota["nic_limits"] == default
        own = {"inbound_bytes_per_s": 9999}
        made = c.call(
            "vm.create",
            name="db",
            memory_mib=64,
            nics=[{"network": "lan"}, {"network": "lan", "limits": own}],
        )
        assert [n["limits"] for n in made["nics"]] == [default, own]
        with pytest.raises(errors.InvalidParams, match="nic_limits"):
            c.call("quota.set", tenant="default", nic_limits={"inbound_bytes_per_s": 5})
        c.call("quota.set", tenant="default")  # lifted
        assert c.call("quota.get", tenant="default")["nic_limits"] is None
        assert c.call("vm.get", name="db")["nics"] == made["nics"]
        c.call("vm.delete", name="db")

    # the CLI: a table with the limits, the JSON as vm.get has it, a refusal without any
    table = cli(daemon, "vm", "nic", "limit", "web", MAC, "--outbound", "7000", "--inbound", "9000")
    assert "LIMITS" in table.stdout and "in 9000 B/s, out 7000 B/s" in table.stdout
    doc = json.loads(
        cli(daemon, "--json", "vm", "nic", "limit", "web", MAC, "--inbound", "0").stdout
    )
    assert doc["nics"][0]["limits"] == {"outbound_bytes_per_s": 7000}
    refused = cli(daemon, "vm", "nic", "limit", "web", MAC, check=False)
    assert refused.returncode != 0 and "name at least one limit" in refused.stderr
    with daemon.client() as c:
        c.call("vm.delete", name="web")
        c.call("net.delete", name="lan")
