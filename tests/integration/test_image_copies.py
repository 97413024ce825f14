"""New volumes copied from base images, over mutual TLS on a daemon of libvirt's test
driver: what an operator may copy (``[vm] image_dirs``, and ``disk_dirs``), which images
are refused and why, how the copy's size meets the tenant's quota — each refusal
audited, leaving nothing behind. The test driver keeps no files, so the copy itself
is refused there (``conflict``, libvirt's "not supported"), again leaving nothing;
copies through a real libvirtd are in ``tests/system/test_disks.py``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from novacron import errors
from tests.pki_harness import Pki, client, free_port, tls_daemon


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def test_an_operator_copies_only_offered_images_that_stand_alone(tmp_path: Path) -> None:
    for sub in ("bases", "images/acme", "elsewhere"):
        (tmp_path / sub).mkdir(parents=True)
    base = tmp_path / "bases/debian.qcow2"
    qemu_img("create", "-f", "qcow2", base, "2G")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", tmp_path / "bases/over.qcow2")
    (tmp_path / "images/acme/own.raw").write_bytes(b"\x01" * 4096)
    qemu_img("create", "-f", "qcow2", tmp_path / "elsewhere/x.qcow2", "1G")
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    d = tls_daemon(
        tmp_path,
        pki,
        port,
        "--vm-image-dirs",
        str(tmp_path / "bases"),
        "--vm-disk-dirs",
        str(tmp_path / "images/{tenant}"),
    ).start()
    alice_cert = pki.issue("alice", "operator", ("acme",))
    try:
        with client(port, alice_cert) as alice:
            # what alice may copy: the shared directory's images and her tenant's own
            listed = alice.call("image.list")
            assert listed["tenant"] == "acme"
            assert listed["dirs"] == [str(tmp_path / "bases"), str(tmp_path / "images/acme")]
            shown = {
                i["name"]: (i["format"], i["size_gib"], i["refused"]) for i in listed["images"]
            }
            assert shown["debian.qcow2"] == ("qcow2", 2, None)
            assert shown["own.raw"] == ("raw", 1, None)
            assert "backing file" in shown["over.qcow2"][2]
            assert "x.qcow2" not in shown
            with pytest.raises(errors.PermissionDenied):
                alice.call("image.list", tenant="globex")
            alice.call("vm.create", name="keep", memory_mib=64, disks=[{"size_gib": 1}])
            refusals: list[tuple[dict[str, Any], type[errors.NovaCronError], str, str]] = [
                (
                    {"image": str(tmp_path / "elsewhere/x.qcow2")},
                    errors.PermissionDenied,
                    "image_dirs: .*bases; disk_dirs: ",
                    "disks[0].image",
                ),
                (
                    {"image": str(tmp_path / "bases/over.qcow2")},
                    errors.InvalidParams,
                    "backing file",
                    "disks[0].image",
                ),
                (
                    {"image": str(base), "size_gib": 1},
                    errors.InvalidParams,
                    "more than 1 GiB",
                    "disks[0].image",
                ),
                (
                    {"image": str(base), "format": "raw"},
                    errors.InvalidParams,
                    "is a qcow2 image",
                    "disks[0].image",
                ),
                (
                    {"image": str(tmp_path / "bases/none.qcow2")},
                    errors.InvalidParams,
                    "No such file",
                    "disks[0].image",
                ),
                ({"image": "bases/debian.qcow2"}, errors.InvalidParams, "absolute", ""),
            ]
            for disk, kind, match, param in refusals:
                with pytest.raises(kind, match=match) as info:
                    alice.call("vm.create", name="c1", memory_mib=64, disks=[disk])
                if param:
                    assert info.value.details["param"] == param, disk
            with pytest.raises(errors.PermissionDenied) as info:
                alice.call("vm.disk.attach", vm="keep", image=str(tmp_path / "elsewhere/x.qcow2"))
            assert info.value.details["param"] == "image"

            # the test driver keeps no files: the copy is refused, and nothing is left
            for image in (base, tmp_path / "images/acme/own.raw"):
                with pytest.raises(errors.Conflict, match="virStorageVolUpload"):
                    alice.call("vm.create", name="c1", memory_mib=64, disks=[{"image": str(image)}])
            with pytest.raises(errors.Conflict, match="virStorageVolUpload"):
                alice.call("vm.disk.attach", vm="keep", image=str(base), size_gib=3)
            assert [v["name"] for v in alice.call("vm.list")] == ["keep"]
            assert [x["target"] for x in alice.call("vm.get", name="keep")["disks"]] == ["vda"]
            # (the volumes that were made for the copies are gone: the same names are free)
            alice.call("vm.create", name="c1", memory_mib=64, disks=[{"size_gib": 1}])
            kept = alice.call("vm.disk.attach", vm="keep", size_gib=1)
            assert [x["path"].rsplit("/", 1)[1] for x in kept["disks"]] == [
                "keep-vda.qcow2",
                "keep-vdb.qcow2",
            ]
        with client(port, pki.issue("root-ops", "admin")) as admin:
            # the copy's size is the image's (2 GiB) when none is given: the quota sees it
            admin.call("quota.set", tenant="acme", max_disk_gib=4)  # 3 GiB are taken
            with client(port, alice_cert) as alice:
                with pytest.raises(errors.QuotaExceeded, match="disk_gib"):
                    alice.call("vm.create", name="c2", memory_mib=64, disks=[{"image": str(base)}])
                alice.call("vm.create", name="c2", memory_mib=64, disks=[{"size_gib": 1}])
            # an admin copies from anywhere (the copy is still refused by the test driver)
            with pytest.raises(errors.Conflict, match="virStorageVolUpload"):
                admin.call(
                    "vm.create",
                    name="c3",
                    memory_mib=64,
                    disks=[{"image": str(tmp_path / "elsewhere/x.qcow2")}],
                )
            # and the refusals of images that reach other files hold for an admin too
            with pytest.raises(errors.InvalidParams, match="backing file"):
                admin.call(
                    "vm.create",
                    name="c3",
                    memory_mib=64,
                    disks=[{"image": str(tmp_path / "bases/over.qcow2")}],
                )
            entries = admin.call("audit.tail", limit=100)
        denied = [e for e in entries if e["principal"] == "tls:alice" and e["outcome"] != "ok"]
        assert len(denied) == 1 + len(refusals) + 1 + 3 + 1
    finally:
        assert d.stop() in (0, None)
    assert "Traceback" not in d.log_text()
