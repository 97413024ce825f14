"""Host files a tenant's VM may use, end to end over mutual TLS: the node offers
directories (``[vm] disk_dirs`` per tenant, ``[vm] boot_dirs``); an operator names files
inside them and nothing else; an admin names any path; a refusal is audited and leaves
nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from novacron import errors
from tests.pki_harness import Pki, client, free_port, tls_daemon


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def test_an_operator_uses_only_the_files_offered_to_its_tenant(tmp_path: Path) -> None:
    for sub in ("images/acme", "images/globex", "boot", "elsewhere"):
        (tmp_path / sub).mkdir(parents=True)
    for f in ("images/acme/root.qcow2", "images/globex/db.qcow2"):
        qemu_img("create", "-f", "qcow2", tmp_path / f, "1M")
    for f in ("boot/vmlinuz", "elsewhere/k"):
        (tmp_path / f).write_bytes(b"x")
    qemu_img("create", "-f", "raw", tmp_path / "images/acme/x.raw", "1M")
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
            refused: list[tuple[dict[str, Any], str]] = [
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
            raw = str(tmp_path / "images/acme/x.raw")
            later = alice.call("vm.disk.attach", vm="a1", path=raw, format="raw")
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


def test_disk_images_are_looked_at_when_named(tmp_path: Path) -> None:
    """What a named image would do at the VM's start is found when it is named: an
    overlay of a file the caller may not name is refused to an operator (QEMU would read
    it for the guest), one over its own base is taken; a file that is not there, a raw
    image called qcow2, one file as two disks and one file in two formats are refused
    with their own codes, and nothing is made."""
    acme, globex = tmp_path / "images/acme", tmp_path / "images/globex"
    for directory in (acme, globex):
        directory.mkdir(parents=True)
    qemu_img("create", "-f", "qcow2", globex / "db.qcow2", "1M")
    qemu_img("create", "-f", "raw", acme / "base.raw", "1M")
    qemu_img("create", "-f", "raw", acme / "plain.raw", "1M")
    qemu_img("create", "-f", "qcow2", acme / "shared.qcow2", "1M")
    for name, backing, fmt in (
        ("steal.qcow2", globex / "db.qcow2", "qcow2"),
        ("host.qcow2", Path("/etc/hostname"), "raw"),
        ("own.qcow2", acme / "base.raw", "raw"),
        ("gone.qcow2", acme / "missing.raw", "raw"),
    ):
        qemu_img("create", "-f", "qcow2", "-u", "-b", backing, "-F", fmt, acme / name, "1M")
    (acme / "link.raw").symlink_to(acme / "plain.raw")
    (acme / "sub").mkdir()
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    d = tls_daemon(tmp_path, pki, port, "--vm-disk-dirs", str(tmp_path / "images/{tenant}"))
    d.start()
    try:
        with client(port, pki.issue("root-ops", "admin")) as admin:
            # an admin's VM of another tenant has acme's shared.qcow2 (admins name any
            # file), and one has an overlay of a host file
            for name, image in (("g1", "shared.qcow2"), ("g2", "host.qcow2")):
                disks = [{"path": str(acme / image)}]
                admin.call("vm.create", name=name, tenant="globex", memory_mib=64, disks=disks)
        with client(port, pki.issue("alice", "operator", ("acme",))) as alice:
            made = alice.call(
                "vm.create", name="a1", memory_mib=64, disks=[{"path": str(acme / "own.qcow2")}]
            )
            assert made["disks"][0]["path"] == str(acme / "own.qcow2")
            refused: list[tuple[list[dict[str, str]], type[errors.NovaCronError], str]] = [
                ([{"path": str(acme / "steal.qcow2")}], errors.PermissionDenied, "backing file"),
                ([{"path": str(acme / "host.qcow2")}], errors.PermissionDenied, "backing file"),
                ([{"path": str(acme / "gone.qcow2")}], errors.InvalidParams, "does not exist"),
                ([{"path": str(acme / "nothing.qcow2")}], errors.InvalidParams, "no such file"),
                ([{"path": str(acme / "sub")}], errors.InvalidParams, "not a regular file"),
                ([{"path": str(acme / "plain.raw")}], errors.InvalidParams, "not a qcow2 image"),
                (
                    [
                        {"path": str(acme / "plain.raw"), "format": "raw"},
                        {"path": str(acme / "link.raw"), "format": "raw"},
                    ],
                    errors.InvalidParams,
                    r"same file as disks\[0\]\.path",
                ),
                (
                    [{"path": str(acme / "shared.qcow2"), "format": "raw"}],
                    errors.Conflict,
                    "a disk of another VM on this node as qcow2",
                ),
            ]
            for disks, code, words in refused:
                with pytest.raises(code, match=words) as info:
                    alice.call("vm.create", name="a2", memory_mib=64, disks=disks)
                assert info.value.details["param"].startswith("disks["), disks
                assert "g1" not in str(info.value)  # (another tenant's VM is not named)
            with pytest.raises(errors.PermissionDenied) as denied:
                alice.call(
                    "vm.create",
                    name="a2",
                    memory_mib=64,
                    disks=[{"path": str(acme / "steal.qcow2")}],
                )
            assert denied.value.details["param"] == "disks[0].path (its backing file)"
            assert denied.value.details["path"] == str(globex / "db.qcow2")
            assert [v["name"] for v in alice.call("vm.list")] == ["a1"]  # nothing was made
            # attached: the VM's own disks count (own.qcow2 by another name is the same file)
            (acme / "again.qcow2").symlink_to(acme / "own.qcow2")
            with pytest.raises(errors.InvalidParams, match="same file as the VM's disk"):
                alice.call("vm.disk.attach", vm="a1", path=str(acme / "again.qcow2"))
            with pytest.raises(errors.PermissionDenied, match="backing file"):
                alice.call("vm.disk.attach", vm="a1", path=str(acme / "steal.qcow2"))
            plain = alice.call(
                "vm.disk.attach", vm="a1", path=str(acme / "plain.raw"), format="raw"
            )
            assert [x["target"] for x in plain["disks"]] == ["vda", "vdb"]
            with pytest.raises(errors.Conflict, match="a disk of vm 'a1' on this node as qcow2"):
                alice.call(
                    "vm.create",
                    name="a3",
                    memory_mib=64,
                    disks=[{"path": str(acme / "own.qcow2"), "format": "raw"}],
                )
    finally:
        assert d.stop() in (0, None)
    assert "Traceback" not in d.log_text()
