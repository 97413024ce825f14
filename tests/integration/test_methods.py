"""Every method of the API against the real daemon on libvirt's test driver."""

from __future__ import annotations

from typing import Any

import pytest

from novacron import errors
from tests.daemon_harness import Daemon


def test_session_hello_reports_versions_and_identity(daemon: Daemon) -> None:
    with daemon.client() as c:
        hello = c.call("session.hello", client="pytest")
    assert hello["protocol"] == 1
    assert hello["server"] == "novacrond"
    assert hello["identity"]["kind"] == "unix"
    assert "admin" in hello["identity"]["roles"]
    assert hello["node"]


def test_node_info(daemon: Daemon) -> None:
    with daemon.client() as c:
        info = c.call("node.info")
    assert info["hypervisor"]["uri"] == "test:///default"
    assert info["hypervisor"]["type"] == "TEST"
    assert info["hypervisor"]["disk_discard"] == "unmap"
    assert info["cpu"]["count"] > 0
    assert info["memory_mib"] > 0
    assert info["numa_nodes"] >= 1
    assert info["daemon"]["managed_vms"] == 0
    # every thread pool with its size (the migration engine's: 2 per concurrent migration)
    pools = {p["name"]: p for p in info["daemon"]["pools"]}
    assert {"libvirt", "sqlite", "migration-engine"} <= pools.keys()
    assert pools["migration-engine"]["threads"] == 4 and pools["migration-engine"]["busy"] == 0
    # the daemon's storage pool: its file system, and what its thin volumes were promised
    storage = info["storage"]
    assert (storage["pool"], storage["volumes"], storage["committed_bytes"]) == ("novacron", 0, 0)
    assert storage["capacity_bytes"] >= storage["available_bytes"] > 0
    with daemon.client() as c:
        c.call("vm.create", name="sized", disks=[{"size_gib": 3}, {"size_gib": 2}])
        storage = c.call("node.info")["storage"]
        assert (storage["volumes"], storage["committed_bytes"]) == (2, 5 << 30)
        c.call("vm.delete", name="sized")
        assert c.call("node.info")["storage"]["committed_bytes"] == 0


def test_full_lifecycle(daemon: Daemon) -> None:
    with daemon.client() as c:
        vm = c.call(
            "vm.create",
            name="web1",
            vcpus=2,
            memory_mib=256,
            kernel="/boot/vmlinuz",
            cmdline="console=ttyS0",
            disks=[{"size_gib": 1}],
            tenant="acme",
        )
        assert (vm["state"], vm["tenant"], vm["vcpus"], vm["memory_mib"]) == (
            "stopped",
            "acme",
            2,
            256,
        )
        assert vm["disks"][0]["managed"] is True
        assert len(vm["uuid"]) == 36
        assert c.call("vm.start", name="web1")["state"] == "running"
        assert c.call("vm.pause", name="web1")["state"] == "paused"
        assert c.call("vm.resume", name="web1")["state"] == "running"
        assert c.call("vm.reboot", name="web1")["state"] == "running"
        snap = c.call("vm.snapshot.create", vm="web1", name="s1", description="first")
        assert snap["name"] == "s1" and snap["state"] == "running"
        assert [s["name"] for s in c.call("vm.snapshot.list", vm="web1")] == ["s1"]
        assert c.call("vm.stop", name="web1")["state"] == "stopped"
        assert c.call("vm.snapshot.revert", vm="web1", name="s1")["state"] == "running"
        down = c.call("vm.shutdown", name="web1", timeout_s=10)
        assert down["state"] == "stopped" and down["forced"] is False
        assert c.call("vm.snapshot.delete", vm="web1", name="s1")["deleted"]
        assert c.call("vm.snapshot.list", vm="web1") == []
        listed = c.call("vm.list")
        assert [v["name"] for v in listed] == ["web1"]
        assert c.call("vm.list", tenant="other") == []
        deleted = c.call("vm.delete", name="web1")
        assert deleted["deleted"] and len(deleted["volumes_deleted"]) == 1
        assert c.call("vm.list") == []
        with pytest.raises(errors.NotFound):
            c.call("vm.get", name="web1")


def test_create_and_start_in_one_call_and_forced_delete(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.call("vm.create", name="a", start=True)["state"] == "running"
        with pytest.raises(errors.Conflict):
            c.call("vm.delete", name="a")
        assert c.call("vm.get", name="a")["state"] == "running"
        assert c.call("vm.delete", name="a", force=True)["deleted"]


ERROR_CASES = [
    ("method_not_found", "vm.fly", {}),
    ("invalid_params", "vm.create", {"name": "Bad Name"}),
    ("invalid_params", "vm.create", {"name": "a", "vcpus": "two"}),
    ("invalid_params", "vm.create", {"name": "a", "restart": "sometimes"}),
    ("invalid_params", "vm.update", {"name": "a"}),
    ("invalid_params", "vm.update", {"name": "a", "restart": "sometimes"}),
    ("invalid_params", "vm.update", {"name": "a", "vcpus": 0}),
    ("invalid_params", "vm.update", {"name": "a", "memory_mib": "lots"}),
    ("invalid_params", "vm.update", {"name": "a", "max_vcpus": 0}),
    ("invalid_params", "vm.update", {"name": "a", "max_vcpus": 513}),
    ("invalid_params", "vm.create", {"name": "mv", "vcpus": 4, "max_vcpus": 2}),
    ("invalid_params", "vm.update", {"name": "a", "max_memory_mib": 8}),
    ("invalid_params", "vm.create", {"name": "mm", "memory_mib": 256, "max_memory_mib": 128}),
    (
        "invalid_params",
        "vm.create",
        {"name": "mh", "memory_mib": 256, "max_memory_mib": 512, "hugepage_kib": 2048},
    ),
    ("not_found", "vm.update", {"name": "ghost", "restart": "never"}),
    ("invalid_params", "vm.get", {"name": "a", "extra": 1}),
    ("invalid_params", "vm.shutdown", {"name": "a", "timeout_s": -1}),
    ("invalid_params", "events.subscribe", {"topics": ["nope"]}),
    ("not_found", "vm.get", {"name": "ghost"}),
    ("not_found", "vm.start", {"name": "ghost"}),
    ("not_found", "vm.snapshot.list", {"vm": "ghost"}),
    ("not_found", "vm.stats", {"name": "ghost"}),
    ("not_found", "vm.stats", {"name": "test"}),  # libvirt's own domain is not ours
    ("invalid_params", "vm.stats", {}),
    ("invalid_params", "image.list", {"tenant": "Bad Tenant"}),
    ("invalid_params", "vm.create", {"name": "ci", "cloud_init": {"meta_data": "x"}}),
    ("invalid_params", "vm.create", {"name": "ci", "cloud_init": {"user_data": 5}}),
    ("invalid_params", "vm.create", {"name": "ci", "cloud_init": "#cloud-config"}),
    (
        "invalid_params",
        "vm.create",
        {"name": "ci", "disks": [{"size_gib": 1}] * 16, "cloud_init": {"user_data": "x"}},
    ),
    ("invalid_params", "image.list", {"dir": "/etc"}),
    ("not_found", "vm.guest", {"name": "ghost"}),
    ("not_found", "vm.guest", {"name": "test"}),
    ("invalid_params", "vm.guest", {}),
    ("invalid_params", "vm.guest", {"name": "a", "timeout": 5}),
    ("invalid_params", "vm.stats.list", {"tenant": "Bad Tenant"}),
    ("invalid_params", "vm.stats.list", {"name": "a"}),
    ("not_found", "vm.disk.attach", {"vm": "ghost", "size_gib": 1}),
    ("invalid_params", "vm.disk.attach", {"vm": "ghost"}),
    ("invalid_params", "vm.disk.attach", {"vm": "a", "size_gib": 1, "path": "/x.raw"}),
    ("invalid_params", "vm.disk.attach", {"vm": "a", "size_gib": 0}),
    ("invalid_params", "vm.disk.attach", {"vm": "a", "size_gib": 1, "format": "vmdk"}),
    ("invalid_params", "vm.disk.attach", {"vm": "a", "size_gib": 1, "bus": "scsi"}),
    ("invalid_params", "vm.disk.attach", {"vm": "a", "path": "relative.raw"}),
    ("not_found", "vm.disk.detach", {"vm": "ghost", "target": "vda"}),
    ("invalid_params", "vm.disk.detach", {"vm": "a"}),
    ("not_found", "vm.clone", {"name": "ghost", "new_name": "copy"}),
    ("invalid_params", "vm.clone", {"name": "a"}),
    ("invalid_params", "vm.clone", {"name": "a", "new_name": "Bad Name"}),
    ("invalid_params", "vm.clone", {"name": "a", "new_name": "b", "disks": []}),
    ("not_found", "vm.disk.resize", {"vm": "ghost", "target": "vda", "size_gib": 2}),
    ("invalid_params", "vm.disk.resize", {"vm": "a", "target": "vda"}),
    ("invalid_params", "vm.disk.resize", {"vm": "a", "target": "vda", "size_gib": 0}),
    ("invalid_params", "vm.disk.resize", {"vm": "a", "target": "vda", "size_gib": "2"}),
    ("invalid_params", "vm.disk.resize", {"vm": "a", "target": "vda", "size_gib": 2, "x": 1}),
    ("not_found", "vm.disk.limit", {"vm": "ghost", "target": "vda", "read_iops": 5}),
    ("invalid_params", "vm.disk.limit", {"vm": "a", "target": "vda"}),
    ("invalid_params", "vm.disk.limit", {"vm": "a", "target": "vda", "read_iops": -1}),
    ("invalid_params", "vm.disk.limit", {"vm": "a", "target": "vda", "read_iops": "5"}),
    ("invalid_params", "vm.disk.limit", {"vm": "a", "target": "vda", "total_iops": 5}),
    ("invalid_params", "vm.disk.limit", {"vm": "a", "read_iops": 5}),
    (
        "not_found",
        "vm.nic.limit",
        {"vm": "ghost", "mac": "52:54:00:00:00:01", "inbound_bytes_per_s": 5000},
    ),
    (
        "not_found",
        "vm.nic.limit",
        {"vm": "a", "mac": "52:54:00:00:00:01", "inbound_bytes_per_s": 5000},
    ),
    ("invalid_params", "vm.nic.limit", {"vm": "a", "mac": "52:54:00:00:00:01"}),
    ("invalid_params", "vm.nic.limit", {"vm": "a", "mac": "nope", "inbound_bytes_per_s": 5000}),
    ("invalid_params", "vm.nic.limit", {"vm": "a", "inbound_bytes_per_s": 5000}),
    ("invalid_params", "vm.disk.attach", {"vm": "a", "size_gib": 1, "limits": {"x": 1}}),
    ("invalid_params", "vm.nic.detach", {"vm": "a", "mac": "52:54:00:00:00:01", "timeout_s": 0}),
]


@pytest.mark.parametrize(("code", "method", "params"), ERROR_CASES)
def test_error_codes(daemon: Daemon, code: str, method: str, params: dict[str, Any]) -> None:
    with daemon.client() as c:
        with pytest.raises(errors.NovaCronError) as info:
            c.call(method, **params)
        assert info.value.code == code
        assert info.value.message
        # the connection stays usable after an error
        assert c.call("session.hello")["protocol"] == 1


def test_state_conflicts_and_duplicates(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="a")
        with pytest.raises(errors.AlreadyExists):
            c.call("vm.create", name="a")
        with pytest.raises(errors.AlreadyExists):  # libvirt's own "test" domain is not ours
            c.call("vm.create", name="test")
        for method in ("vm.pause", "vm.resume", "vm.stop", "vm.reboot", "vm.shutdown"):
            with pytest.raises(errors.Conflict):
                c.call(method, name="a")
        c.call("vm.start", name="a")
        with pytest.raises(errors.Conflict):
            c.call("vm.start", name="a")
        c.call("vm.snapshot.create", vm="a", name="s")
        with pytest.raises(errors.AlreadyExists):
            c.call("vm.snapshot.create", vm="a", name="s")
        with pytest.raises(errors.NotFound):
            c.call("vm.snapshot.revert", vm="a", name="nope")
        assert c.call("vm.get", name="a")["state"] == "running"
        # a disk attached since the snapshot: the revert is refused, naming it, and the
        # VM keeps its disk (the test driver attaches to a stopped VM only)
        c.call("vm.stop", name="a")
        c.call("vm.disk.attach", vm="a", size_gib=1)
        with pytest.raises(errors.Conflict) as refused:
            c.call("vm.snapshot.revert", vm="a", name="s")
        assert refused.value.details["devices"] == ["disk vda added since"]
        doc = c.call("vm.get", name="a")
        assert doc["state"] == "stopped" and [d["target"] for d in doc["disks"]] == ["vda"]


def test_unmanaged_domains_are_not_listed(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.call("vm.list") == []  # test:///default ships a domain called "test"
        with pytest.raises(errors.NotFound):
            c.call("vm.get", name="test")


def test_events_delivered(daemon: Daemon) -> None:
    with daemon.client() as actor, daemon.client(timeout=15) as watcher:
        stream = watcher.events(["vm.state"])
        actor.call("vm.create", name="ev1")
        actor.call("vm.start", name="ev1")
        actor.call("vm.pause", name="ev1")
        seen = []
        for event in stream:
            seen.append((event["vm"], event["state"], event["reason"]))
            if event["state"] == "paused":
                break
    assert ("ev1", "defined", "added") in seen
    assert ("ev1", "running", "booted") in seen
    assert seen[-1] == ("ev1", "paused", "paused")


def test_subscribe_twice_is_a_conflict_and_unsubscribe_works(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.call("events.subscribe")["subscribed"]
        with pytest.raises(errors.Conflict):
            c.call("events.subscribe")
        assert c.call("events.unsubscribe")["was_subscribed"]
        assert c.call("events.subscribe")["subscribed"]


def test_failed_duplicate_create_keeps_the_original_managed(daemon: Daemon) -> None:
    with daemon.client() as c, daemon.client(timeout=10) as watcher:
        c.call("vm.create", name="dup")
        with pytest.raises(errors.AlreadyExists):
            c.call("vm.create", name="dup")
        events = watcher.events()
        c.call("vm.start", name="dup")
        assert next(events) == {
            "topic": "vm.state",
            "vm": "dup",
            "tenant": "default",
            "state": "running",
            "reason": "booted",
        }
        assert c.call("node.info")["daemon"]["managed_vms"] == 1


def test_vm_stats_counts_a_running_vm_and_not_a_stopped_one(daemon: Daemon) -> None:
    with daemon.client() as c:
        made = c.call("vm.create", name="s1", vcpus=2, memory_mib=128, disks=[{"size_gib": 1}])
        c.call("vm.create", name="s2", tenant="acme")
        idle = c.call("vm.stats", name="s1")
        assert (idle["name"], idle["tenant"], idle["state"]) == ("s1", "default", "stopped")
        assert idle["reason"] == "unknown"  # (defined, never run: libvirt says no more)
        assert (idle["cpu"], idle["memory"], idle["disks"], idle["nics"]) == (None, None, [], [])
        c.call("vm.start", name="s1")
        doc = c.call("vm.stats", name="s1")
        assert (doc["state"], doc["reason"]) == ("running", "booted") and doc["at"] >= idle["at"]
        assert doc["cpu"]["vcpus"] == 2 and doc["cpu"]["time_ns"] > 0
        assert doc["memory"]["max_kib"] == 128 * 1024
        [disk] = doc["disks"]
        assert (disk["target"], disk["path"]) == ("vda", made["disks"][0]["path"])
        assert isinstance(disk["wr_bytes"], int)
        listed = c.call("vm.stats.list")
        assert [(d["name"], d["tenant"], d["state"]) for d in listed] == [
            ("s1", "default", "running"),
            ("s2", "acme", "stopped"),
        ]
        assert [d["name"] for d in c.call("vm.stats.list", tenant="acme")] == ["s2"]
        c.call("vm.pause", name="s1")
        assert (c.call("vm.stats", name="s1")["reason"]) == "user"
        assert c.call("vm.stats.list", tenant="nobody") == []


def test_vm_guest_asks_a_running_guests_agent(daemon: Daemon) -> None:
    """libvirt's test driver answers for an agent it pretends each running domain has; a
    stopped VM is refused without asking. Real agents answering, and
    an agent that is not there, are in tests/system/test_guest_agent.py."""
    with daemon.client() as c:
        c.call("vm.create", name="g1", tenant="acme")
        with pytest.raises(errors.Conflict, match="only a running guest answers"):
            c.call("vm.guest", name="g1")
        assert c.call("vm.get", name="g1")["agent"] == "none"  # (test domains have no channel)
        c.call("vm.start", name="g1")
        doc = c.call("vm.guest", name="g1")
        assert (doc["name"], doc["tenant"], doc["agent"]) == ("g1", "acme", "connected")
        assert (doc["hostname"], doc["os"]) == (None, None)  # (no guestInfo in the test driver)
        assert doc["interfaces"] == []  # (it answers for the domain's NICs: none here)


def test_disks_are_attached_and_detached_after_create(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="d1", memory_mib=64, disks=[{"size_gib": 1}])
        grown = c.call("vm.disk.attach", vm="d1", size_gib=2, format="raw")
        assert [(d["target"], d["managed"]) for d in grown["disks"]] == [
            ("vda", True),
            ("vdb", True),
        ]
        assert grown["disks"][1]["path"].endswith("/d1-vdb.raw")
        with pytest.raises(errors.NotFound, match="its disks: vda, vdb"):
            c.call("vm.disk.detach", vm="d1", target="vdz")
        c.call("vm.start", name="d1")
        # the test driver cannot unplug from a running domain: refused, nothing changes
        with pytest.raises(errors.Conflict, match="not supported"):
            c.call("vm.disk.detach", vm="d1", target="vdb")
        assert [d["target"] for d in c.call("vm.get", name="d1")["disks"]] == ["vda", "vdb"]
        with pytest.raises(errors.InvalidParams, match="timeout_s"):
            c.call("vm.disk.detach", vm="d1", target="vdb", timeout_s=0)
        c.call("vm.pause", name="d1")
        with pytest.raises(errors.Conflict, match="paused guest cannot release"):
            c.call("vm.disk.detach", vm="d1", target="vdb")
        c.call("vm.stop", name="d1")
        shrunk = c.call("vm.disk.detach", vm="d1", target="vda")
        assert shrunk["volumes_deleted"][0].endswith("/d1-vda.qcow2")
        assert [d["target"] for d in shrunk["disks"]] == ["vdb"]
        # the next disk takes the free name
        again = c.call("vm.disk.attach", vm="d1", size_gib=1)
        assert sorted(d["target"] for d in again["disks"]) == ["vda", "vdb"]
        c.call("vm.delete", name="d1")
