"""Host files a tenant's VM may use, end to end over mutual TLS: the node offers
directories (``[vm] disk_dirs`` per tenant, ``[vm] boot_dirs``); an operator names files
inside them and nothing else; an admin names any path; a refusal is audited and leaves
nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from novacron import errors
from tests.pki_harness import Pki, client, free_port, tls_daemon


def test_an_operator_uses_only_the_files_offered_to_its_tenant(tmp_path: Path) -> None:
    for d in ("images/acme", "images/globex", "boot", "elsewhere"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("images/acme/root.qcow2", "images/globex/db.qcow2", "boot/vmlinuz", "elsewhere/k"):
        (tmp_path / f).write_bytes(b"x")
    (tmp_path / "images/acme/sneaky.qcow2").symlink_to(tmp_path / "images/globex/db.qcow2")
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    d = tls_daemon(
        tmp_path,
        pki,
        port,
        "--vm-disk-dirs",
        str(tmp_path / "images/{tenant}"),
        "--vm-boot-dirs",
        str(tmp_path / "boot"),
    ).start()
    try:
        with client(port, pki.issue("alice", "operator", ("acme",))) as alice:
            made = alice.call(
                "vm.create",
                name="a1",
                memory_mib=64,
                kernel=str(tmp_path / "boot/vmlinuz"),
                disks=[{"path": str(tmp_path / "images/acme/root.qcow2")}, {"size_gib": 1}],
            )
            assert made["disks"][0]["path"] == str(tmp_path / "images/acme/root.qcow2")
            refused = [
                ({"disks": [{"path": str(tmp_path / "images/globex/db.qcow2")}]}, "disks[0]"),
                ({"disks": [{"path": str(tmp_path / "images/acme/sneaky.qcow2")}]}, "disks[0]"),
                ({"disks": [{"size_gib": 1}, {"path": "/etc/shadow"}]}, "disks[1]"),
                ({"disks": [{"path": str(tmp_path / "state/state.db")}]}, "disks[0]"),
                ({"kernel": str(tmp_path / "elsewhere/k")}, "kernel"),
                ({"kernel": str(tmp_path / "boot/vmlinuz"), "initrd": "/etc/shadow"}, "initrd"),
            ]
            for params, param in refused:
                with pytest.raises(errors.PermissionDenied) as info:
                    alice.call("vm.create", name="a2", memory_mib=64, **params)
                assert info.value.details["param"].startswith(param), params
            assert [v["name"] for v in alice.call("vm.list")] == ["a1"]  # nothing was made
            # a disk attached later is held to the same offer
            with pytest.raises(errors.PermissionDenied) as info:
                alice.call("vm.disk.attach", vm="a1", path=str(tmp_path / "images/globex/db.qcow2"))
            assert info.value.details["param"] == "path"
            later = alice.call("vm.disk.attach", vm="a1", path=str(tmp_path / "images/acme/x.raw"))
            assert [d["target"] for d in later["disks"]] == ["vda", "vdb", "vdc"]
        with client(port, pki.issue("root-ops", "admin")) as admin:
            anywhere = admin.call(
                "vm.create",
                name="g1",
                tenant="globex",
                memory_mib=64,
                kernel=str(tmp_path / "elsewhere/k"),
                disks=[{"path": str(tmp_path / "images/acme/root.qcow2")}],
            )
            assert anywhere["tenant"] == "globex"
            entries = admin.call("audit.tail", limit=50)
        denied = [e for e in entries if e["principal"] == "tls:alice" and e["outcome"] != "ok"]
        assert len(denied) == len(refused) + 1
        assert {e["method"] for e in denied} == {"vm.create", "vm.disk.attach"}
    finally:
        assert d.stop() in (0, None)
    assert "Traceback" not in d.log_text()
