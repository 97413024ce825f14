"""A host's maintenance against the live daemon (libvirt's test driver): a cordon
refuses new VMs and survives restarts; a drain without a place to go is refused and
changes nothing; a drain whose VMs cannot leave ends failed with each VM's reason and
every VM still here. (Drains that move real guests: tests/system/test_cluster_migration.py.)"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from novacron import errors
from novacron.sync_client import SyncClient
from tests.daemon_harness import Daemon
from tests.integration.test_cli import cli


def ended(c: SyncClient, op_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (doc := c.call("op.get", op=op_id))["state"] == "running":
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)
    ended_doc: dict[str, Any] = doc
    return ended_doc


def test_a_cordon_refuses_new_vms_keeps_the_old_ones_and_survives_a_restart(
    daemon: Daemon,
) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="old", memory_mib=64)
        assert c.call("node.info")["cordon"] is None
        doc = c.call("node.cordon", reason="new DIMMs")
        assert doc["cordon"]["reason"] == "new DIMMs" and doc["cordon"]["by"].startswith("unix:")
        since = doc["cordon"]["since"]
        assert abs(since - time.time()) < 60
        with pytest.raises(errors.Conflict) as refused:
            c.call("vm.create", name="new", memory_mib=64)
        assert refused.value.details == {
            "node": doc["node"],
            "cordoned": True,
            "reason": "new DIMMs",
        }
        assert "cordoned (new DIMMs)" in refused.value.message
        assert [v["name"] for v in c.call("vm.list")] == ["old"]  # nothing was made
        # the VMs it has still start and stop
        assert c.call("vm.start", name="old")["state"] == "running"
        assert c.call("vm.stop", name="old")["state"] == "stopped"
        # cordoned again: the new reason, the first time
        again = c.call("node.cordon", reason="and a BIOS update")
        assert again["cordon"]["since"] == since
        assert again["cordon"]["reason"] == "and a BIOS update"
    daemon.stop()
    daemon.start()
    with daemon.client() as c:
        assert c.call("node.info")["cordon"]["reason"] == "and a BIOS update"
        with pytest.raises(errors.Conflict):
            c.call("vm.create", name="new", memory_mib=64)
        uncordoned = c.call("node.uncordon")
        assert uncordoned == {"node": doc["node"], "cordon": None, "was_cordoned": True}
        assert c.call("node.uncordon")["was_cordoned"] is False
        assert c.call("vm.create", name="new", memory_mib=64)["name"] == "new"
        assert c.call("node.info")["cordon"] is None
        methods = [e["method"] for e in c.call("audit.tail", limit=20)]
        assert "node.cordon" in methods and "node.uncordon" in methods


def test_a_drain_with_nowhere_to_go_is_refused_and_changes_nothing(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="stay", memory_mib=64)
        with pytest.raises(errors.InvalidParams) as refused:
            c.call("node.drain")  # no cluster, no destination
        assert refused.value.details == {"param": "destination"}
        for bad in ({"destination": "a b"}, {"destination": 7}, {"compression": "gzip"}):
            with pytest.raises(errors.InvalidParams):
                c.call("node.drain", **bad)
        with pytest.raises(errors.InvalidParams) as unknown:
            c.call("node.drain", destination="hostb", nmae="x")
        assert unknown.value.details == {"unknown": ["nmae"]}
        assert c.call("node.info")["cordon"] is None
        assert c.call("op.list") == []
        assert [v["name"] for v in c.call("vm.list")] == ["stay"]


def test_a_drain_whose_vms_cannot_leave_reports_each_and_keeps_them(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="run1", memory_mib=64, start=True)
        c.call("vm.create", name="cold1", memory_mib=64)
        c.call("vm.create", name="cold2", memory_mib=64)
        started = c.call("node.drain", destination="127.0.0.1:1", keep_stopped=True)
        assert started["vms"] == ["cold1", "cold2", "run1"]
        doc = ended(c, started["op"])
        assert doc["kind"] == "drain" and doc["vm"] == "" and doc["peer"] == "127.0.0.1:1"
        assert doc["state"] == "failed" and doc["error"]["code"] == "migration_failed"
        assert doc["error"]["details"] == {"vms": ["run1"]}
        result = doc["result"]
        assert result["moved"] == [] and result["left"] == []
        assert [k["vm"] for k in result["kept"]] == ["cold1", "cold2"]
        (failed,) = result["failed"]
        # this daemon has no node certificate: no migration can start
        assert failed["vm"] == "run1" and failed["op"] is None
        assert failed["error"]["code"] == "unavailable", failed
        # the node is cordoned, every VM is here as it was
        info = c.call("node.info")
        assert info["cordon"]["reason"] == "drain"
        states = {v["name"]: v["state"] for v in c.call("vm.list")}
        assert states == {"run1": "running", "cold1": "stopped", "cold2": "stopped"}
        # (the stored row says the same once the op is no longer in memory: op.list)
        listed = next(o for o in c.call("op.list") if o["id"] == started["op"])
        assert listed["state"] == "failed" and listed["result"] == result


def test_draining_an_empty_node_succeeds_at_once(daemon: Daemon) -> None:
    with daemon.client() as c:
        started = c.call("node.drain", destination="hostb", reason="rack move")
        assert started["vms"] == []
        doc = ended(c, started["op"])
        assert doc["state"] == "succeeded" and doc["error"] is None
        assert doc["result"] == {
            "node": started["node"],
            "moved": [],
            "failed": [],
            "kept": [],
            "left": [],
        }
        assert c.call("node.info")["cordon"]["reason"] == "rack move"


def test_cli_cordon_drain_uncordon(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="clivm", memory_mib=64, start=True)
    out = cli(daemon, "node", "cordon", "--reason", "kernel update").stdout
    assert "cordoned" in out and "yes" in out and "kernel update" in out
    assert "yes, by unix:" in cli(daemon, "node", "info").stdout
    drained = cli(daemon, "node", "drain", "--to", "127.0.0.1:1", check=False)
    assert drained.returncode != 0
    assert "moving clivm" in drained.stdout and "failed" in drained.stdout, drained.stdout
    assert "migration_failed" in drained.stderr or "did not leave" in drained.stderr
    detached = json.loads(
        cli(daemon, "--json", "node", "drain", "--to", "127.0.0.1:1", "--detach").stdout
    )
    assert detached["vms"] == ["clivm"] and detached["op"].startswith("op-")
    out = cli(daemon, "node", "uncordon").stdout
    assert "no" in out
    assert json.loads(cli(daemon, "--json", "node", "info").stdout)["cordon"] is None
