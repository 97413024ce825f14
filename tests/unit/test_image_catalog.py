"""``novacron.vm.image_catalog``: the base images a tenant may copy, listed from a real
tree of files, links, a FIFO and images made by ``qemu-img``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from novacron.vm import image_catalog
from novacron.vm.host_files import Offered


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


@pytest.fixture
def offer(tmp_path: Path) -> Offered:
    bases, acme, state = tmp_path / "bases", tmp_path / "images/acme", tmp_path / "state"
    for d in (bases / "sub", acme, tmp_path / "images/globex", state):
        d.mkdir(parents=True)
    qemu_img("create", "-f", "qcow2", bases / "debian.qcow2", "3G")
    qemu_img(
        "create", "-f", "qcow2", "-b", bases / "debian.qcow2", "-F", "qcow2", bases / "ov.qcow2"
    )
    (bases / "tiny.raw").write_bytes(b"\x01" * 5000)
    os.mkfifo(bases / "pipe")
    (bases / "sub/nested.raw").write_bytes(b"x")
    (bases / "also.qcow2").symlink_to(bases / "debian.qcow2")  # inside: listed by its name
    (bases / "shadow").symlink_to("/etc/shadow")  # outside: not offered
    (state / "state.db").write_bytes(b"x")
    (bases / "db").symlink_to(state / "state.db")  # the daemon's own: never
    (acme / "own.raw").write_bytes(b"\x02" * 4096)
    (tmp_path / "images/globex/theirs.raw").write_bytes(b"x")
    return Offered(
        disk_dirs=(str(tmp_path / "images/{tenant}"),),
        boot_dirs=(),
        state_dir=state,
        image_dirs=(str(bases), str(tmp_path / "missing")),
    )


def test_a_tenant_sees_the_images_it_may_copy_and_what_a_copy_would_be(
    offer: Offered, tmp_path: Path
) -> None:
    doc = image_catalog.listing(offer, "acme")
    bases = tmp_path / "bases"
    assert doc["tenant"] == "acme" and not doc["truncated"]
    assert doc["dirs"] == [str(bases), str(tmp_path / "missing"), str(tmp_path / "images/acme")]
    by_path = {i["path"]: i for i in doc["images"]}
    assert list(by_path) == sorted(by_path)
    assert set(by_path) == {
        str(bases / "also.qcow2"),
        str(bases / "debian.qcow2"),
        str(bases / "ov.qcow2"),
        str(bases / "tiny.raw"),
        str(tmp_path / "images/acme/own.raw"),
    }
    debian = by_path[str(bases / "debian.qcow2")]
    assert (debian["format"], debian["virtual_size"], debian["size_gib"]) == ("qcow2", 3 << 30, 3)
    assert debian["refused"] is None and debian["name"] == "debian.qcow2"
    assert debian["file_bytes"] == (bases / "debian.qcow2").stat().st_size
    assert by_path[str(bases / "also.qcow2")]["virtual_size"] == 3 << 30
    tiny = by_path[str(bases / "tiny.raw")]
    assert (tiny["format"], tiny["virtual_size"], tiny["size_gib"]) == ("raw", 5000, 1)
    overlay = by_path[str(bases / "ov.qcow2")]
    assert overlay["format"] is None and "backing file" in overlay["refused"]
    # another tenant sees the shared directory and its own
    other = {i["name"] for i in image_catalog.listing(offer, "globex")["images"]}
    assert "theirs.raw" in other and "own.raw" not in other


def test_a_listing_stops_at_its_most(
    offer: Offered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_catalog, "MOST", 2)
    doc = image_catalog.listing(offer, "acme")
    assert doc["truncated"] and len(doc["images"]) == 2


def test_nothing_is_offered_by_default(tmp_path: Path) -> None:
    bare = Offered(disk_dirs=(), boot_dirs=(), state_dir=tmp_path)
    assert image_catalog.listing(bare, "acme") == {
        "tenant": "acme",
        "dirs": [],
        "images": [],
        "truncated": False,
    }
