"""Who may throttle disks, over mutual TLS: limits are the node's administrators' (they
keep one tenant from taking the host's storage from the others), so an operator can
neither give them at create or attach nor change them, and each refusal changes
nothing; the operator sees them, and a clone it makes keeps them."""

from __future__ import annotations

import pytest

from novacron import errors
from novacron.sync_client import SyncClient
from tests.integration.conftest import by_id


def test_only_an_admin_sets_disk_limits(callers: tuple[SyncClient, SyncClient]) -> None:
    alice, admin = callers
    limited = [{"size_gib": 1, "limits": {"write_iops": 100}}]
    with pytest.raises(errors.PermissionDenied) as made:
        alice.call("vm.create", name="a1", memory_mib=64, disks=limited)
    assert made.value.details == {"param": "disks[0].limits"}
    assert alice.call("vm.list") == []
    alice.call("vm.create", name="a1", memory_mib=64, disks=[{"size_gib": 1}])
    with pytest.raises(errors.PermissionDenied) as attached:
        alice.call("vm.disk.attach", vm="a1", size_gib=1, limits={"read_iops": 5})
    assert attached.value.details == {"param": "limits"}
    with pytest.raises(errors.PermissionDenied):
        alice.call("vm.disk.limit", vm="a1", target="vda", write_iops=0)
    assert [d["target"] for d in alice.call("vm.get", name="a1")["disks"]] == ["vda"]

    admin.call("vm.disk.limit", vm="a1", target="vda", write_iops=100)
    seen = alice.call("vm.get", name="a1")["disks"]
    assert [d["limits"] for d in seen] == [{"write_iops": 100}]
    with pytest.raises(errors.PermissionDenied):  # nor lifted by the tenant
        alice.call("vm.disk.limit", vm="a1", target="vda", write_iops=0)
    copy = alice.call("vm.clone", name="a1", new_name="a2")
    assert [d["limits"] for d in copy["disks"]] == [{"write_iops": 100}]
    tail = admin.call("audit.tail", limit=50)
    refusals = [e for e in tail if e.get("method") == "vm.disk.limit"]
    # the refusals and the change, each audited (oldest first)
    assert [(e["principal"], e["outcome"]) for e in sorted(refusals, key=by_id)] == [
        ("tls:alice", "permission_denied"),
        ("tls:root", "ok"),
        ("tls:alice", "permission_denied"),
    ]


def test_a_tenants_disk_throttle_reaches_the_disks_its_vms_get(
    callers: tuple[SyncClient, SyncClient],
) -> None:
    """``quota.set``'s ``disk_limits`` (admin): the tenant's new disks without limits of
    their own get them, whoever asks; an admin's own limits win; other tenants' disks and
    disks made before stay as they are; a bad map changes nothing."""
    alice, admin = callers
    alice.call("vm.create", name="before", memory_mib=64, disks=[{"size_gib": 1}])
    with pytest.raises(errors.PermissionDenied):  # (an admin's call)
        alice.call("quota.set", tenant="acme", disk_limits={"write_iops": 1})
    throttle = {"write_iops": 300, "write_bytes_per_s": 20 << 20}
    got = admin.call("quota.set", tenant="acme", max_vms=10, disk_limits=throttle)
    assert got["disk_limits"] == throttle and got["max_vms"] == 10
    assert alice.call("quota.get", tenant="acme")["disk_limits"] == throttle

    made = alice.call("vm.create", name="after", memory_mib=64, disks=[{"size_gib": 1}])
    assert [x["limits"] for x in made["disks"]] == [throttle]
    attached = alice.call("vm.disk.attach", vm="after", size_gib=1)
    assert [x["limits"] for x in attached["disks"]] == [throttle, throttle]
    own = admin.call(
        "vm.create",
        name="own",
        tenant="acme",
        memory_mib=64,
        disks=[{"size_gib": 1, "limits": {"read_iops": 7}}, {"size_gib": 1}],
    )
    assert [x["limits"] for x in own["disks"]] == [{"read_iops": 7}, throttle]
    other = admin.call(
        "vm.create", name="other", tenant="globex", memory_mib=64, disks=[{"size_gib": 1}]
    )
    assert [x["limits"] for x in other["disks"]] == [None]
    before = alice.call("vm.get", name="before")["disks"]
    assert [x["limits"] for x in before] == [None]  # (made before: as it was)

    for bad in ({"write_iops": -1}, {"iops": 5}, [1], "fast"):
        with pytest.raises(errors.InvalidParams):
            admin.call("quota.set", tenant="acme", disk_limits=bad)
    assert admin.call("quota.get", tenant="acme")["disk_limits"] == throttle
    lifted = admin.call("quota.set", tenant="acme", max_vms=10)
    assert lifted["disk_limits"] is None
    later = alice.call("vm.disk.attach", vm="after", size_gib=1)
    assert [x["limits"] for x in later["disks"]] == [throttle, throttle, None]
