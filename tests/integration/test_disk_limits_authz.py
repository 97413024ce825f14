"""Who may throttle disks, over mutual TLS: limits are the node's administrators' (they
keep one tenant from taking the host's storage from the others), so an operator can
neither give them at create or attach nor change them, and each refusal changes
nothing; the operator sees them, and a clone it makes keeps them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from novacron import errors
from tests.pki_harness import Pki, client, free_port, tls_daemon


def by_id(entry: dict[str, Any]) -> int:
    return int(entry["id"])


def test_only_an_admin_sets_disk_limits(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    d = tls_daemon(tmp_path, pki, port).start()
    try:
        with (
            client(port, pki.issue("alice", "operator", ("acme",))) as alice,
            client(port, pki.issue("root", "admin", ())) as admin,
        ):
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
    finally:
        assert d.stop() in (0, None)
